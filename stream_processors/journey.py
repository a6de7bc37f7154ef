"""How touchpoints make a customer's journey: pure functions over plain data.

A journey keeps its touchpoints (deduplicated by event id) and every derived value is
a fold over them in event-time order (:func:`fold`). That one choice gives the
guarantees the service promises without special cases:

- **event time, not arrival order**: a late or out-of-order touchpoint is inserted
  where it belongs and the fold runs again;
- **duplicates change nothing**: a redelivered event id is already in the log, and a
  business fact sent again under a fresh event id (a shop's server retrying a webhook)
  counts once by its natural key (:func:`natural_key`): the earliest copy counts;
- **identity stitching**: merging a device's anonymous journey into the customer's is
  the union of two logs.

No broker, table or database here; tests/unit/test_journey.py covers the rules.
"""

from __future__ import annotations

import bisect
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from schemas import Touchpoint
from stream_processors.cx_metrics import nps_category

__all__ = [
    "ALERT_KINDS", "FUNNEL", "STAGES", "Alert", "Journey", "JourneyEvent", "JourneyLog",
    "Ticket", "Transition",
    "add_events", "alerts_for", "decode_log", "encode_log", "event_of", "fold", "merge_logs",
    "natural_key",
]

#: The funnel, in order; ``loyal`` and ``churned`` come after it.
FUNNEL: Final = ("awareness", "consideration", "purchase", "fulfilment", "post_purchase")
STAGES: Final = (*FUNNEL, "loyal", "churned")
_RANK: Final = {stage: rank for rank, stage in enumerate(FUNNEL)}
_AWARENESS = frozenset({"ad_impression", "ad_click", "email_opened", "email_clicked",
                        "social_engaged"})
_CONSIDERATION = frozenset({"page_view", "product_viewed", "cart_updated", "checkout_started"})
_DELIVERED = frozenset({"on_time", "late", "damaged"})
_BAD_DELIVERY = frozenset({"late", "damaged", "failed"})


class JourneyEvent(msgspec.Struct, array_like=True, frozen=True):
    """What a journey keeps of a touchpoint (compact: array-encoded in the table)."""

    at: datetime
    event_id: str
    type: str
    channel: str
    anonymous_id: str | None = None
    properties: dict[str, Any] = {}
    #: The touchpoint as received, kept only while the journey is anonymous: when the
    #: device is identified, its rows are written again under the customer.
    raw: bytes = b""


class JourneyLog(msgspec.Struct, kw_only=True):
    """The stored state of one journey: its identity and its touchpoints, in time order."""

    key: str
    customer_id: str | None = None
    anonymous_ids: list[str] = []
    events: list[JourneyEvent] = []
    #: Set when this anonymous journey was merged into a customer's.
    merged_into: str | None = None
    #: Bumped on every change: the snapshot version, so the newest row wins.
    version: int = 0
    #: How many transition rows were last written (to delete those a refold dropped).
    emitted_transitions: int = 0
    #: Digests of the transition (by seq) and ticket (by id) rows last written: a row
    #: is written again only when it changed (stream_processors.clickhouse.rows).
    transition_digests: dict[int, int] = {}
    ticket_digests: dict[str, int] = {}
    #: Ids of the alerts already raised for this journey: each is raised once.
    alerts_raised: list[str] = []
    #: Survey answers whose rated ticket, order or touchpoint has not arrived yet
    #: (see stream_processors.contributions).
    pending_rated: list[str] = []
    #: The ``version`` the inactivity sweep last folded (-1: never): it folds a journey
    #: once per version, so a restart does not sweep it again.
    swept_version: int = -1
    #: Wall-clock time of the last change (not event time: an import of old data is
    #: fresh state); a retention counts from it. None: written before retention existed.
    updated_at: datetime | None = None


class Transition(msgspec.Struct, frozen=True):
    seq: int
    from_stage: str
    to_stage: str
    at: datetime
    event_id: str
    reason: str


