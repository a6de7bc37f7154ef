"""The stream topology, top to bottom: validate → resolve identity → update journey → emit.

    <prefix>.touchpoints
        │  route_by_device: validate; invalid → <prefix>.dead-letters + ClickHouse
        ├──── has an anonymous id ──► <prefix>.touchpoints-by-device (key: device)
        │                                 │  resolve_identity: `devices` table
        │                                 │  (device → customer); the first identify of a
        │                                 │  device sends MergeInto to its anonymous journey
        └──── customer only ─────┐        │
                                 ▼        ▼
                          <prefix>.journey-events (key: customer, or anon:<device>)
                                 │  update_journey: `journeys` table (each journey's
                                 │  touchpoints); refold; an anonymous journey told to
                                 │  merge sends its log to the customer's
                                 ▼
        ClickHouse: touchpoints, customer_journeys, journey_transitions, support_tickets

Each agent reads batches bounded by size *and* time, and the batch's offsets are acked
only after its outputs were handed on (Faust flushes the producer before it commits;
the sink returns only once ClickHouse has the rows). Identity lives with the device's
partition and a journey with its own, so results do not depend on how partitions are
spread over workers.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import msgspec
from faust.streams import _current_event
from faust.types import EventT, StreamT
from faust.web import Request, Response, Web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schemas import SchemaError, Touchpoint, decode_touchpoint, decode_trusted, utcnow
from stream_processors.app import app, settings
from stream_processors.clickhouse.rows import (
    alert_row,
    dead_letter_row,
    deleted_transitions,
    journey_row,
    merged_row,
    ticket_rows,
    touchpoint_row,
    transition_rows,
)
from stream_processors.clickhouse.sink import ClickHouseSink
from stream_processors.commands import Merge, MergeInto, Touch, decode_command, encode_command
from stream_processors.cx_metrics import csat_satisfied, nps_category
from stream_processors.journey import (
    Alert,
    Journey,
    JourneyLog,
    add_events,
    alerts_for,
    decode_log,
    encode_log,
    event_of,
    fold,
    merge_logs,
)
from stream_processors.metrics import WorkerMetrics

log = logging.getLogger(__name__)

registry = CollectorRegistry()
metrics = WorkerMetrics.create(registry)
sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, metrics,
                      max_retry_seconds=settings.sink_max_retry_seconds)
#: Journeys the inactivity sweep already wrote as churned (until they move again), and
#: the alerts it raised (the sweep cannot write the table; ClickHouse deduplicates).
swept: set[bytes] = set()
swept_alerts: set[str] = set()
SLA = timedelta(seconds=settings.first_response_sla_seconds)
INACTIVE_AFTER = (timedelta(days=settings.churn_inactive_days)
                  if settings.churn_inactive_days > 0 else None)
LATENESS = timedelta(seconds=settings.lateness_seconds)
BATCH, WITHIN = settings.sink_batch_size, settings.sink_flush_seconds

# ── topics ───────────────────────────────────────────────────────────────────
_raw = {"key_serializer": "raw", "value_serializer": "raw",
        "partitions": settings.topic_partitions}
touchpoints_topic = app.topic(settings.touchpoints_topic, **_raw)
by_device_topic = app.topic(settings.by_device_topic, **_raw)
journey_events_topic = app.topic(settings.journey_events_topic, **_raw)
dead_letters_topic = app.topic(settings.dead_letter_topic, **_raw)
alerts_topic = app.topic(settings.alerts_topic, **_raw)

# ── tables ───────────────────────────────────────────────────────────────────
# Keys and values are bytes. use_partitioner: a batch holds events of several
# partitions, so a changelog record must follow its key, not "the current event".
devices = app.Table("devices", partitions=settings.topic_partitions, key_type=bytes,
                    value_type=bytes, use_partitioner=True)
journeys = app.Table("journeys", partitions=settings.topic_partitions, key_type=bytes,
                     value_type=bytes, use_partitioner=True)


# ── agents ───────────────────────────────────────────────────────────────────
@app.agent(touchpoints_topic)
async def route_by_device(stream: StreamT) -> None:
    async for events in stream.take_events(BATCH, within=WITHIN):
        dead_rows = []
        now = utcnow()
        for event in events:
            try:
                tp = decode_touchpoint(event.value)
            except SchemaError as exc:
                dead_rows.append(await _dead_letter(event, exc))
                continue
            metrics.touchpoints_processed.labels(tp.type).inc()
            metrics.processing_lag_seconds.observe(max(0.0, (now - tp.occurred_at)
                                                       .total_seconds()))
            if tp.anonymous_id:
                await by_device_topic.send(key=tp.anonymous_id.encode(), value=event.value)
            else:
                await _to_journey(tp.key, Touch(tp.customer_id, [event.value]))
        if dead_rows:
            await sink.write({"dead_letters": dead_rows})


@app.agent(by_device_topic)
async def resolve_identity(stream: StreamT) -> None:
    async for events in stream.take_events(BATCH, within=WITHIN):
        for event in events:
            tp = decode_trusted(event.value)
            device = event.key
            linked = devices.get(device)
            customer = tp.customer_id
            if customer:
                if linked is None:  # first identification: the past comes along
                    await _to_journey(f"anon:{tp.anonymous_id}", MergeInto(customer))
                if linked != customer.encode():  # later anonymous visits follow the login
                    with _writing_for(event):
                        devices[device] = customer.encode()
            elif linked is not None:
                customer = linked.decode()
            key = customer or f"anon:{tp.anonymous_id}"
            await _to_journey(key, Touch(customer, [event.value]))


@app.agent(journey_events_topic)
async def update_journey(stream: StreamT) -> None:
    async for events in stream.take_events(BATCH, within=WITHIN):
        await _update_journeys(events)


@app.timer(interval=settings.churn_sweep_seconds)
async def sweep_inactive() -> None:
    """Journeys that went quiet churn without a touchpoint to tell us: look for them.

    Writes rows only, never the table (a table write needs the event that carried the
    key); ``swept`` remembers what was written until the journey moves again.
    """
    if INACTIVE_AFTER is None:
        return
    now = utcnow()
    rows: dict[str, list] = defaultdict(list)
    raised: list[Alert] = []
    version = _row_version()
    for key, value in list(journeys.items()):
        if key in swept:
            continue
        journey_log = decode_log(value)
        if (journey_log.merged_into or not journey_log.events
                or now - journey_log.events[-1].at <= INACTIVE_AFTER):
            continue
        swept.add(key)
        raised += _emit_journey(journey_log, [], rows, now, version, already=swept_alerts)
    swept_alerts.update(a.alert_id for a in raised)
    await _raise(raised)
    if rows:
        log.info("inactivity sweep: %d journeys churned", len(rows["customer_journeys"]))
        await sink.write(rows)


@app.timer(interval=5.0)
async def observe_lag() -> None:
    """Consumer lag per assigned partition and table sizes, for ops."""
    consumer = app.consumer
    metrics.consumer_lag.clear()  # partitions move between workers on rebalance
    for tp in consumer.assignment():
        try:
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
        except Exception:  # not fetched yet, or just revoked
            continue
        if position is not None and highwater is not None:
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - position))
    metrics.table_keys.labels("journeys").set(len(journeys))
    metrics.table_keys.labels("devices").set(len(devices))


# ── what the agents call ─────────────────────────────────────────────────────
async def _raise(alerts: list[Alert]) -> None:
    for alert in alerts:
        metrics.alerts_raised.labels(alert.kind).inc()
        await alerts_topic.send(key=alert.customer_id.encode(), value=msgspec.json.encode(alert))


async def _to_journey(key: str, command: Touch | MergeInto | Merge) -> None:
    await journey_events_topic.send(key=key.encode(), value=encode_command(command))


async def _update_journeys(events: Sequence[EventT]) -> None:
    now, version = utcnow(), _row_version()
    logs: dict[bytes, JourneyLog] = {}
    fresh: dict[bytes, list[Touchpoint]] = defaultdict(list)
    outgoing: list[tuple[str, Merge]] = []
    rows: dict[str, list] = defaultdict(list)
    carriers: dict[bytes, EventT] = {}
    counted: set[str] = set()
    for event in events:
        key: bytes = event.key
        journey_log = logs.get(key) or _load(key)
        logs[key] = journey_log
        carriers[key] = event
        command = decode_command(event.value)
        if isinstance(command, Touch):
            anonymous = journey_log.customer_id is None and command.customer_id is None
            tps = [decode_trusted(raw) for raw in command.touchpoints]
            if journey_log.events:
                horizon = journey_log.events[-1].at - LATENESS
                metrics.late_touchpoints.inc(sum(1 for tp in tps if tp.occurred_at < horizon))
            added = add_events(journey_log, [event_of(tp, raw if anonymous else b"") for tp, raw
                                             in zip(tps, command.touchpoints, strict=True)],
                               command.customer_id)
            new_ids = {e.event_id for e in added}
            fresh[key] += [tp for tp in tps if tp.event_id in new_ids]
            swept.discard(key)
        elif isinstance(command, MergeInto):
            if journey_log.merged_into or not journey_log.events:
                continue
            outgoing.append((command.customer_id, Merge(msgspec.structs.replace(journey_log))))
            rows["customer_journeys"].append(merged_row(
                journey_log.key, command.customer_id, journey_log.anonymous_ids,
                journey_log.events[0].at, (journey_log.version + 1) * 2, now))
            rows["journey_transitions"] += deleted_transitions(
                journey_log.key, None, 0, journey_log.emitted_transitions,
                journey_log.events[0].at, version)
            journey_log.merged_into = command.customer_id
            journey_log.events, journey_log.emitted_transitions = [], 0
            journey_log.version += 1
            fresh.pop(key, None)  # their rows are written under the customer instead
        else:
            merge_logs(journey_log, command.log)
            # Every touchpoint the device journey held is written again under the
            # customer, even one the customer's journey already had (a duplicate routed
            # here after the link): the device journey may have written its row later,
            # and this merge comes after that journey's last write.
            fresh[key] += [decode_trusted(e.raw) for e in command.log.events if e.raw]
            counted.update(e.event_id for e in command.log.events)  # in the device journey
    raised: list[Alert] = []
    for key, journey_log in logs.items():
        if journey_log.events and not journey_log.merged_into:
            raised += _emit_journey(journey_log, fresh.get(key, []), rows, now, version, counted)
        with _writing_for(carriers[key]):
            journeys[key] = encode_log(journey_log)
    for customer, merge in outgoing:
        await _to_journey(customer, merge)
    await _raise(raised)
    await sink.write(rows)


def _emit_journey(journey_log: JourneyLog, fresh: list[Touchpoint], rows: dict[str, list],
                  now: datetime, version: int, counted: set[str] | None = None,
                  already: set[str] | frozenset[str] = frozenset()) -> list[Alert]:
    """Rows for a journey that changed; returns the alerts it raises for the first time."""
    j = fold(journey_log, inactive_after=INACTIVE_AFTER, now=now)
    # Twice the log version, plus one once inactivity churned it: the sweep's row (no
    # new touchpoint, same log version) wins over the last one, and loses to the next.
    snapshot_version = journey_log.version * 2 + int(j.churn_reason == "inactive")
    rows["customer_journeys"].append(journey_row(j, snapshot_version, now))
    rows["journey_transitions"] += transition_rows(j, journey_log.emitted_transitions, version)
    rows["support_tickets"] += ticket_rows(j, version)
    for tp in {tp.event_id: tp for tp in fresh}.values():
        rows["touchpoints"].append(touchpoint_row(
            tp, j.key, journey_log.customer_id, j.stage_at_event.get(tp.event_id, j.stage),
            now, version))
        if counted is None or tp.event_id not in counted:
            _count_cx(tp, j)
    journey_log.emitted_transitions = len(j.transitions)
    if journey_log.customer_id:  # identified: its events never move again
        journey_log.events = [msgspec.structs.replace(e, raw=b"") if e.raw else e
                              for e in journey_log.events]
    raised = [a for a in alerts_for(journey_log, j, now=now, first_response_sla=SLA,
                                    churn_risk_threshold=settings.churn_risk_alert)
              if a.alert_id not in journey_log.alerts_raised and a.alert_id not in already]
    journey_log.alerts_raised += [a.alert_id for a in raised]
    rows["journey_alerts"] += [alert_row(a, now) for a in raised]
    return raised


@contextlib.contextmanager
def _writing_for(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event for a table write.

    A batch is processed after its events were iterated, but Faust's RocksDB store picks
    the partition's database from the current event (the memory store does not care).
    The event given is the one that carried the key, so the partition is the key's.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _count_cx(tp: Touchpoint, j: Journey) -> None:
    """CX counters for a touchpoint new to its journey.

    The journey log deduplicates, so replays do not count twice; touchpoints merged in
    from a device journey were counted there. (A duplicate whose copies straddle the
    identify, one in each journey, counts twice: rare, and noted.)
    """
    p = tp.properties
    if tp.type == "survey_response":
        survey, score = p["survey"], int(p["score"])
        if survey == "nps":
            category = nps_category(score)
        elif survey == "csat":
            category = "satisfied" if csat_satisfied(score) else "unsatisfied"
        else:
            category = "answered"
            metrics.cx_ces_score.observe(score)
        metrics.cx_survey_responses.labels(survey, category, tp.channel).inc()
    elif tp.type == "order_placed":
        metrics.cx_orders.inc()
    elif tp.type == "delivery_updated":
        metrics.cx_deliveries.labels(p["status"]).inc()
    elif tp.type == "support_ticket_opened":
        metrics.cx_tickets_opened.labels(p["channel"]).inc()
    elif tp.type in ("support_message", "support_ticket_resolved"):
        ticket = j.tickets.get(str(p.get("ticket_id")))
        if ticket is None:
            return
        if ticket.first_response_at == tp.occurred_at and p.get("author") == "agent":
            metrics.cx_first_response_seconds.observe(ticket.first_response_seconds or 0.0)
        elif ticket.resolved_at == tp.occurred_at and ticket.status == "resolved":
            metrics.cx_resolution_seconds.observe(ticket.resolution_seconds or 0.0)


def _load(key: bytes) -> JourneyLog:
    stored = journeys.get(key)
    if stored is not None:
        return decode_log(stored)
    text = key.decode()
    return JourneyLog(key=text, customer_id=None if text.startswith("anon:") else text)


async def _dead_letter(event: EventT, exc: SchemaError) -> tuple:
    message = event.message
    raw: bytes = event.value
    metrics.dead_letters.labels(exc.reason).inc()
    log.warning("dead letter %s[%d]@%d: %s", message.topic, message.partition, message.offset,
                exc)
    await dead_letters_topic.send(key=message.key, value=msgspec.json.encode({
        "reason": exc.reason, "field": exc.field, "error": exc.detail, "topic": message.topic,
        "partition": message.partition, "offset": message.offset,
        "payload": raw.decode("utf-8", errors="replace")}))
    return dead_letter_row(utcnow(), message.topic, message.partition, message.offset,
                           exc.reason, exc.field, exc.detail, raw)


def _row_version() -> int:
    """Later writes of the same fact win: microseconds since the epoch."""
    return time.time_ns() // 1000


# ── web ──────────────────────────────────────────────────────────────────────
@app.page("/metrics")
async def metrics_page(web: Web, request: Request) -> Response:
    return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@app.page("/healthz")
async def healthz(web: Web, request: Request) -> Response:
    return web.json({"status": "ok"})
