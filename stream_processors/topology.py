"""The stream topology, top to bottom: touchpoints in, journeys and ClickHouse rows out.

    <prefix>.touchpoints ──validate──► journeys table ──► ClickHouse
             │                           (per customer)   touchpoints, customer_journeys
             └── invalid ──► <prefix>.dead-letters + ClickHouse dead_letters

One agent, ``update_journey``, reads batches (size *and* time bound), applies the
pure rules of ``journey.py``, writes the table, and hands the batch's rows to the
sink before Faust acks the batch's offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from faust.types import EventT, StreamT
from faust.web import Request, Response, Web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schemas import SchemaError, decode_touchpoint, utcnow
from stream_processors.app import app, settings
from stream_processors.clickhouse.rows import dead_letter_row, snapshot_row, touchpoint_row
from stream_processors.clickhouse.sink import ClickHouseSink
from stream_processors.journey import JourneyState, apply_touchpoint, decode_state, encode_state
from stream_processors.metrics import WorkerMetrics

log = logging.getLogger(__name__)

registry = CollectorRegistry()
metrics = WorkerMetrics.create(registry)
sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, metrics,
                      max_retry_seconds=settings.sink_max_retry_seconds)

# ── topics ───────────────────────────────────────────────────────────────────
touchpoints_topic = app.topic(settings.touchpoints_topic, key_serializer="raw",
                              value_serializer="raw", partitions=settings.topic_partitions)
dead_letters_topic = app.topic(settings.dead_letter_topic, key_serializer="raw",
                               value_serializer="raw", partitions=settings.topic_partitions)

# ── tables ───────────────────────────────────────────────────────────────────
# Keys and values are bytes (msgpack states). use_partitioner: a batch holds events
# of several partitions, so the changelog partition must follow the key (as the
# producer's partitioner placed it), not "the current event".
journeys = app.Table("journeys", partitions=settings.topic_partitions, key_type=bytes,
                     value_type=bytes, use_partitioner=True)


# ── agents ───────────────────────────────────────────────────────────────────
@app.agent(touchpoints_topic)
async def update_journey(stream: StreamT) -> None:
    async for events in stream.take_events(settings.sink_batch_size,
                                           within=settings.sink_flush_seconds):
        rows, dead = _apply_batch(events)
        for value in dead["messages"]:
            await dead_letters_topic.send(key=value[0], value=value[1])
        await sink.write({"touchpoints": rows["touchpoints"],
                          "customer_journeys": rows["customer_journeys"],
                          "dead_letters": dead["rows"]})


def _apply_batch(events: Sequence[EventT]) -> tuple[dict[str, list], dict[str, list]]:
    """Apply a batch to the table; return ClickHouse rows and dead letters."""
    now = utcnow()
    touched: dict[bytes, JourneyState] = {}
    tp_rows: list[tuple] = []
    dead_rows: list[tuple] = []
    dead_messages: list[tuple[bytes | None, bytes]] = []
    for event in events:
        raw: bytes = event.value
        message = event.message
        try:
            tp = decode_touchpoint(raw)
        except SchemaError as exc:
            metrics.dead_letters.labels(exc.reason).inc()
            log.warning("dead letter %s[%d]@%d: %s", message.topic, message.partition,
                        message.offset, exc)
            dead_rows.append(dead_letter_row(now, message.topic, message.partition,
                                             message.offset, exc.reason, exc.field,
                                             exc.detail, raw))
            dead_messages.append((message.key, msgspec.json.encode({
                "reason": exc.reason, "field": exc.field, "error": exc.detail,
                "topic": message.topic, "partition": message.partition,
                "offset": message.offset, "payload": raw.decode("utf-8", errors="replace"),
            })))
            continue
        key = tp.key.encode()
        state = touched.get(key)
        if state is None:
            stored = journeys.get(key)
            state = decode_state(stored) if stored is not None else None
        state = apply_touchpoint(state, tp)
        touched[key] = state
        tp_rows.append(touchpoint_row(tp, state, now))
        metrics.touchpoints_processed.labels(tp.type).inc()
    # One table write per journey per batch, not per event: fewer changelog records.
    for key, state in touched.items():
        journeys[key] = encode_state(state)
    rows = {"touchpoints": tp_rows,
            "customer_journeys": [snapshot_row(s, now) for s in touched.values()]}
    return rows, {"rows": dead_rows, "messages": dead_messages}


# ── web ──────────────────────────────────────────────────────────────────────
@app.page("/metrics")
async def metrics_page(web: Web, request: Request) -> Response:
    return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@app.page("/healthz")
async def healthz(web: Web, request: Request) -> Response:
    return web.json({"status": "ok"})