class Ticket(msgspec.Struct, kw_only=True):
    ticket_id: str
    opened_at: datetime
    opened_event_id: str = ""
    channel: str = ""
    order_id: str = ""
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    reopened: int = 0
    status: str = "open"
    messages: int = 0

    @property
    def first_response_seconds(self) -> float | None:
        if self.first_response_at is None:
            return None
        return (self.first_response_at - self.opened_at).total_seconds()

    @property
    def resolution_seconds(self) -> float | None:
        if self.resolved_at is None or self.status != "resolved":
            return None
        return (self.resolved_at - self.opened_at).total_seconds()


class Journey(msgspec.Struct, kw_only=True):
    """Everything derived from a journey's touchpoints (see :func:`fold`)."""

    key: str
    customer_id: str | None
    anonymous_ids: list[str]
    first_seen: datetime
    last_seen: datetime
    stage: str
    stage_entered_at: dict[str, datetime]
    transitions: list[Transition]
    stage_at_event: dict[str, str]
    touchpoints: int
    counts_by_type: dict[str, int]
    counts_by_channel: dict[str, int]
    orders: int = 0
    revenue: float = 0.0
    first_order_at: datetime | None = None
    deliveries: dict[str, int] = {}
    tickets: dict[str, Ticket] = {}
    nps: int | None = None
    csat: int | None = None
    ces: int | None = None
    churned: bool = False
    churn_reason: str = ""
    recovery: str = ""
    churn_risk: int = 0
    churn_risk_reasons: list[str] = []
    #: Natural key (:func:`natural_key`) → the ids of its touchpoints, earliest first:
    #: the first counts, the rest are repeats.
    natural: dict[str, list[str]] = {}

    def repeats(self, e: JourneyEvent) -> bool:
        """Whether ``e`` repeats a business fact an earlier touchpoint already stated."""
        key = natural_key(e)
        return key is not None and self.natural[key][0] != e.event_id

    @property
    def relationship_days(self) -> float:
        return (self.last_seen - self.first_seen).total_seconds() / 86400

    @property
    def open_tickets(self) -> int:
        return sum(1 for t in self.tickets.values() if t.status == "open")

    @property
    def nps_category(self) -> str:
        return "" if self.nps is None else nps_category(self.nps)


# ── the log ──────────────────────────────────────────────────────────────────
def natural_key(e: JourneyEvent) -> str | None:
    """The business fact a touchpoint states, where it has a key of its own: an order is
    placed once, a ticket opened once, and a parcel reaches each delivery status once.

    Event ids make redelivery harmless; these make a resend under a fresh event id (a
    webhook retried by a shop's server, an import run twice) harmless too.
    """
    p = e.properties
    if e.type == "order_placed":
        return f"order:{p.get('order_id')}"
    if e.type == "support_ticket_opened":
        return f"ticket:{p.get('ticket_id')}"
    if e.type == "delivery_updated":
        return f"delivery:{p.get('order_id')}:{p.get('status')}"
    return None


def event_of(tp: Touchpoint, raw: bytes = b"") -> JourneyEvent:
    return JourneyEvent(at=tp.occurred_at, event_id=tp.event_id, type=tp.type,
                        channel=tp.channel, anonymous_id=tp.anonymous_id,
                        properties=tp.properties, raw=raw)


def add_events(log: JourneyLog, events: list[JourneyEvent],
               customer_id: str | None = None) -> list[JourneyEvent]:
    """Insert events in time order, skipping known event ids; returns those inserted.

    The version moves when anything changed: an event inserted or the customer set.
    """
    known = {e.event_id for e in log.events}
    added = []
    for event in events:
        if event.event_id in known:
            continue
        known.add(event.event_id)
        bisect.insort(log.events, event, key=lambda e: (e.at, e.event_id))
        if event.anonymous_id and event.anonymous_id not in log.anonymous_ids:
            log.anonymous_ids.append(event.anonymous_id)
        added.append(event)
    changed = bool(added)
    if customer_id and log.customer_id != customer_id:
        log.customer_id = customer_id
        changed = True
    if changed:
        log.version += 1
    return added


def merge_logs(into: JourneyLog, other: JourneyLog) -> bool:
    """Fold a device's anonymous journey into the customer's journey; True on a change."""
    changed = bool(add_events(into, other.events))
    for anonymous_id in other.anonymous_ids:
        if anonymous_id not in into.anonymous_ids:
            into.anonymous_ids.append(anonymous_id)
            changed = True
    into.pending_rated += [e for e in other.pending_rated if e not in into.pending_rated]
    return changed


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JourneyLog)


