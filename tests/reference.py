"""What ClickHouse must hold for simulated input, computed without the code under test.

Nothing here calls ``stream_processors`` (no ``fold``, no row builders): each fact is
recomputed from the simulator's events in a few plain lines, so a bug in the worker
cannot hide by being repeated in the expectation. Only stage transitions, whose funnel
rules are hand-checked in tests/unit/test_journey.py, come from tests/truth.py.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from producers.simulator import SimulatedCustomer
from schemas import Touchpoint
from stream_processors.dictionaries import DICTIONARIES
from stream_processors.windows import WINDOWS

__all__ = ["JourneyFacts", "closed_windows", "detractor_and_low_csat_alerts", "journey_facts",
           "journey_key", "same", "stored_msgpack", "ticket_facts", "touchpoint_owners"]


def journey_key(person: SimulatedCustomer) -> str:
    identified = any(e.customer_id for e in person.events)
    return person.customer_id if identified else f"anon:{person.anonymous_id}"


def touchpoint_owners(people: list[SimulatedCustomer]) -> dict[str, tuple[str, str]]:
    """event id → (journey key, customer id or '')."""
    out = {}
    for person in people:
        key = journey_key(person)
        customer = "" if key.startswith("anon:") else person.customer_id
        for e in person.events:
            out[e.event_id] = (key, customer)
    return out


@dataclass(frozen=True)
class JourneyFacts:
    customer_id: str
    anonymous_ids: tuple[str, ...]
    first_seen: datetime
    last_seen: datetime
    touchpoints: int
    orders: int
    revenue: float
    tickets: int
    nps: int | None
    csat: int | None
    cancelled: bool


def journey_facts(people: list[SimulatedCustomer]) -> dict[str, JourneyFacts]:
    out = {}
    for person in people:
        key = journey_key(person)
        events = sorted(person.events, key=lambda e: (e.occurred_at, e.event_id))

        def last_score(survey: str, events: list[Touchpoint] = events) -> int | None:
            scores = [e.properties["score"] for e in events if e.type == "survey_response"
                      and e.properties["survey"] == survey]
            return scores[-1] if scores else None

        out[key] = JourneyFacts(
            customer_id="" if key.startswith("anon:") else person.customer_id,
            anonymous_ids=tuple(sorted({e.anonymous_id for e in events if e.anonymous_id})),
            first_seen=events[0].occurred_at, last_seen=events[-1].occurred_at,
            touchpoints=len(events),
            orders=sum(e.type == "order_placed" for e in events),
            revenue=round(sum(e.properties["revenue"] for e in events
                              if e.type == "order_placed"), 2),
            tickets=sum(e.type == "support_ticket_opened" for e in events),
            nps=last_score("nps"), csat=last_score("csat"),
            cancelled=any(e.type == "subscription_cancelled" for e in events))
    return out


def ticket_facts(people: list[SimulatedCustomer]
                 ) -> dict[str, tuple[str, datetime, datetime | None, datetime | None, str]]:
    """ticket id → (journey key, opened, first agent answer, resolved, status)."""
    out = {}
    for person in people:
        key = journey_key(person)
        events = sorted(person.events, key=lambda e: (e.occurred_at, e.event_id))
        for e in events:
            if e.type != "support_ticket_opened":
                continue
            ticket = e.properties["ticket_id"]
            mine = [x for x in events if x.properties.get("ticket_id") == ticket]
            answers = [x.occurred_at for x in mine
                       if x.type == "support_message" and x.properties.get("author") == "agent"]
            resolved = [x.occurred_at for x in mine if x.type == "support_ticket_resolved"]
            out[ticket] = (key, e.occurred_at, answers[0] if answers else None,
                           resolved[-1] if resolved else None,
                           "resolved" if resolved else "open")
    return out


def detractor_and_low_csat_alerts(people: list[SimulatedCustomer]) -> set[str]:
    """Alerts that depend on one answer only, so every run raises the same ones: NPS 0-6
    and CSAT 1-2 from identified customers."""
    out = set()
    for person in people:
        if journey_key(person).startswith("anon:"):
            continue
        for e in person.events:
            if e.type != "survey_response":
                continue
            survey, score = e.properties["survey"], e.properties["score"]
            if survey == "nps" and score <= 6:
                out.add(f"detractor:{e.event_id}")
            elif survey == "csat" and score <= 2:
                out.add(f"low_csat:{e.event_id}")
    return out


WindowKey = tuple[str, str, str, datetime]  # metric, dimension, window, start


def closed_windows(events: list[Touchpoint], lateness: timedelta
                   ) -> tuple[dict[WindowKey, float | None], datetime]:
    """Every CX window closed once all input went quiet, and its value, straight from
    the events (NPS: % promoters - % detractors; CSAT: % of 4-5; rates in %)."""
    closed, _open, horizon = cx_windows(events, lateness)
    return closed, horizon


def cx_windows(events: list[Touchpoint], lateness: timedelta
               ) -> tuple[dict[WindowKey, float | None], dict[WindowKey, float | None],
                          datetime]:
    """Every CX window with a sample, closed or still open once all input went quiet,
    and its value (so far), straight from the events; and the horizon between them."""
    tickets = {e.properties["ticket_id"]: e.properties["channel"] for e in events
               if e.type == "support_ticket_opened"}
    orders = {e.properties["order_id"]: e.channel for e in events if e.type == "order_placed"}
    points: dict[tuple[str, str], list] = defaultdict(list)  # (metric, dimension) → (at, x)
    for e in {e.event_id: e for e in events}.values():
        p = e.properties
        if e.type == "survey_response":
            rates = p.get("rates") or {}
            rated = (f"ticket:{tickets[rates['ticket_id']]}" if rates.get("ticket_id")
                     else f"order:{orders[rates['order_id']]}" if rates.get("order_id")
                     else "none")
            for dim in ("all", f"channel={e.channel}", f"rated={rated}"):
                points[(p["survey"], dim)].append((e.occurred_at, p["score"]))
        elif e.type == "delivery_updated" and p["status"] in ("on_time", "late", "damaged"):
            points[("on_time_rate", "all")].append((e.occurred_at, p["status"] == "on_time"))
            points[("damaged_rate", "all")].append((e.occurred_at, p["status"] == "damaged"))
        elif e.type in ("order_placed", "support_ticket_opened"):
            points[("contact_rate", "all")].append((e.occurred_at, e.type))
    # Once every partition went quiet, the watermark is the latest event time of all.
    horizon = max(e.occurred_at for e in events) - lateness
    closed: dict[WindowKey, float | None] = {}
    still_open: dict[WindowKey, float | None] = {}
    for (metric, dim), values in points.items():
        for spec in WINDOWS:
            for start in {start for at, _ in values for start, _ in spec.windows_for(at)}:
                out = still_open if start + spec.size > horizon else closed
                inside = [x for at, x in values if start <= at < start + spec.size]
                out[(metric, dim, spec.name, start)] = _value(metric, inside)
    return closed, still_open, horizon


def _value(metric: str, inside: list) -> float | None:
    if metric == "nps":
        return 100 * (sum(x >= 9 for x in inside) - sum(x <= 6 for x in inside)) / len(inside)
    if metric == "csat":
        return 100 * sum(x >= 4 for x in inside) / len(inside)
    if metric == "ces":
        return sum(inside) / len(inside)
    if metric == "contact_rate":
        placed = inside.count("order_placed")
        return 100 * (len(inside) - placed) / placed if placed else None
    return 100 * sum(inside) / len(inside)


def same(a: float | None, b: float | None) -> bool:
    return a is b is None or (a is not None and b is not None and abs(a - b) < 1e-9)


def stored_msgpack(value: bytes) -> bytes:
    """A stored journey value as msgpack, inflated by zlib itself: a compressed value
    starts with zlib's header (0x78, which a msgpack map never does) and names its
    preset dictionary there (RFC 1950: the FDICT bit, then the dictionary's Adler-32)."""
    if value[:1] != b"\x78":
        return value
    if not value[1] & 0x20:
        return zlib.decompress(value)
    return zlib.decompressobj(zdict=DICTIONARIES[int.from_bytes(value[2:6], "big")]
                              ).decompress(value)
