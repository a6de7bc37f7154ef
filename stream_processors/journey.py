"""How a touchpoint changes a customer's journey: pure functions over plain data.

No broker, table or database here, so every rule is tested directly
(tests/unit/test_journey.py). The agent in ``topology.py`` only loads a state,
calls :func:`apply_touchpoint` and stores the result.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas import TOUCHPOINT_TYPES, Touchpoint

__all__ = ["FUNNEL", "JourneyState", "apply_touchpoint", "decode_state", "encode_state"]

#: The funnel stages in order; a journey's stage is the furthest one it reached.
FUNNEL = ("awareness", "consideration", "purchase", "fulfilment", "post_purchase")
_FUNNEL_RANK = {stage: rank for rank, stage in enumerate(FUNNEL)}


class JourneyState(msgspec.Struct, kw_only=True, frozen=True):
    """The live picture of one journey, keyed like its touchpoints (customer or device)."""

    key: str
    customer_id: str | None = None
    anonymous_ids: tuple[str, ...] = ()
    first_seen: datetime
    last_seen: datetime
    stage: str = "awareness"
    touchpoints: int = 0
    counts_by_type: dict[str, int] = {}
    counts_by_channel: dict[str, int] = {}
    orders: int = 0
    revenue: float = 0.0
    #: Touchpoints applied so far: the snapshot version, so the newest row wins.
    version: int = 0


def apply_touchpoint(state: JourneyState | None, tp: Touchpoint) -> JourneyState:
    """Return the journey after ``tp``; ``state`` is None for a journey's first touchpoint."""
    if state is None:
        state = JourneyState(key=tp.key, first_seen=tp.occurred_at, last_seen=tp.occurred_at)
    by_type = dict(state.counts_by_type)
    by_type[tp.type] = by_type.get(tp.type, 0) + 1
    by_channel = dict(state.counts_by_channel)
    by_channel[tp.channel] = by_channel.get(tp.channel, 0) + 1
    anonymous_ids = state.anonymous_ids
    if tp.anonymous_id and tp.anonymous_id not in anonymous_ids:
        anonymous_ids = (*anonymous_ids, tp.anonymous_id)
    orders, revenue = state.orders, state.revenue
    if tp.type == "order_placed":
        orders += 1
        revenue = round(revenue + _number(tp.properties.get("revenue")), 2)
    return msgspec.structs.replace(
        state,
        customer_id=tp.customer_id or state.customer_id,
        anonymous_ids=anonymous_ids,
        first_seen=min(state.first_seen, tp.occurred_at),
        last_seen=max(state.last_seen, tp.occurred_at),
        stage=_furthest(state.stage, TOUCHPOINT_TYPES[tp.type]),
        touchpoints=state.touchpoints + 1,
        counts_by_type=by_type,
        counts_by_channel=by_channel,
        orders=orders,
        revenue=revenue,
        version=state.version + 1,
    )


def _furthest(current: str, candidate: str) -> str:
    if candidate in _FUNNEL_RANK and _FUNNEL_RANK[candidate] > _FUNNEL_RANK.get(current, -1):
        return candidate
    return current


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JourneyState)


def encode_state(state: JourneyState) -> bytes:
    """Compact binary form kept in the Faust table and its changelog."""
    return _encoder.encode(state)


def decode_state(data: bytes) -> JourneyState:
    return _decoder.decode(data)