def encode_log(log: JourneyLog) -> bytes:
    """Compact binary form kept in the Faust table and its changelog."""
    return _encoder.encode(log)


def decode_log(data: bytes) -> JourneyLog:
    return _decoder.decode(data)


# ── the fold ─────────────────────────────────────────────────────────────────
def fold(log: JourneyLog, *, inactive_after: timedelta | None = None,
         now: datetime | None = None) -> Journey:
    """Derive the journey from its touchpoints, oldest first.

    ``inactive_after`` with ``now``: a journey whose last touchpoint is older than that
    counts as churned (reason ``inactive``) from ``last_seen + inactive_after``.
    """
    if not log.events:
        raise ValueError(f"journey {log.key} has no touchpoints")
    j = _Fold(log)
    for event in log.events:
        j.apply(event)
    if (inactive_after is not None and now is not None and not j.churned
            and now - j.last_seen > inactive_after):
        at = j.last_seen + inactive_after
        j.churned, j.churn_reason = True, "inactive"
        j.move("churned", at, log.events[-1].event_id, "inactive")
        if j.recovery == "pending":
            j.recovery = "lost"
    return j.result()


class _Fold:
    def __init__(self, log: JourneyLog) -> None:
        self.log = log
        first = log.events[0]
        self.first_seen = self.last_seen = first.at
        self.stage = ""
        self.entered: dict[str, datetime] = {}
        self.transitions: list[Transition] = []
        self.stage_at_event: dict[str, str] = {}
        self.by_type: dict[str, int] = {}
        self.by_channel: dict[str, int] = {}
        self.orders = 0
        self.revenue = 0.0
        self.first_order_at: datetime | None = None
        self.deliveries: dict[str, int] = {}
        self.tickets: dict[str, Ticket] = {}
        self.nps: int | None = None
        self.csat: int | None = None
        self.ces: int | None = None
        self.churned = False
        self.churn_reason = ""
        self.recovery = ""
        self.payment_failed_pending = False
        self.natural: dict[str, list[str]] = {}

    def move(self, stage: str, at: datetime, event_id: str, reason: str) -> None:
        if stage == self.stage:
            return
        self.transitions.append(Transition(len(self.transitions) + 1, self.stage, stage, at,
                                           event_id, reason))
        self.entered.setdefault(stage, at)
        self.stage = stage

    def advance(self, stage: str, at: datetime, event_id: str, reason: str) -> None:
        """Move forward in the funnel only (a page view does not undo a purchase)."""
        if self.stage in ("loyal", "churned"):
            return
        if _RANK[stage] > _RANK.get(self.stage, -1):
            self.move(stage, at, event_id, reason)

    def apply(self, e: JourneyEvent) -> None:
        p, t = e.properties, e.type
        self.last_seen = max(self.last_seen, e.at)
        self.by_type[t] = self.by_type.get(t, 0) + 1
        self.by_channel[e.channel] = self.by_channel.get(e.channel, 0) + 1
        key = natural_key(e)
        if key is not None:
            ids = self.natural.setdefault(key, [])
            ids.append(e.event_id)
            if len(ids) > 1:  # a repeat: a touchpoint of its own, but no new fact
                self.stage_at_event[e.event_id] = self.stage
                return
        if t in _AWARENESS:
            if not self.stage:
                self.move("awareness", e.at, e.event_id, t)
        elif t in _CONSIDERATION:
            self.advance("consideration", e.at, e.event_id, t)
        elif t == "order_placed":
            self.orders += 1
            self.revenue = round(self.revenue + _number(p.get("revenue")), 2)
            self.first_order_at = self.first_order_at or e.at
            self.payment_failed_pending = False
            if self.churned:  # a win-back
                self.churned, self.churn_reason = False, ""
                self.move("purchase", e.at, e.event_id, "win_back")
            elif self.orders >= 2:
                self.move("loyal", e.at, e.event_id, "repeat_purchase")
            else:
                self.advance("purchase", e.at, e.event_id, "first_order")
            if self.recovery == "pending":
                self.recovery = "recovered"
        elif t == "payment_failed":
            self.payment_failed_pending = True
        elif t == "order_shipped":
            self.advance("fulfilment", e.at, e.event_id, t)
        elif t == "delivery_updated":
            status = str(p.get("status", ""))
            self.deliveries[status] = self.deliveries.get(status, 0) + 1
            if status in _DELIVERED or status == "returned":
                self.advance("post_purchase", e.at, e.event_id, f"delivered_{status}")
            else:
                self.advance("fulfilment", e.at, e.event_id, f"delivery_{status}")
            if status in _BAD_DELIVERY and self.recovery != "pending":
                self.recovery = "unaddressed"
        elif t in ("return_requested", "return_completed", "review_submitted",
                   "package_opened"):
            if self.orders:
                self.advance("post_purchase", e.at, e.event_id, t)
        elif t == "support_ticket_opened":
            ticket_id = str(p.get("ticket_id"))
            self.tickets.setdefault(ticket_id, Ticket(
                ticket_id=ticket_id, opened_at=e.at, opened_event_id=e.event_id,
                channel=str(p.get("channel", "")),
                order_id=str(p.get("order_id") or "")))
            if self.recovery == "unaddressed":
                self.recovery = "pending"
        elif t == "support_message":
            ticket = self.tickets.get(str(p.get("ticket_id")))
            if ticket is not None:
                ticket.messages += 1
                if p.get("author") == "agent" and ticket.first_response_at is None:
                    ticket.first_response_at = e.at
        elif t == "support_ticket_resolved":
            ticket = self.tickets.get(str(p.get("ticket_id")))
            if ticket is not None:
                ticket.resolved_at, ticket.status = e.at, "resolved"
        elif t == "support_ticket_reopened":
            ticket = self.tickets.get(str(p.get("ticket_id")))
            if ticket is not None:
                ticket.reopened += 1
                ticket.status = "open"
        elif t == "survey_response":
            score = int(p.get("score", 0))
            survey = p.get("survey")
            if survey == "nps":
                self.nps = score
                if score >= 9 and self.orders and not self.churned:
                    self.move("loyal", e.at, e.event_id, "promoter")
                if score >= 9 and self.recovery == "pending":
                    self.recovery = "recovered"
            elif survey == "csat":
                self.csat = score
            elif survey == "ces":
                self.ces = score
        elif t == "subscription_cancelled":
            self.churned, self.churn_reason = True, "cancelled"
            self.move("churned", e.at, e.event_id, "cancelled")
            if self.recovery == "pending":
                self.recovery = "lost"
        if not self.stage:  # lifecycle-only journeys start somewhere too
            self.move("awareness", e.at, e.event_id, t)
        self.stage_at_event[e.event_id] = self.stage

    def result(self) -> Journey:
        score, reasons = churn_risk(self)
        log = self.log
        return Journey(
            key=log.key, customer_id=log.customer_id, anonymous_ids=list(log.anonymous_ids),
            first_seen=self.first_seen, last_seen=self.last_seen, stage=self.stage,
            stage_entered_at=self.entered, transitions=self.transitions,
            stage_at_event=self.stage_at_event, touchpoints=len(log.events),
            counts_by_type=self.by_type, counts_by_channel=self.by_channel,
            orders=self.orders, revenue=self.revenue, first_order_at=self.first_order_at,
            deliveries=self.deliveries, tickets=self.tickets, nps=self.nps, csat=self.csat,
            ces=self.ces, churned=self.churned, churn_reason=self.churn_reason,
            recovery=self.recovery, churn_risk=score, churn_risk_reasons=reasons,
            natural=self.natural)


