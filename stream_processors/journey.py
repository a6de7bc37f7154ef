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

**Bounded state.** A journey keeps a *summary* (the fold of its older touchpoints,
:class:`FoldState`) and only the *tail*: the touchpoints within ``tail`` time of its
latest one, at most ``tail_touchpoints`` of them (:func:`compact`). An out-of-order
touchpoint within the tail takes its exact place (the tail is folded again from the
summary); one behind it is folded into the summary where it arrives (counts exact,
stage history approximate). The fold of summary plus tail is also kept (``state``), so a
touchpoint in order costs one step of the fold however long the journey. Duplicate ids
are recognised in the tail and among the last ``SEEN_IDS`` ids folded away (8-byte
digests).

No broker, table or database here; tests/unit/test_journey.py covers the rules.
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from schemas import Touchpoint, decode_trusted
from stream_processors.cx_metrics import nps_category
from stream_processors.dictionaries import DICTIONARIES, JOURNEYS_1

__all__ = [
    "ALERT_KINDS", "FOLDED_PROPERTIES", "FUNNEL", "STAGES", "Alert", "FoldState", "Journey",
    "JourneyEvent", "JourneyLog", "RowExtra", "Ticket", "Transition",
    "add_events", "alerts_for", "behind_summary", "compact", "decode_log", "encode_log",
    "event_of", "fold", "for_customer", "merge_logs", "natural_key", "shed", "touchpoint_of",
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


class RowExtra(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True):
    """What a touchpoint row needs beyond :class:`JourneyEvent`: kept only in an anonymous
    journey's tail, whose rows are written again under the customer once identified."""

    version: int = 1
    received_at: datetime | None = None
    session_id: str | None = None
    source: str = ""
    context: dict[str, Any] = {}


class JourneyEvent(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True):
    """What a journey keeps of a touchpoint (compact: array-encoded in the table)."""

    at: datetime
    event_id: str
    type: str
    channel: str
    anonymous_id: str | None = None
    properties: dict[str, Any] = {}
    #: The touchpoint as received (JSON), from state written before ``extra`` existed.
    raw: bytes = b""
    #: The rest of the touchpoint, kept only while the journey is anonymous.
    extra: RowExtra | None = None


class Transition(msgspec.Struct, frozen=True):
    seq: int
    from_stage: str
    to_stage: str
    at: datetime
    event_id: str
    reason: str


class Ticket(msgspec.Struct, kw_only=True, omit_defaults=True):
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


#: Bounds of what a summary keeps by key (the oldest go first): natural keys and order
#: channels; and how many folded-away event ids are still recognised as duplicates.
NATURAL_KEYS: Final = 128
SEEN_IDS: Final = 1024
ANONYMOUS_IDS: Final = 64
ALERT_IDS: Final = 256
#: A journey with a shorter tail does not keep its fold (``state``): folding so few
#: touchpoints again costs less than storing the fold for every customer.
STATE_FROM: Final = 32


class FoldState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fold of a journey's touchpoints so far: everything :class:`Journey` derives,
    kept so that the next touchpoint in order is one step, not a refold."""

    first_seen: datetime | None = None
    last_seen: datetime | None = None
    stage: str = ""
    entered: dict[str, datetime] = {}
    #: Transitions made so far; ``transitions`` holds only those after the summary's.
    seq: int = 0
    transitions: list[Transition] = []
    touchpoints: int = 0
    by_type: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    orders: int = 0
    revenue: float = 0.0
    first_order_at: datetime | None = None
    deliveries: dict[str, int] = {}
    tickets: dict[str, Ticket] = {}
    #: Tickets resolved before the tail and let go (their rows are final).
    tickets_let_go: int = 0
    nps: int | None = None
    csat: int | None = None
    ces: int | None = None
    churned: bool = False
    churn_reason: str = ""
    recovery: str = ""
    payment_failed_pending: bool = False
    natural: dict[str, list[str]] = {}
    #: Order id → the channel it was placed through (what an answer about it rates).
    order_channels: dict[str, str] = {}

    def move(self, stage: str, at: datetime, event_id: str, reason: str) -> None:
        if stage == self.stage:
            return
        self.seq += 1
        self.transitions.append(Transition(self.seq, self.stage, stage, at, event_id, reason))
        self.entered.setdefault(stage, at)
        self.stage = stage

    def advance(self, stage: str, at: datetime, event_id: str, reason: str) -> None:
        """Move forward in the funnel only (a page view does not undo a purchase)."""
        if self.stage in ("loyal", "churned"):
            return
        if _RANK[stage] > _RANK.get(self.stage, -1):
            self.move(stage, at, event_id, reason)

    def apply(self, e: JourneyEvent, stage_at_event: dict[str, str]) -> None:
        p, t = e.properties, e.type
        self.touchpoints += 1
        if self.first_seen is None or e.at < self.first_seen:
            self.first_seen = e.at
        if self.last_seen is None or e.at > self.last_seen:
            self.last_seen = e.at
        self.by_type[t] = self.by_type.get(t, 0) + 1
        self.by_channel[e.channel] = self.by_channel.get(e.channel, 0) + 1
        key = natural_key(e)
        if key is not None:
            ids = self.natural.setdefault(key, [])
            ids.append(e.event_id)
            if len(ids) > 1:  # a repeat: a touchpoint of its own, but no new fact
                stage_at_event[e.event_id] = self.stage
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
            self.order_channels[str(p.get("order_id"))] = e.channel
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
        stage_at_event[e.event_id] = self.stage


class JourneyLog(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The stored state of one journey: its identity, the summary of its older
    touchpoints and the tail of its latest ones, in time order."""

    key: str
    customer_id: str | None = None
    anonymous_ids: list[str] = []
    #: The tail: the latest touchpoints, in time order (:func:`compact` bounds it).
    events: list[JourneyEvent] = []
    #: The fold of the touchpoints before the tail, encoded (empty: nothing folded away
    #: yet). Kept as bytes: most batches do not need it, so they do not decode it.
    base: bytes = b""
    #: The fold of ``base`` and ``events[:applied]`` (None, or ``applied`` -1: fold the
    #: tail again, as after a touchpoint inserted before the latest).
    state: FoldState | None = None
    applied: int = -1
    #: 8-byte digests of the ids folded away most recently (at most ``SEEN_IDS``).
    seen: bytes = b""
    #: Set when this anonymous journey was merged into a customer's.
    merged_into: str | None = None
    #: Bumped on every change: the snapshot version, so the newest row wins.
    version: int = 0
    #: How many transitions were last written (to delete those a refold dropped).
    emitted_transitions: int = 0
    #: Digests of the transition (by seq) and ticket (by id) rows last written: a row
    #: is written again only when it changed (stream_processors.clickhouse.rows).
    transition_digests: dict[int, int] = {}
    ticket_digests: dict[str, int] = {}
    #: Ids of the alerts already raised for this journey (each is raised once): 8-byte
    #: digests of the latest ``ALERT_IDS`` (``alerts_raised``: state of earlier versions).
    raised: bytes = b""
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

    @property
    def summary(self) -> FoldState | None:
        """The fold of the touchpoints before the tail (a fresh copy)."""
        return _state_decoder.decode(self.base) if self.base else None

    @property
    def first_seen(self) -> datetime:
        base = self.summary
        if base is not None and base.first_seen is not None:
            return base.first_seen
        return self.events[0].at

    @property
    def touchpoints(self) -> int:
        """How many touchpoints the journey holds, folded away or in the tail."""
        base = self.summary
        return (base.touchpoints if base else 0) + len(self.events)

    def raised_before(self, alert_id: str) -> bool:
        return alert_id in self.alerts_raised or _seen(self.raised, _digest(alert_id))

    def remember_raised(self, alert_ids: list[str]) -> None:
        self.raised = _remember(self.raised, b"".join(map(_digest, alert_ids)), ALERT_IDS)


class Journey(msgspec.Struct, kw_only=True):
    """Everything derived from a journey's touchpoints (see :func:`fold`)."""

    key: str
    customer_id: str | None
    anonymous_ids: list[str]
    first_seen: datetime
    last_seen: datetime
    stage: str
    stage_entered_at: dict[str, datetime]
    #: The transitions after the summary's (all of them while nothing was folded away).
    transitions: list[Transition]
    #: Stage at each touchpoint this fold applied (every one on a full fold).
    stage_at_event: dict[str, str]
    touchpoints: int
    counts_by_type: dict[str, int]
    counts_by_channel: dict[str, int]
    orders: int = 0
    revenue: float = 0.0
    first_order_at: datetime | None = None
    deliveries: dict[str, int] = {}
    tickets: dict[str, Ticket] = {}
    tickets_let_go: int = 0
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
    order_channels: dict[str, str] = {}
    #: Transitions made in all (the last one's seq).
    transition_count: int = 0

    def repeats(self, e: JourneyEvent) -> bool:
        """Whether ``e`` repeats a business fact an earlier touchpoint already stated."""
        key = natural_key(e)
        return key is not None and self.natural.get(key, [e.event_id])[0] != e.event_id

    @property
    def relationship_days(self) -> float:
        return (self.last_seen - self.first_seen).total_seconds() / 86400

    @property
    def open_tickets(self) -> int:
        return sum(1 for t in self.tickets.values() if t.status == "open")

    @property
    def tickets_total(self) -> int:
        return len(self.tickets) + self.tickets_let_go

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


#: The properties anything reads from a journey's touchpoints (the fold, natural keys,
#: alerts, CX contributions): all a customer's journey keeps of them. Its touchpoints'
#: rows are written as they arrive, so the rest would only take room in every journey.
FOLDED_PROPERTIES: Final = frozenset({"author", "channel", "order_id", "rates", "revenue",
                                      "score", "status", "survey", "ticket_id"})


def event_of(tp: Touchpoint, *, keep_row: bool = False) -> JourneyEvent:
    """``keep_row``: keep what the touchpoint's row needs (an anonymous journey's, whose
    rows are written again under the customer once identified); otherwise only what the
    journey reads (``FOLDED_PROPERTIES``; its anonymous id only until add_events has
    recorded it in the journey's ``anonymous_ids``)."""
    if keep_row:
        return JourneyEvent(
            at=tp.occurred_at, event_id=tp.event_id, type=tp.type, channel=tp.channel,
            anonymous_id=tp.anonymous_id, properties=tp.properties,
            extra=RowExtra(version=tp.version, received_at=tp.received_at,
                           session_id=tp.session_id, source=tp.source, context=tp.context))
    return JourneyEvent(at=tp.occurred_at, event_id=tp.event_id, type=tp.type,
                        channel=tp.channel, anonymous_id=tp.anonymous_id,
                        properties=_folded(tp.properties))


def for_customer(e: JourneyEvent) -> JourneyEvent:
    """An anonymous journey's event as a customer's journey keeps it (see event_of:
    add_events records its anonymous id, then drops it)."""
    if e.raw or e.extra is not None:
        return msgspec.structs.replace(e, raw=b"", extra=None,
                                       properties=_folded(e.properties))
    return e


def _folded(properties: dict[str, Any]) -> dict[str, Any]:
    if properties.keys() <= FOLDED_PROPERTIES:
        return properties
    return {k: v for k, v in properties.items() if k in FOLDED_PROPERTIES}


def touchpoint_of(e: JourneyEvent) -> Touchpoint | None:
    """The touchpoint again, from an event that kept its row (None if it did not)."""
    if e.extra is not None:
        x = e.extra
        return Touchpoint(event_id=e.event_id, type=e.type, version=x.version,
                          occurred_at=e.at, received_at=x.received_at,
                          anonymous_id=e.anonymous_id,
                          session_id=x.session_id, channel=e.channel,  # type: ignore[arg-type]
                          source=x.source, context=x.context, properties=e.properties)
    if e.raw:
        return decode_trusted(e.raw)
    return None


def _order(e: JourneyEvent) -> tuple[datetime, str]:
    return e.at, e.event_id


def _digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def _seen(blob: bytes, digest: bytes) -> bool:
    at = blob.find(digest)
    while at != -1:
        if at % 8 == 0:
            return True
        at = blob.find(digest, at + 1)
    return False


def _remember(blob: bytes, digests: bytes, keep: int = SEEN_IDS) -> bytes:
    blob += digests
    return blob[-8 * keep:] if len(blob) > 8 * keep else blob


def add_events(log: JourneyLog, events: list[JourneyEvent],
               customer_id: str | None = None) -> list[JourneyEvent]:
    """Insert events in time order, skipping known event ids; returns those inserted.

    An event older than the tail is folded into the summary where it arrives. The
    version moves when anything changed: an event inserted or the customer set.
    """
    known = {e.event_id for e in log.events}
    added = []
    for event in events:
        if event.event_id in known:
            continue
        digest = _digest(event.event_id)
        if log.seen and _seen(log.seen, digest):
            continue
        known.add(event.event_id)
        if event.anonymous_id:
            if event.anonymous_id not in log.anonymous_ids:
                log.anonymous_ids.append(event.anonymous_id)
                del log.anonymous_ids[:-ANONYMOUS_IDS]
            if event.extra is None and not event.raw:
                # A customer's touchpoint: its device is in anonymous_ids, its row written.
                event = msgspec.structs.replace(event, anonymous_id=None)
        if log.base and log.events and _order(event) < _order(log.events[0]):
            base = log.summary
            assert base is not None
            base.apply(event, {})
            log.base = _encoder.encode(base)
            log.seen = _remember(log.seen, digest)
            log.applied = -1
        else:
            at = bisect.bisect_right(log.events, _order(event), key=_order)
            log.events.insert(at, event)
            if at < log.applied:
                log.applied = -1
        added.append(event)
    changed = bool(added)
    if customer_id and log.customer_id != customer_id:
        log.customer_id = customer_id
        changed = True
    if changed:
        log.version += 1
    return added


def behind_summary(log: JourneyLog, at: datetime) -> bool:
    """Whether a touchpoint at ``at`` would be folded into the summary, not placed."""
    return bool(log.base) and bool(log.events) and at < log.events[0].at


def merge_logs(into: JourneyLog, other: JourneyLog) -> bool:
    """Fold a device's anonymous journey into the customer's journey; True on a change.

    The device's tail is inserted touchpoint by touchpoint; its summary, if it has one,
    joins the customer's summary (counts and tickets exact, stage history approximate).
    """
    changed = bool(add_events(into, other.events))
    other_base = other.summary
    if other_base is not None:
        into.base = _encoder.encode(_absorb(into.summary, other_base))
        into.seen = _remember(into.seen, other.seen)
        into.applied = -1
        into.version += 1
        changed = True
    for anonymous_id in other.anonymous_ids:
        if anonymous_id not in into.anonymous_ids:
            into.anonymous_ids.append(anonymous_id)
            changed = True
    del into.anonymous_ids[:-ANONYMOUS_IDS]
    into.pending_rated += [e for e in other.pending_rated if e not in into.pending_rated]
    return changed


def _absorb(into: FoldState | None, other: FoldState) -> FoldState:
    """Another journey's summary joined to this one's: the counts add up, tickets and
    natural keys join; the stage is this journey's (the other's, if it had none)."""
    if into is None:  # ``other`` is a fresh decode (JourneyLog.summary): taken as is
        other.transitions = []
        return other
    for name in ("touchpoints", "orders", "tickets_let_go"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.revenue = round(into.revenue + other.revenue, 2)
    for mine, theirs in ((into.by_type, other.by_type), (into.by_channel, other.by_channel),
                         (into.deliveries, other.deliveries)):
        for k, n in theirs.items():
            mine[k] = mine.get(k, 0) + n
    into.first_seen = min(filter(None, (into.first_seen, other.first_seen)), default=None)
    into.last_seen = max(filter(None, (into.last_seen, other.last_seen)), default=None)
    into.first_order_at = min(filter(None, (into.first_order_at, other.first_order_at)),
                              default=None)
    for k, v in other.tickets.items():
        into.tickets.setdefault(k, v)
    for k, ids in other.natural.items():
        into.natural[k] = into.natural.get(k, []) + ids
    into.order_channels = {**other.order_channels, **into.order_channels}
    for name in ("nps", "csat", "ces"):
        if getattr(into, name) is None:
            setattr(into, name, getattr(other, name))
    return into


def compact(log: JourneyLog, *, tail: timedelta, tail_touchpoints: int) -> int:
    """Fold the touchpoints older than ``tail`` before the latest, or beyond the latest
    ``tail_touchpoints``, into the summary; returns how many.

    Once there is a summary, touchpoints are folded into it only once they are an
    eighth of ``tail_touchpoints`` or more (at least 1): most batches then leave the
    summary encoded. Called after a fold's rows were built: the transitions and tickets
    the summary keeps for good were written, so only the later ones are kept.
    """
    events = log.events
    if log.state is None or log.applied != len(events) or len(events) < 2:
        shed(log)
        return 0
    cutoff = events[-1].at - tail
    n = max(len(events) - tail_touchpoints, 0)
    while n < len(events) - 1 and events[n].at < cutoff:
        n += 1
    if n == 0 or (log.base and n < tail_touchpoints // 8):
        shed(log)
        return 0
    base = log.summary or FoldState()
    for e in events[:n]:
        base.apply(e, {})
    log.seen = _remember(log.seen, b"".join(_digest(e.event_id) for e in events[:n]))
    del events[:n]
    log.applied -= n
    state = log.state
    base.transitions = []
    state.transitions = [t for t in state.transitions if t.seq > base.seq]
    for ticket_id, ticket in list(base.tickets.items()):
        now = state.tickets.get(ticket_id)
        if (ticket.status == "resolved" and ticket.resolved_at and ticket.resolved_at < cutoff
                and now is not None and now.status == "resolved" and now.resolved_at
                and now.resolved_at < cutoff):
            for s in (base, state):
                del s.tickets[ticket_id]
                s.tickets_let_go += 1
    for field in ("natural", "order_channels"):
        held = getattr(base, field)
        for k in list(held)[:max(len(held) - NATURAL_KEYS, 0)]:
            del held[k]
            getattr(state, field).pop(k, None)
    log.base = _encoder.encode(base)
    shed(log)
    if log.pending_rated:
        kept = {e.event_id for e in events}
        log.pending_rated = [i for i in log.pending_rated if i in kept]
    return n


def shed(log: JourneyLog) -> None:
    """Drop the kept fold of a short journey (see ``STATE_FROM``)."""
    if len(log.events) < STATE_FROM:
        log.state, log.applied = None, -1


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JourneyLog)
_state_decoder = msgspec.msgpack.Decoder(FoldState)


#: A stored log this long or longer is kept zlib-compressed (level 1), if that is smaller.
COMPRESS_FROM: Final = 64
#: ... and no longer than this, by default (JOURNEY_COMPRESS_UP_TO_BYTES). A log is
#: inflated and compressed again on every batch that touches it, at a cost that grows
#: with its bytes; past this (a tail of 70 to 240 touchpoints, as a bot's or a busy
#: kiosk's) that was most of the batch: per touchpoint 5 times a 10-touchpoint
#: journey's (the journey_state bench). The bench's simulated customers' logs are at
#: most 4.7 KB, so none is left plain.
COMPRESS_UP_TO: Final = 8192
#: The first byte of a zlib stream (deflate, 32 KiB window); a msgpack-encoded log
#: starts with a map's (0x80-0x8f, 0xde, 0xdf), so the two never mix up.
_ZLIB = 0x78
#: The FDICT flag of zlib's second header byte: a preset dictionary's Adler-32 follows.
_FDICT = 0x20
#: A level-1 compressor primed with the journeys' dictionary: each value is compressed by
#: a copy of it, which costs what an unprimed one does (priming again would double it).
_primed = zlib.compressobj(1, zdict=JOURNEYS_1)


def encode_log(log: JourneyLog, compress: bool = True, up_to: int = COMPRESS_UP_TO) -> bytes:
    """Compact binary form kept in the Faust table and its changelog: msgpack, then
    zlib with the journeys' preset dictionary from ``COMPRESS_FROM`` bytes up to
    ``up_to``, if that is smaller.

    Why: a worker's memory store holds every journey's value, which the bench measured
    at 977 bytes per customer at 50,000 customers, most of the state (the slope of RSS
    per customer, README "Benchmarks"). zlib at level 1 halves it (0.56 on simulated
    journeys, which hold event ids and digests that do not compress); primed with what
    every journey holds (stream_processors.dictionaries) it stores them in 0.36, 266
    against 739 bytes. About 20 µs per journey written and 5 µs per journey read: a few
    µs per touchpoint, as a batch writes a changed journey once (0.3 writes per
    touchpoint on the bench). Values written before (plain msgpack, or zlib without a
    dictionary) are read as they are.

    ``compress`` False (JOURNEY_COMPRESS_JOURNEYS): plain msgpack only, which workers
    of every version read (a rolling upgrade from one that cannot read these)."""
    data = _encoder.encode(log)
    if not compress or not COMPRESS_FROM <= len(data) <= up_to:
        return data
    packer = _primed.copy()
    packed = packer.compress(data) + packer.flush()
    return packed if len(packed) < len(data) else data


def decode_log(data: bytes) -> JourneyLog:
    """A log as ``encode_log`` stored it: plain, compressed, or compressed with a
    dictionary (named by its Adler-32 in zlib's header)."""
    if data[:1] and data[0] == _ZLIB:
        if len(data) > 6 and data[1] & _FDICT:
            named = int.from_bytes(data[2:6], "big")
            if named not in DICTIONARIES:
                raise ValueError(f"journey compressed with an unknown dictionary "
                                 f"(Adler-32 {named:#010x}): written by a newer version")
            inflater = zlib.decompressobj(zdict=DICTIONARIES[named])
            data = inflater.decompress(data)
            if not inflater.eof:
                raise ValueError("journey value cut short (its zlib stream does not end)")
        else:
            data = zlib.decompress(data)
    return _decoder.decode(data)


def _copy(state: FoldState) -> FoldState:
    return _state_decoder.decode(_encoder.encode(state))


# ── the fold ─────────────────────────────────────────────────────────────────
def fold(log: JourneyLog, *, inactive_after: timedelta | None = None,
         now: datetime | None = None) -> Journey:
    """Derive the journey from its summary and touchpoints, oldest first: only those
    after what ``log.state`` already folded, unless one was inserted before them.

    ``inactive_after`` with ``now``: a journey whose last touchpoint is older than that
    counts as churned (reason ``inactive``) from ``last_seen + inactive_after``.
    """
    if not log.events:
        raise ValueError(f"journey {log.key} has no touchpoints")
    stage_at_event: dict[str, str] = {}
    if log.state is None or not 0 <= log.applied <= len(log.events):
        log.state = log.summary or FoldState()
        log.applied = 0
    j = log.state
    for event in log.events[log.applied:]:
        j.apply(event, stage_at_event)
    log.applied = len(log.events)
    assert j.last_seen is not None
    if (inactive_after is not None and now is not None and not j.churned
            and now - j.last_seen > inactive_after):
        j = _copy(j)  # churned by the clock, not by a touchpoint: not kept
        at = j.last_seen + inactive_after  # type: ignore[operator]
        j.churned, j.churn_reason = True, "inactive"
        j.move("churned", at, log.events[-1].event_id, "inactive")
        if j.recovery == "pending":
            j.recovery = "lost"
    return _result(log, j, stage_at_event)


def _result(log: JourneyLog, j: FoldState, stage_at_event: dict[str, str]) -> Journey:
    score, reasons = churn_risk(j)
    assert j.first_seen is not None and j.last_seen is not None
    return Journey(
        key=log.key, customer_id=log.customer_id, anonymous_ids=list(log.anonymous_ids),
        first_seen=j.first_seen, last_seen=j.last_seen, stage=j.stage,
        stage_entered_at=dict(j.entered), transitions=list(j.transitions),
        stage_at_event=stage_at_event, touchpoints=j.touchpoints,
        counts_by_type=dict(j.by_type), counts_by_channel=dict(j.by_channel),
        orders=j.orders, revenue=j.revenue, first_order_at=j.first_order_at,
        deliveries=dict(j.deliveries),
        tickets={k: msgspec.structs.replace(t) for k, t in j.tickets.items()},
        tickets_let_go=j.tickets_let_go, nps=j.nps, csat=j.csat, ces=j.ces,
        churned=j.churned, churn_reason=j.churn_reason, recovery=j.recovery,
        churn_risk=score, churn_risk_reasons=reasons, natural=j.natural,
        order_channels=j.order_channels, transition_count=j.seq)


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


def churn_risk(j: FoldState) -> tuple[int, list[str]]:
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
               first_response_sla: timedelta, churn_risk_threshold: int,
               new: Iterable[JourneyEvent] | None = None) -> list[Alert]:
    """Every alert the journey calls for now (raised or not; the caller filters).

    ``new``: only these touchpoints may raise alerts of their own (those new to the
    journey; the others had their chance when they were); default: the whole tail.
    """
    if not log.customer_id:  # nobody to follow up with yet
        return []
    found: list[Alert] = []

    def alert(alert_id: str, kind: str, reason: str, touchpoints: tuple[str, ...],
              at: datetime) -> None:
        found.append(Alert(alert_id=alert_id, kind=kind, journey_key=j.key,
                           customer_id=log.customer_id or "", reason=reason,
                           touchpoints=touchpoints, at=at))

    tickets_opened = [t.opened_at for t in j.tickets.values()]
    for e in log.events if new is None else new:
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
