"""A journey simulator: customers whose true journeys it knows.

It draws realistic journeys (ad → visits → identify → order → delivery → support or
survey → maybe a repeat order or a cancellation) from a seeded random generator, so a
run is reproducible and tests can compare what the pipeline computed with what was
generated. Before a customer identifies, their touchpoints carry only the device's
anonymous id, as a real website's would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import Touchpoint

__all__ = ["SimulatedCustomer", "simulate"]

_CAMPAIGNS = ("spring_sale", "brand_search", "retargeting", "newsletter", "influencer")
_AD_SOURCES = ("google", "meta", "tiktok", "newsletter")
_PRODUCTS = [(f"sku-{i:03d}", round(9.5 + i * 3.25, 2)) for i in range(40)]
_SUPPORT_CHANNELS = ("chat", "email", "phone", "social")


@dataclass
class SimulatedCustomer:
    """One generated customer and the touchpoints of their journey, in event-time order."""

    customer_id: str
    anonymous_id: str
    events: list[Touchpoint] = field(default_factory=list)


class _Journey:
    def __init__(self, rng: random.Random, n: int, start: datetime, prefix: str) -> None:
        self.rng = rng
        self.c = SimulatedCustomer(f"{prefix}c-{n:06d}", f"{prefix}a-{n:06d}")
        self.t = start
        self.identified = False
        self.session = f"{prefix}s-{n:06d}-0"
        self.seq = 0

    def wait(self, low: float, high: float) -> None:
        self.t += timedelta(seconds=self.rng.uniform(low, high))

    def emit(self, type_: str, via: str = "web", context: dict[str, Any] | None = None,
             **properties: Any) -> None:
        self.seq += 1
        c = self.c
        self.c.events.append(Touchpoint(
            event_id=f"{c.customer_id}-{self.seq:04d}",
            type=type_,
            occurred_at=self.t.replace(microsecond=self.t.microsecond // 1000 * 1000),
            customer_id=c.customer_id if self.identified else None,
            anonymous_id=c.anonymous_id,
            session_id=self.session,
            channel=via,  # type: ignore[arg-type]
            source="simulator",
            context=context or {},
            properties=properties,
        ))


def _journey(rng: random.Random, n: int, start: datetime, prefix: str) -> SimulatedCustomer:
    j = _Journey(rng, n, start, prefix)
    campaign = rng.choice(_CAMPAIGNS)
    utm = {"utm_campaign": campaign, "utm_source": rng.choice(_AD_SOURCES)}
    # Awareness.
    if rng.random() < 0.7:
        j.emit("ad_impression", "ad", {"campaign": utm}, ad_id=f"ad-{campaign}")
        j.wait(5, 600)
        if rng.random() < 0.6:
            j.emit("ad_click", "ad", {"campaign": utm}, ad_id=f"ad-{campaign}")
            j.wait(1, 5)
    elif rng.random() < 0.5:
        j.emit("email_opened", "email", {"campaign": utm}, email_id=f"em-{campaign}")
        j.wait(10, 3600)
    # Consideration, anonymous.
    cart: list[tuple[str, float]] = []
    for _ in range(rng.randint(1, 5)):
        page = f"https://shop.example/p/{rng.randint(1, 50)}"
        j.emit("page_view", context={"page": {"url": page}})
        j.wait(5, 120)
        if rng.random() < 0.6:
            sku, price = rng.choice(_PRODUCTS)
            j.emit("product_viewed", sku=sku, price=price)
            j.wait(5, 90)
            if rng.random() < 0.4:
                cart.append((sku, price))
                j.emit("cart_updated", action="add", sku=sku, cart_size=len(cart))
                j.wait(3, 60)
    if not cart or rng.random() < 0.25:
        if rng.random() < 0.3:  # some sign up without buying
            j.emit("account_created")
            j.identified = True
            j.emit("identify", traits={"plan": "free"})
        return j.c
    # Purchase: checkout identifies the customer.
    j.emit("checkout_started", items=len(cart))
    j.wait(20, 300)
    j.identified = True
    j.emit("identify", traits={"email_domain": "example.com"})
    orders = 1 + (rng.random() < 0.3)
    for o in range(orders):
        if o:  # a repeat purchase, days later, often after a newsletter, in a new session
            j.wait(86400 * 2, 86400 * 20)
            j.session = f"{j.c.customer_id}-s{o}"
            if rng.random() < 0.6:
                news = {"utm_campaign": "newsletter", "utm_source": "newsletter"}
                j.emit("email_clicked", "email", {"campaign": news}, email_id="em-newsletter")
                j.wait(5, 60)
            j.emit("page_view", context={"page": {"url": "https://shop.example/"}})
            j.wait(30, 600)
        if rng.random() < 0.05:
            j.emit("payment_failed", reason="card_declined")
            j.wait(20, 120)
        order_id = f"{j.c.customer_id}-o{o}"
        revenue = round(sum(p for _, p in cart) if o == 0 else rng.choice(_PRODUCTS)[1], 2)
        j.emit("order_placed", order_id=order_id, revenue=revenue, currency="EUR")
        # Fulfilment.
        j.wait(3600 * 4, 3600 * 30)
        j.emit("order_shipped", "email", order_id=order_id, carrier="dhl")
        j.wait(3600 * 20, 3600 * 80)
        outcome = rng.choices(("on_time", "late", "damaged"), (0.8, 0.15, 0.05))[0]
        j.emit("delivery_updated", order_id=order_id, status=outcome)
        bad = outcome != "on_time"
        # Service: a bad delivery often leads to a support contact.
        if rng.random() < (0.6 if bad else 0.04):
            ticket = f"{order_id}-t"
            chan = rng.choice(_SUPPORT_CHANNELS)
            j.wait(600, 86400)
            j.emit("support_ticket_opened", chan, ticket_id=ticket, channel=chan,
                   order_id=order_id, topic=outcome if bad else "question")
            j.wait(60, 3600 * 8)
            j.emit("support_message", chan, ticket_id=ticket, author="agent")
            j.wait(300, 3600 * 24)
            j.emit("support_ticket_resolved", chan, ticket_id=ticket)
            if rng.random() < 0.5:
                j.wait(600, 86400)
                j.emit("survey_response", "email", survey="csat", score=rng.randint(2, 5),
                       rates={"ticket_id": ticket})
        # Feedback.
        if rng.random() < 0.5:
            j.wait(86400, 86400 * 5)
            score = rng.randint(0, 6) if bad and rng.random() < 0.7 else rng.randint(6, 10)
            j.emit("survey_response", "email", survey="nps", score=score,
                   rates={"order_id": order_id})
        if bad and rng.random() < 0.15:
            j.wait(86400, 86400 * 10)
            j.emit("subscription_cancelled", reason="bad_delivery")
            break
    return j.c


def simulate(customers: int, *, seed: int = 7, start: datetime | None = None,
             spread: timedelta = timedelta(days=30), prefix: str = "") -> list[SimulatedCustomer]:
    """Generate ``customers`` journeys starting within ``spread`` after ``start``.

    By default they start 45 days or more ago, so that they have (almost always) ended by
    now: a touchpoint from the future is refused at ingress (schemas/bounds.py), and
    the rare journey that would run past now is cut there.
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    cut = start is None
    start = start or (now - spread - timedelta(days=45))
    people = [
        _journey(rng, n, start + timedelta(seconds=rng.uniform(0, spread.total_seconds())), prefix)
        for n in range(customers)
    ]
    if cut:
        for person in people:
            person.events[:] = [e for e in person.events if e.occurred_at <= now]
    return people


def in_time_order(customers: list[SimulatedCustomer]) -> Iterator[Touchpoint]:
    """All events merged by event time, as a shop's live traffic would arrive."""
    events = [e for c in customers for e in c.events]
    events.sort(key=lambda e: (e.occurred_at, e.event_id))
    return iter(events)