#: (points, reason): a simple score whose every point has a reason a person can act on.
RISK_POINTS: Final = {
    "cancelled": 100,
    "detractor": 35,
    "open_ticket": 20,
    "reopened_ticket": 15,
    "bad_delivery_unaddressed": 25,
    "recovery_lost": 30,
    "low_csat": 15,
    "high_effort": 10,
    "payment_failed": 10,
    "inactive": 40,
}


def churn_risk(j: _Fold) -> tuple[int, list[str]]:
    """0 to 100, and the reasons that make it up (a reason per rule that fired)."""
    reasons = []
    if j.churn_reason == "cancelled":
        reasons.append("cancelled")
    if j.churn_reason == "inactive":
        reasons.append("inactive")
    if j.nps is not None and nps_category(j.nps) == "detractor":
        reasons.append("detractor")
    if any(t.status == "open" for t in j.tickets.values()):
        reasons.append("open_ticket")
    if any(t.reopened for t in j.tickets.values()):
        reasons.append("reopened_ticket")
    if j.recovery == "unaddressed":
        reasons.append("bad_delivery_unaddressed")
    if j.recovery == "lost" and "cancelled" not in reasons:
        reasons.append("recovery_lost")
    if j.csat is not None and j.csat <= 2:
        reasons.append("low_csat")
    if j.ces is not None and j.ces >= 5:
        reasons.append("high_effort")
    if j.payment_failed_pending:
        reasons.append("payment_failed")
    return min(100, sum(RISK_POINTS[r] for r in reasons)), reasons


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


