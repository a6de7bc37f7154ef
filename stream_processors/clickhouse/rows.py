"""Rows for the ClickHouse tables, built from touchpoints and journey states (pure)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from schemas import Touchpoint
from stream_processors.journey import JourneyState

__all__ = ["COLUMNS", "dead_letter_row", "snapshot_row", "touchpoint_row"]

#: Insert column order per table; tests check it against the live DDL.
COLUMNS: dict[str, tuple[str, ...]] = {
    "touchpoints": (
        "event_id", "type", "version", "occurred_at", "received_at", "ingested_at",
        "journey_key", "customer_id", "anonymous_id", "session_id", "channel", "source",
        "stage", "context", "properties"),
    "customer_journeys": (
        "journey_key", "customer_id", "anonymous_ids", "first_seen", "last_seen", "stage",
        "touchpoints", "type_names", "type_counts", "channel_names", "channel_counts",
        "orders", "revenue", "version", "updated_at"),
    "dead_letters": (
        "received_at", "topic", "partition", "offset", "reason", "field", "error", "payload"),
}


def touchpoint_row(tp: Touchpoint, state: JourneyState, now: datetime) -> tuple:
    return (
        tp.event_id, tp.type, tp.version, tp.occurred_at, tp.received_at or now, now,
        state.key, state.customer_id or "", tp.anonymous_id or "", tp.session_id or "",
        tp.channel, tp.source, state.stage, _json(tp.context), _json(tp.properties),
    )


def snapshot_row(state: JourneyState, now: datetime) -> tuple:
    types = sorted(state.counts_by_type.items())
    channels = sorted(state.counts_by_channel.items())
    return (
        state.key, state.customer_id or "", list(state.anonymous_ids),
        state.first_seen, state.last_seen, state.stage, state.touchpoints,
        [t for t, _ in types], [n for _, n in types],
        [c for c, _ in channels], [n for _, n in channels],
        state.orders, Decimal(str(state.revenue)), state.version, now,
    )


def dead_letter_row(now: datetime, topic: str, partition: int, offset: int, reason: str,
                    field: str, error: str, payload: bytes) -> tuple:
    return (now, topic, partition, offset, reason, field, error,
            payload.decode("utf-8", errors="replace"))


def _json(value: dict) -> str:
    return msgspec.json.encode(value).decode() if value else "{}"
