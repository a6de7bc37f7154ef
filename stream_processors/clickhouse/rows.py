"""Rows for the ClickHouse tables, built from touchpoints and journeys (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from schemas import Touchpoint
from stream_processors.journey import STAGES, Alert, Journey

__all__ = ["COLUMNS", "FINAL_VERSION", "alert_row", "changed_rows", "dead_letter_row",
           "journey_row", "merged_row", "metric_row", "missed_row", "ticket_rows", "touchpoint_row",
           "transition_rows"]

#: Added to a final metric row's version: it outranks every open row of its window.
FINAL_VERSION = 1 << 62

#: Insert column order per table; tests check it against the live DDL.
COLUMNS: dict[str, tuple[str, ...]] = {
    "touchpoints": (
        "event_id", "type", "schema_version", "occurred_at", "received_at", "ingested_at",
        "journey_key", "customer_id", "anonymous_id", "session_id", "channel", "source",
        "stage", "context", "properties", "row_version"),
    "customer_journeys": (
        "journey_key", "customer_id", "anonymous_ids", "merged_into", "first_seen",
        "last_seen", "relationship_days", "stage", "stage_names", "stage_entered_at",
        "touchpoints", "type_names", "type_counts", "channel_names", "channel_counts",
        "orders", "revenue", "first_order_at", "deliveries_on_time", "deliveries_late",
        "deliveries_damaged", "deliveries_failed", "deliveries_returned", "tickets",
        "open_tickets", "nps", "nps_category", "csat", "ces", "churned", "churn_reason",
        "recovery", "churn_risk", "churn_risk_reasons", "version", "updated_at"),
    "dead_letters": (
        "received_at", "topic", "partition", "offset", "reason", "field", "error", "payload"),
    "journey_transitions": (
        "journey_key", "customer_id", "seq", "from_stage", "to_stage", "at", "event_id",
        "reason", "is_deleted", "row_version"),
    "cx_metrics": (
        "metric", "dimension", "window", "window_start", "window_end", "value", "numerator",
        "denominator", "samples", "final", "revision", "late_samples", "version",
        "updated_at"),
    "cx_missed": (
        "metric", "dimension", "occurred_at", "numerator", "denominator", "samples",
        "lacking_through", "partition", "offset", "recorded_at"),
    "journey_alerts": (
        "alert_id", "kind", "journey_key", "customer_id", "reason", "touchpoints", "at",
        "raised_at"),
    "support_tickets": (
        "ticket_id", "journey_key", "customer_id", "channel", "order_id", "opened_at",
        "first_response_at", "resolved_at", "first_response_seconds", "resolution_seconds",
        "reopened", "messages", "status", "row_version"),
    "privacy_acks": ("request", "stage", "partition", "erased", "acked_at"),
    "privacy_audit": (
        "request", "action", "id_hash", "hashes", "requested_at", "requested_by", "outcome",
        "erased", "finished_at"),
}


def touchpoint_row(tp: Touchpoint, journey_key: str, customer_id: str | None, stage: str,
                   now: datetime, row_version: int) -> tuple:
    return (
        tp.event_id, tp.type, tp.version, tp.occurred_at, tp.received_at or now, now,
        journey_key, customer_id or "", tp.anonymous_id or "", tp.session_id or "",
        tp.channel, tp.source, stage, _json(tp.context), _json(tp.properties), row_version,
    )


def journey_row(j: Journey, version: int, now: datetime) -> tuple:
    types = sorted(j.counts_by_type.items())
    channels = sorted(j.counts_by_channel.items())
    entered = sorted(j.stage_entered_at.items(), key=lambda kv: STAGES.index(kv[0]))
    d = j.deliveries
    return (
        j.key, j.customer_id or "", list(j.anonymous_ids), "", j.first_seen, j.last_seen,
        round(j.relationship_days, 6), j.stage, [s for s, _ in entered], [t for _, t in entered],
        j.touchpoints, [t for t, _ in types], [n for _, n in types],
        [c for c, _ in channels], [n for _, n in channels],
        j.orders, Decimal(str(j.revenue)), j.first_order_at,
        d.get("on_time", 0), d.get("late", 0), d.get("damaged", 0), d.get("failed", 0),
        d.get("returned", 0), j.tickets_total, j.open_tickets, j.nps, j.nps_category, j.csat,
        j.ces, int(j.churned), j.churn_reason, j.recovery, j.churn_risk,
        list(j.churn_risk_reasons), version, now,
    )


def merged_row(key: str, into: str, anonymous_ids: list[str], first_seen: datetime,
               version: int, now: datetime) -> tuple:
    """The last row of an anonymous journey: it now lives on as ``into``'s journey."""
    return (key, into, list(anonymous_ids), into, first_seen, first_seen, 0.0, "", [], [], 0,
            [], [], [], [], 0, Decimal(0), None, 0, 0, 0, 0, 0, 0, 0, None, "", None, None,
            0, "", "", 0, [], version, now)