# ── closed-loop alerts ───────────────────────────────────────────────────────
#: Every kind of alert :func:`alerts_for` raises.
ALERT_KINDS = ("detractor_followup", "low_csat_followup", "proactive_outreach",
               "first_response_sla", "churn_risk")


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """Something a person should act on, with the touchpoints behind it.

    ``alert_id`` is derived from what triggered it, so the same situation always has
    the same id: raised once per journey, and consumers can deduplicate on it.
    """

    alert_id: str
    kind: str
    journey_key: str
    customer_id: str
    reason: str
    touchpoints: tuple[str, ...]
    at: datetime


def alerts_for(log: JourneyLog, j: Journey, *, now: datetime,
               first_response_sla: timedelta, churn_risk_threshold: int) -> list[Alert]:
    """Every alert the journey calls for now (raised or not; the caller filters)."""
    if not log.customer_id:  # nobody to follow up with yet
        return []
    found: list[Alert] = []

    def alert(alert_id: str, kind: str, reason: str, touchpoints: tuple[str, ...],
              at: datetime) -> None:
        found.append(Alert(alert_id=alert_id, kind=kind, journey_key=j.key,
                           customer_id=log.customer_id or "", reason=reason,
                           touchpoints=touchpoints, at=at))

    tickets_opened = [t.opened_at for t in j.tickets.values()]
    for e in log.events:
        p = e.properties
        if e.type == "survey_response":
            score, rated = int(p.get("score", 0)), _rated(p)
            if p.get("survey") == "nps" and nps_category(score) == "detractor":
                alert(f"detractor:{e.event_id}", "detractor_followup",
                      f"NPS {score}: follow up with the customer{rated}", (e.event_id,), e.at)
            elif p.get("survey") == "csat" and score <= 2:
                alert(f"low_csat:{e.event_id}", "low_csat_followup",
                      f"CSAT {score}: follow up with the customer{rated}", (e.event_id,), e.at)
        elif (e.type == "delivery_updated" and p.get("status") in _BAD_DELIVERY
              and not j.repeats(e) and not any(opened >= e.at for opened in tickets_opened)):
            alert(f"bad_delivery:{e.event_id}", "proactive_outreach",
                  f"delivery of order {p.get('order_id')} {p.get('status')} and no support "
                  "contact yet: reach out first", (e.event_id,), e.at)
    for t in j.tickets.values():
        if (t.first_response_at is None and t.status == "open"
                and now - t.opened_at > first_response_sla):
            hours = first_response_sla.total_seconds() / 3600
            alert(f"first_response_sla:{t.ticket_id}", "first_response_sla",
                  f"ticket {t.ticket_id} ({t.channel}) has waited over {hours:g} h for a first "
                  "answer", (t.opened_event_id,), t.opened_at + first_response_sla)
    if j.churn_risk >= churn_risk_threshold:
        last = log.events[-1]
        alert(f"churn_risk:{j.key}:{churn_risk_threshold}", "churn_risk",
              f"churn risk {j.churn_risk}: {', '.join(j.churn_risk_reasons)}",
              (last.event_id,), last.at)
    return found


def _rated(p: dict[str, Any]) -> str:
    rates = p.get("rates") or {}
    for what in ("ticket_id", "order_id", "event_id"):
        if rates.get(what):
            return f" (about {what.removesuffix('_id')} {rates[what]})"
    return ""
