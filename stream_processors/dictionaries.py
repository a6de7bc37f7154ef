"""Preset dictionaries for zlib: what a stored journey's bytes have in common with every
other's, so that zlib need not spell it out again in each value.

Why: a journey is a few hundred bytes, too short for zlib to find much to reuse within
itself; most of what it does repeat (field names, touchpoint types, channels, stages, the
msgpack framing of an event) is the same in every journey. Primed with those, level-1
zlib stores the simulator's journeys in 0.64 of the bytes it needs without them (266
against 413 bytes, 739 as plain msgpack, on 3,000 simulated customers), in about the
same time (the primed compressor is copied, not primed again for each value).

**Never change a dictionary here.** A value compressed with one names it by its Adler-32
(zlib's header, RFC 1950 ``DICTID``) and can be read only with the very same bytes:
tests/unit/test_bounded_journey.py pins them. To improve one, add another beside it and
write with the new one; keep the old for what was written with it.

The content is built from the schema's vocabulary, not from the bench's data, so that it
fits any shop's journeys: it holds no ids, and no campaign or product names.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

__all__ = ["DICTIONARIES", "JOURNEYS_1"]

#: Words a journey's msgpack holds: field names (of tickets, transitions, the fold, the
#: stored log), folded property names, stages, channels and touchpoint types. Frozen as
#: written: the dictionary's bytes are derived from this tuple.
_WORDS_1: Final = (
    "ticket_id", "opened_at", "opened_event_id", "channel", "order_id",
    "first_response_at", "resolved_at", "reopened", "status", "messages", "seq",
    "from_stage", "to_stage", "at", "event_id", "reason", "version", "received_at",
    "session_id", "source", "context", "first_seen", "last_seen", "stage", "entered",
    "transitions", "touchpoints", "by_type", "by_channel", "orders", "revenue",
    "first_order_at", "deliveries", "tickets", "tickets_let_go", "nps", "csat", "ces",
    "churned", "churn_reason", "recovery", "payment_failed_pending", "natural",
    "order_channels", "key", "customer_id", "anonymous_ids", "events", "base", "state",
    "applied", "seen", "merged_into", "emitted_transitions", "transition_digests",
    "ticket_digests", "raised", "alerts_raised", "pending_rated", "swept_version",
    "updated_at", "author", "rates", "score", "survey", "awareness", "consideration",
    "purchase", "fulfilment", "post_purchase", "loyal", "web", "app", "email", "sms",
    "phone", "chat", "social", "store", "ad", "other", "ad_impression", "ad_click",
    "email_opened", "email_clicked", "social_engaged", "page_view", "product_viewed",
    "cart_updated", "checkout_started", "order_placed", "payment_failed",
    "order_shipped", "delivery_updated", "package_opened", "return_requested",
    "return_completed", "review_submitted", "support_ticket_opened", "support_message",
    "support_ticket_resolved", "support_ticket_reopened", "survey_response", "identify",
    "account_created", "subscription_cancelled",
)


class _Event1(msgspec.Struct, array_like=True):
    """A journey event as ``JourneyEvent`` encodes it (frozen here with the dictionary)."""

    at: datetime
    event_id: str
    type: str
    channel: str
    anonymous_id: None = None
    properties: dict = {}
    raw: bytes = b""
    extra: None = None


class _Log1(msgspec.Struct):
    """A young customer's journey as ``JourneyLog`` encodes it, ids left empty."""

    key: str
    customer_id: str
    anonymous_ids: list[str]
    events: list[_Event1]
    version: int
    transition_digests: dict[int, int]
    updated_at: datetime


_T0: Final = datetime(2026, 1, 1, tzinfo=UTC)
_JOURNEY_1: Final = _Log1(
    key="", customer_id="", anonymous_ids=[""],
    events=[_Event1(_T0 + timedelta(seconds=97 * n, milliseconds=123), f"{n}", kind, channel)
            for n, (kind, channel) in enumerate([
                ("ad_impression", "ad"), ("ad_click", "ad"), ("page_view", "web"),
                ("page_view", "web"), ("product_viewed", "web"), ("cart_updated", "web"),
                ("checkout_started", "web"), ("order_placed", "web")])],
    version=1795179164,
    transition_digests={1: 9415439028358477517, 2: 1212406138840892222},
    updated_at=_T0,
)

#: The journeys' first dictionary (1,542 bytes; zlib uses up to 32 KiB). The words come
#: first: zlib reaches the end of a dictionary with shorter codes, and the journey's
#: framing is what every value repeats most.
JOURNEYS_1: Final = msgspec.msgpack.encode(list(_WORDS_1)) + msgspec.msgpack.encode(_JOURNEY_1)

#: Every dictionary a stored value may name, by its Adler-32 (zlib's DICTID).
DICTIONARIES: Final = {zlib.adler32(d): d for d in (JOURNEYS_1,)}