def transition_rows(j: Journey, previous_count: int, row_version: int) -> list[tuple]:
    rows = [(j.key, j.customer_id or "", t.seq, t.from_stage, t.to_stage, t.at, t.event_id,
             t.reason, 0, row_version) for t in j.transitions]
    rows += deleted_transitions(j.key, j.customer_id, j.transition_count, previous_count,
                                j.first_seen, row_version)
    return rows


def deleted_transitions(key: str, customer_id: str | None, keep: int, previous_count: int,
                        at: datetime, row_version: int) -> list[tuple]:
    return [(key, customer_id or "", seq, "", "", at, "", "", 1, row_version)
            for seq in range(keep + 1, previous_count + 1)]


def ticket_rows(j: Journey, row_version: int) -> list[tuple]:
    return [(t.ticket_id, j.key, j.customer_id or "", t.channel, t.order_id, t.opened_at,
             t.first_response_at, t.resolved_at, t.first_response_seconds, t.resolution_seconds,
             t.reopened, t.messages, t.status, row_version) for t in j.tickets.values()]


def metric_row(metric: str, dimension: str, window: str, start: datetime, end: datetime,
               value: float | None, numerator: float, denominator: float, samples: int,
               final: bool, version: int, now: datetime, revision: int = 0,
               late_samples: int = 0) -> tuple:
    return (metric, dimension, window, start, end, value, numerator, denominator, samples,
            int(final), revision, late_samples, version + FINAL_VERSION * final, now)


def missed_row(metric: str, dimension: str, occurred_at: datetime, numerator: float,
               denominator: float, samples: int, lacking_through: datetime, partition: int,
               offset: int, now: datetime) -> tuple:
    return (metric, dimension, occurred_at, numerator, denominator, samples, lacking_through,
            partition, offset, now)


def alert_row(alert: Alert, now: datetime) -> tuple:
    return (alert.alert_id, alert.kind, alert.journey_key, alert.customer_id, alert.reason,
            list(alert.touchpoints), alert.at, now)


def dead_letter_row(now: datetime, topic: str, partition: int, offset: int, reason: str,
                    field: str, error: str, payload: bytes) -> tuple:
    return (now, topic, partition, offset, reason, field, error,
            payload.decode("utf-8", errors="replace"))


def changed_rows(rows: list[tuple], written: Mapping[Any, int], key: Callable[[tuple], Hashable],
                 ) -> tuple[list[tuple], dict[Any, int]]:
    """The rows that differ from what was last written, and the digests of all of them.

    ``written``: each row's key → the digest of the row last written for it. A row's
    digest leaves out its last column (the row version, new on every write), so a row
    whose content did not change is not written again: a journey's transitions and
    tickets are re-derived by every fold, but most batches change none of them.
    """
    digests = {key(row): _digest(row) for row in rows}
    return [row for row in rows if written.get(key(row)) != digests[key(row)]], digests


_encoder = msgspec.msgpack.Encoder()


def _digest(row: tuple) -> int:
    """A fingerprint that is the same in every process (unlike ``hash``)."""
    data = _encoder.encode(row[:-1])
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _json(value: dict) -> str:
    return msgspec.json.encode(value).decode() if value else "{}"
