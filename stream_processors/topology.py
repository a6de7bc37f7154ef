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
                                 │  and each partition's part of the CX metric windows
                                 ▼
                          <prefix>.cx-partials (partitioned by metric|dimension)
                                 │  aggregate_cx: `cx-windows` table; sums the partials
                                 ▼
        ClickHouse: cx_metrics (open windows as they fill, then the final value)

Windows close by event time: ``route_by_device`` sends each touchpoint partition's
progress downstream as watermark markers (to every partition, after the events they
follow), ``resolve_identity`` forwards the minimum over its inputs, and a journey
partition closes a window once every input has passed its end by the lateness bound
(stream_processors/windows.py says why the max event time seen would not do).

The internal hops carry bundles: one message per partition and batch holding many
keyed commands (``Outbox``), partitioned as Kafka would partition each key alone, so
tables stay co-partitioned while the per-message cost of Faust and the broker is paid
once per bundle.

Each agent reads batches bounded by size *and* time, and the batch's offsets are
acked only after its outputs were handed on (Faust flushes the producer before it
commits; the sink returns only once ClickHouse has the rows). Identity lives with the
device's partition and a journey with its own, so results do not depend on how
partitions are spread over workers.

**Crash safety.** No agent writes a table while it works. Each reads through ``Staged``
tables and collects an ``Effects``, whose ``commit`` does one thing after another: rows
into ClickHouse, messages acknowledged by the broker, then table writes, so that state
which marks work as done is saved only after the effects it guards are durable
(stream_processors/effects.py). Where two tables of one batch guard each other, the
guarded one is saved first: a journey partition's CX windows (``cx-partials``), then the
``journeys`` whose known event ids keep a replay from contributing again. Each window
entry also remembers the last journey-events offset it took in (``applied_through``),
so a replay that finds the windows saved but the journeys not does not count twice.
The inactivity sweep sends ``Sweep`` commands instead of writing rows itself, so its
rows, alerts and churn transition go the same way.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiokafka import TopicPartition
from faust.types import EventT, StreamT
from faust.web import Request, Response, Web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schemas import SchemaError, Touchpoint, decode_touchpoint, decode_trusted, utcnow
from schemas.partitioning import partition_for
from stream_processors import recovery
from stream_processors.app import app, settings
from stream_processors.clickhouse.rows import (
    alert_row,
    dead_letter_row,
    deleted_transitions,
    journey_row,
    merged_row,
    metric_row,
    ticket_rows,
    touchpoint_row,
    transition_rows,
)
from stream_processors.clickhouse.sink import ClickHouseSink
from stream_processors.commands import (
    WATERMARK_KEY,
    Command,
    Merge,
    MergeInto,
    Partial,
    Sweep,
    Touch,
    Watermark,
    decode_command,
    decode_partial,
    encode_command,
    encode_partial,
)
from stream_processors.contributions import (
    SCALES,
    answer_category,
    contributions_for,
    resolve_pending,
)
from stream_processors.cx_metrics import csat_satisfied, nps_category
from stream_processors.effects import Effects, Staged, unbundle
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
from stream_processors.windows import (
    WINDOWS,
    Contribution,
    LowWatermark,
    OpenWindows,
    WindowKey,
    WindowState,
    spec_named,
)

log = logging.getLogger(__name__)

registry = CollectorRegistry()
metrics = WorkerMetrics.create(registry)
sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, metrics,
                      max_retry_seconds=settings.sink_max_retry_seconds)
recovery.on_rebuild(lambda table, partition, reason:
                    metrics.state_rebuilds.labels(table, reason).inc())
for _table in ("devices", "journeys", "cx-partials", "cx-windows"):
    for _reason in ("ahead_of_changelog", "unreadable_store"):
        metrics.state_rebuilds.labels(_table, _reason)
SLA = timedelta(seconds=settings.first_response_sla_seconds)
INACTIVE_AFTER = (timedelta(days=settings.churn_inactive_days)
                  if settings.churn_inactive_days > 0 else None)
LATENESS = timedelta(seconds=settings.lateness_seconds)
BATCH, WITHIN = settings.sink_batch_size, settings.sink_flush_seconds
#: The hops that only re-key (no ClickHouse insert to amortise) pass a partial batch on
#: sooner: end-to-end latency is the sum of every stage's wait.
HOP_WITHIN = min(WITHIN, 0.1)
PARTITIONS = settings.topic_partitions

# ── topics ───────────────────────────────────────────────────────────────────
_raw = {"key_serializer": "raw", "value_serializer": "raw",
        "partitions": settings.topic_partitions}
touchpoints_topic = app.topic(settings.touchpoints_topic, **_raw)
by_device_topic = app.topic(settings.by_device_topic, **_raw)
journey_events_topic = app.topic(settings.journey_events_topic, **_raw)
dead_letters_topic = app.topic(settings.dead_letter_topic, **_raw)
alerts_topic = app.topic(settings.alerts_topic, **_raw)
cx_partials_topic = app.topic(settings.cx_partials_topic, **_raw)

# ── tables ───────────────────────────────────────────────────────────────────
# Keys and values are bytes. use_partitioner: a batch holds events of several
# partitions, so a changelog record must follow its key, not "the current event".
devices = app.Table("devices", partitions=settings.topic_partitions, key_type=bytes,
                    value_type=bytes, use_partitioner=True)
journeys = app.Table("journeys", partitions=settings.topic_partitions, key_type=bytes,
                     value_type=bytes, use_partitioner=True)
# A journey partition's open metric windows (key `<partition>|<metric>|<dimension>`) and
# its watermark (`<partition>|`). Not use_partitioner: each key belongs to the journey
# partition named in it, so its changelog goes to that partition (the carrier event's).
cx_partials = app.Table("cx-partials", partitions=settings.topic_partitions, key_type=bytes,
                        value_type=bytes)
# The aggregator's open windows (key `<partition>|<metric>|<dimension>|<shard>`: the
# latest partial of each journey partition, until final) and its watermark: the horizon
# of each journey partition.
cx_windows = app.Table("cx-windows", partitions=settings.topic_partitions, key_type=bytes,
                       value_type=bytes)
#: Event-time progress of the touchpoint partitions this worker reads (monotonic clock
#: of the last event, for idleness), and the last time their marks went out.
source_progress: dict[int, datetime] = {}
source_seen: dict[int, float] = {}
#: The offset after the last touchpoint this worker routed and committed, per partition.
source_done: dict[int, int] = {}
STARTED = time.monotonic()


# ── agents ───────────────────────────────────────────────────────────────────
def _effects() -> Effects:
    return Effects(sink.write, app.producer.flush)


@app.agent(touchpoints_topic)
async def route_by_device(stream: StreamT) -> None:
    async for events in stream.take_events(BATCH, within=HOP_WITHIN):
        out = _effects()
        now = utcnow()
        progress: dict[int, datetime] = {}
        to_devices = out.outbox(by_device_topic, PARTITIONS)
        to_journeys = out.outbox(journey_events_topic, PARTITIONS)
        for event in events:
            partition = event.message.partition
            source_seen[partition] = time.monotonic()
            try:
                tp = decode_touchpoint(event.value)
            except SchemaError as exc:
                _dead_letter(out, event, exc)
                continue
            if partition not in progress or tp.occurred_at > progress[partition]:
                progress[partition] = tp.occurred_at
            metrics.touchpoints_processed.labels(tp.type).inc()
            metrics.processing_lag_seconds.observe(max(0.0, (now - tp.occurred_at)
                                                       .total_seconds()))
            if tp.anonymous_id:
                to_devices.add(tp.anonymous_id.encode(), event.value)
            else:
                to_journeys.add(tp.key.encode(), encode_command(Touch(tp.customer_id,
                                                                      [event.value])))
        await out.commit()
        # Only now, after the events were acknowledged, may a marker say so. And quiet
        # counts from here: a batch still committing is not idle (the consumer's position
        # says fetched, not processed; measured: a 3 s wait on acks let the watermark
        # overtake buffered touchpoints, which then missed their windows).
        finished = time.monotonic()
        for event in events:
            source_seen[event.message.partition] = finished
            source_done[event.message.partition] = max(
                source_done.get(event.message.partition, 0), event.message.offset + 1)
        for partition, at in progress.items():
            if partition not in source_progress or at > source_progress[partition]:
                source_progress[partition] = at


@app.agent(by_device_topic)
async def resolve_identity(stream: StreamT) -> None:
    inputs: dict[int, LowWatermark] = {}  # per by-device partition: its sources' marks
    async for events in stream.take_events(BATCH, within=HOP_WITHIN):
        out = _effects()
        links = Staged(devices)
        marked: set[int] = set()
        to_journeys = out.outbox(journey_events_topic, PARTITIONS)
        for event in events:
            if event.key == WATERMARK_KEY:
                mark = decode_command(event.value)
                assert isinstance(mark, Watermark)
                partition = event.message.partition
                clock = inputs.setdefault(partition, LowWatermark(channels=PARTITIONS))
                clock.update(mark.channel, mark.at, mark.idle)
                marked.add(partition)
                continue
            for device, raw in unbundle(event):
                tp = decode_trusted(raw)
                linked = links.get(device)
                customer = tp.customer_id
                if customer:
                    if linked is None:  # first identification: the past comes along
                        to_journeys.add(f"anon:{tp.anonymous_id}".encode(),
                                        encode_command(MergeInto(customer)))
                    if linked != customer.encode():  # later anonymous visits follow the login
                        links.set(device, customer.encode(), event)
                elif linked is not None:
                    customer = linked.decode()
                key = customer or f"anon:{tp.anonymous_id}"
                to_journeys.add(key.encode(), encode_command(Touch(customer, [raw])))
        for partition in sorted(marked):  # after this batch's touchpoints
            clock = inputs[partition]
            _broadcast(out, journey_events_topic,
                       Watermark(f"d{partition}", clock.value, clock.idle))
        out.save(links)  # a link is saved once its MergeInto is acknowledged
        await out.commit()


@app.agent(journey_events_topic)
async def update_journey(stream: StreamT) -> None:
    async for events in stream.take_events(BATCH, within=WITHIN):
        await _update_journeys(events)


@app.agent(cx_partials_topic)
async def aggregate_cx(stream: StreamT) -> None:
    """Sum each metric window's partials over the journey partitions, into cx_metrics.

    Every journey partition also sends its horizon here; a window is final once all of
    them passed its end. Its final row is written and it leaves the table. The table
    holds a metric and dimension's open windows in a few entries (``_shard``), so a
    batch costs a few changelog records per metric and dimension it touched, not one
    per window. An open window's row is rewritten at most every
    JOURNEY_CX_UPDATE_SECONDS, however many partials changed it meanwhile.
    """
    async for events in stream.take_events(BATCH, within=WITHIN):
        out = _effects()
        table = Staged(cx_windows)
        now, version = utcnow(), _row_version()
        states: dict[bytes, AggregatorState] = {}
        carriers: dict[bytes, EventT] = {}
        clocks: dict[int, tuple[LowWatermark, EventT]] = {}
        for event in events:
            partition = event.message.partition
            clock, _ = clocks.get(partition) or (_aggregator_clock(table, partition), event)
            clocks[partition] = (clock, event)
            if event.key == WATERMARK_KEY:
                mark = decode_command(event.value)
                assert isinstance(mark, Watermark)
                clock.update(mark.channel, mark.at, mark.idle)
                continue
            for window_key, value in unbundle(event):
                metric, dimension, window = window_key.decode().split("|", 2)
                key = f"{partition}|{metric}|{dimension}|{_shard(window)}".encode()
                window_end = _window_end(window)
                if clock.value is not None and window_end <= clock.value:
                    metrics.cx_window_too_late.inc()  # a replay after a rebalance
                    continue
                state = states.get(key)
                if state is None:
                    state = states[key] = _load_aggregate(table, key)
                parts = state.get(window)
                if parts is None:  # a new window: schedule its closing
                    parts = state[window] = {}
                    heapq.heappush(_closing_for(partition), (window_end.timestamp(), key, window))
                partial = decode_partial(value)
                parts[partial.partition] = partial
                _shown.windows[partition].add((key, window))
                carriers[key] = event
        rows = out.rows["cx_metrics"]
        for partition, (clock, event) in clocks.items():
            horizon = clock.value
            table.set(_aggregator_clock_key(partition), msgspec.msgpack.encode(clock), event)
            if horizon is None:
                continue
            closing = _closing_for(partition)
            while closing and closing[0][0] <= horizon.timestamp():
                _, key, window = heapq.heappop(closing)
                state = states.get(key)
                if state is None:
                    state = states[key] = _load_aggregate(table, key)
                    carriers[key] = event
                parts = state.pop(window, None)
                if parts is not None:
                    rows.append(_metric_row(key, window, parts, True, version, now))
                _shown.windows[partition].discard((key, window))
        read: dict[bytes, AggregatorState] = {}  # unchanged: not written back
        for partition in list(_shown.windows):
            if not _shown.due(partition):
                continue
            for key, window in _shown.take(partition):
                state = states[key] if key in states else read.get(key)
                if state is None:
                    state = read[key] = _load_aggregate(table, key)
                if window in state:
                    rows.append(_metric_row(key, window, state[window], False, version, now))
        for key, state in states.items():
            if state:
                table.set(key, msgspec.msgpack.encode(state), carriers[key])
            elif table.get(key) is not None:
                table.delete(key, carriers[key])
        out.save(table)  # a window leaves the table once its final row is in ClickHouse
        await out.commit()


#: An aggregator's windows of one metric, dimension and shard: window (`<name>|<start>`)
#: → the latest part of each journey partition.
AggregatorState = dict[str, dict[int, Partial]]
#: Windows of one spec whose starts fall in the same span share a table entry: few
#: entries per metric and dimension, and each stays far below Kafka's 1 MB message
#: limit however far the watermark lags (a 6 h span holds 360 one-minute windows).
SHARD_SECONDS = {spec.name: int(max(spec.size, timedelta(hours=6)).total_seconds())
                 for spec in WINDOWS}


def _shard(window: str) -> str:
    name, start = window.split("|")
    return f"{name}@{int(start) // SHARD_SECONDS[name]}"


_aggregate_decoder = msgspec.msgpack.Decoder(AggregatorState)


def _load_aggregate(table: Staged, key: bytes) -> AggregatorState:
    stored = table.get(key)
    return _aggregate_decoder.decode(stored) if stored is not None else {}


def _metric_row(key: bytes, window: str, parts: dict[int, Partial], final: bool,
                version: int, now: datetime) -> tuple:
    _partition, metric, dimension, _span = key.decode().split("|")
    name, start_s = window.split("|")
    start = datetime.fromtimestamp(int(start_s), UTC)
    numerator = sum(p.numerator for p in parts.values())
    denominator = sum(p.denominator for p in parts.values())
    return metric_row(
        metric, dimension, name, start, start + spec_named(name).size,
        SCALES[metric] * numerator / denominator if denominator else None, numerator,
        denominator, sum(p.samples for p in parts.values()), final, version, now)


#: Per aggregator partition: (window end, table key, window) of its open windows,
#: soonest first. Built from the table when first needed, and forgotten on a rebalance,
#: so it always describes the table this worker holds.
_closing: dict[int, list[tuple[float, bytes, str]]] = {}


def _closing_for(partition: int) -> list[tuple[float, bytes, str]]:
    heap = _closing.get(partition)
    if heap is None:
        prefix = f"{partition}|".encode()
        heap = [(_window_end(window).timestamp(), key, window)
                for key, value in cx_windows.items()
                if key.startswith(prefix) and key.count(b"|") == 3
                for window in _aggregate_decoder.decode(value)]
        heapq.heapify(heap)
        _closing[partition] = heap
    return heap


@app.on_partitions_revoked.connect
async def _forget_closing(app: object, revoked: object, **kwargs: object) -> None:
    _closing.clear()
    _shown.clear()
    _dirty.clear()
    _next_end.clear()


@functools.lru_cache(maxsize=65536)
def _window_end(window: str) -> datetime:
    name, start_s = window.split("|")
    return datetime.fromtimestamp(int(start_s), UTC) + spec_named(name).size


def _aggregator_clock_key(partition: int) -> bytes:
    return WATERMARK_KEY + f"|{partition}".encode()


def _aggregator_clock(table: Staged, partition: int) -> LowWatermark:
    stored = table.get(_aggregator_clock_key(partition))
    if stored is None:  # inputs: the horizon of every journey partition
        return LowWatermark(channels=PARTITIONS)
    return msgspec.msgpack.decode(stored, type=LowWatermark)


@app.task
async def quiet_hot_path_logs() -> None:
    """Faust and aiokafka log every message sent at debug level; measured at about a
    tenth of the worker's time when enabled, so keep those two loggers at INFO or above.
    """
    for name in ("faust.topics", "aiokafka.producer.producer"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.INFO, logger.getEffectiveLevel()))


@app.timer(interval=settings.watermark_interval_seconds)
async def send_watermarks() -> None:
    """Each touchpoint partition's event-time progress, to every downstream partition.

    A partition is idle, and stops holding windows open, when it is caught up and has
    had no touchpoint for JOURNEY_WATERMARK_IDLE_SECONDS.
    """
    consumer = app.consumer
    out = _effects()
    for tp in consumer.assignment():
        if tp.topic != touchpoints_topic.get_topic_name():
            continue
        quiet = time.monotonic() - source_seen.get(tp.partition, STARTED)
        idle = False
        # Caught up only by a highwater that is fresh: while a rebalance or a pause stops
        # fetching, the last one stays equal to the position, and every partition looked
        # idle at once; the watermark then jumped to the furthest event seen (measured:
        # five weeks of CX windows closed early, their touchpoints all too late).
        # And caught up means processed: the fetch position runs ahead of it by whatever
        # Faust holds in its buffers (measured: a restarted worker's partitions looked
        # idle while the records it had just fetched still waited).
        if (quiet > settings.watermark_idle_seconds and not app.rebalancing
                and _fetched_within(tp, FRESH_FETCH_SECONDS)):
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # just revoked
                highwater = None
            done = max(source_done.get(tp.partition, 0),
                       consumer._committed_offset.get(tp) or 0)
            idle = highwater is not None and done >= highwater
        mark = Watermark(f"t{tp.partition}", source_progress.get(tp.partition), idle)
        _broadcast(out, by_device_topic, mark)
        _broadcast(out, journey_events_topic, mark)
    await out.commit()


#: How recent a fetch response must be for its highwater to tell that a partition is
#: caught up (the worker long-polls every JOURNEY_BROKER_FETCH_WAIT_SECONDS).
FRESH_FETCH_SECONDS = max(2.0, 10 * settings.broker_fetch_wait_seconds)


def _fetched_within(tp: Any, seconds: float) -> bool:
    """Whether the consumer heard from the broker about ``tp`` in the last ``seconds``."""
    try:
        # aiokafka knows when each partition's last fetch response came; Faust does not say.
        aio = app.consumer._thread._ensure_consumer()
        stamp = aio.last_poll_timestamp(TopicPartition(tp.topic, tp.partition))
    except Exception:  # not assigned (any more), or no fetch yet
        return False
    return stamp is not None and time.time() * 1000 - stamp <= seconds * 1000


#: How many journeys the sweep decodes before it lets the event loop run again.
SWEEP_CHUNK = 500


@app.timer(interval=settings.churn_sweep_seconds)
async def sweep_inactive() -> None:
    """Journeys that went quiet churn without a touchpoint to tell us: look for them.

    Sends each a ``Sweep`` command; ``update_journey`` folds it with today's clock and
    writes its rows, alerts and state like any update, so a crash or a restart neither
    loses the churn nor raises its alerts twice. Only this worker's active journey
    partitions are read, a chunk at a time, so the event loop keeps running.
    """
    if INACTIVE_AFTER is None:
        return
    mine = {tp.partition for tp in app.consumer.assignment()
            if tp.topic == journey_events_topic.get_topic_name()}
    now = utcnow()
    out = _effects()
    commands = out.outbox(journey_events_topic, PARTITIONS)
    sweep = encode_command(Sweep())
    found = 0
    keys = [k for k in list(journeys.keys()) if partition_for(k, PARTITIONS) in mine]
    for i, key in enumerate(keys):
        if i % SWEEP_CHUNK == SWEEP_CHUNK - 1:
            await asyncio.sleep(0)
        stored = journeys.get(key)
        if stored is None:
            continue
        journey_log = decode_log(stored)
        if (journey_log.merged_into or not journey_log.events
                or journey_log.swept_version == journey_log.version
                or now - journey_log.events[-1].at <= INACTIVE_AFTER):
            continue
        commands.add(key, sweep)
        found += 1
    if found:
        log.info("inactivity sweep: %d journeys to fold as churned", found)
        await out.commit()


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
    metrics.table_keys.labels("cx-partials").set(len(cx_partials))
    metrics.table_keys.labels("cx-windows").set(len(cx_windows))


# ── what the agents call ─────────────────────────────────────────────────────
def _broadcast(out: Effects, topic: Any, mark: Watermark) -> None:
    value = encode_command(mark)
    for partition in range(PARTITIONS):
        out.send(topic, WATERMARK_KEY, value, partition=partition)


def _raise(out: Effects, alerts: list[Alert]) -> None:
    for alert in alerts:
        metrics.alerts_raised.labels(alert.kind).inc()
        out.send(alerts_topic, alert.customer_id.encode(), msgspec.json.encode(alert))


async def _update_journeys(events: Sequence[EventT]) -> None:
    now, version = utcnow(), _row_version()
    out = _effects()
    stored = Staged(journeys)
    windows_table = Staged(cx_partials)
    logs: dict[bytes, JourneyLog] = {}
    fresh: dict[bytes, list[Touchpoint]] = defaultdict(list)
    fresh_offsets: dict[str, int] = {}  # event id → offset of the message that brought it
    rows = out.rows
    merges = out.outbox(journey_events_topic, PARTITIONS)
    carriers: dict[bytes, EventT] = {}
    counted: set[str] = set()
    partition_carriers: dict[int, EventT] = {}  # an event of each journey partition
    clocks: dict[int, LowWatermark] = {}

    def apply(key: bytes, command: Command, event: EventT) -> None:
        journey_log = logs.get(key) or _load(stored, key)
        logs[key] = journey_log
        carriers[key] = event
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
            fresh_offsets.update((event_id, event.message.offset) for event_id in new_ids)
        elif isinstance(command, Sweep):
            journey_log.swept_version = journey_log.version
        elif isinstance(command, MergeInto):
            if journey_log.merged_into or not journey_log.events:
                return
            merges.add(command.customer_id.encode(),
                       encode_command(Merge(msgspec.structs.replace(journey_log))))
            rows["customer_journeys"].append(merged_row(
                journey_log.key, command.customer_id, journey_log.anonymous_ids,
                journey_log.events[0].at, (journey_log.version + 1) * 2, now))
            # Every row it may have written, not only those its state counts: a crash
            # after a batch wrote them and before its state was saved left more (a fold
            # moves at most once per touchpoint, and once more for inactivity).
            rows["journey_transitions"] += deleted_transitions(
                journey_log.key, None, 0,
                max(journey_log.emitted_transitions, len(journey_log.events) + 1),
                journey_log.events[0].at, version)
            journey_log.merged_into = command.customer_id
            journey_log.events, journey_log.emitted_transitions = [], 0
            journey_log.version += 1
            fresh.pop(key, None)  # their rows are written under the customer instead
        elif isinstance(command, Merge):
            merge_logs(journey_log, command.log)
            # Every touchpoint the device journey held is written again under the
            # customer, even one the customer's journey already had (a duplicate routed
            # here after the link): the device journey may have written its row later,
            # and this merge comes after that journey's last write.
            fresh[key] += [decode_trusted(e.raw) for e in command.log.events if e.raw]
            counted.update(e.event_id for e in command.log.events)  # in the device journey

    for event in events:
        key: bytes = event.key
        partition = event.message.partition
        partition_carriers[partition] = event
        if key == WATERMARK_KEY:
            mark = decode_command(event.value)
            assert isinstance(mark, Watermark)
            if partition not in clocks:
                clocks[partition] = _load_clock(windows_table, partition)
            clocks[partition].update(mark.channel, mark.at, mark.idle)
            continue
        for key, value in unbundle(event):
            apply(key, decode_command(value), event)
    raised: list[Alert] = []
    contributions: dict[int, list[tuple[int, Contribution]]] = defaultdict(list)
    for key, journey_log in logs.items():
        carrier = carriers[key]
        if journey_log.events and not journey_log.merged_into:
            raised += _emit_journey(journey_log, fresh.get(key, []), rows, now, version, counted,
                                    contributions=contributions[carrier.message.partition],
                                    offsets=fresh_offsets, offset=carrier.message.offset)
        stored.set(key, encode_log(journey_log), carrier)
    _raise(out, raised)
    partials, horizons = _window_partials(windows_table, contributions, clocks,
                                          partition_carriers)
    parts = out.outbox(cx_partials_topic, PARTITIONS)  # after the rows they summarise
    for (key, _), partial in partials.items():  # a metric and dimension's to one place
        parts.add(key, encode_partial(partial), partition_key=key.rsplit(b"|", 2)[0])
    for partition, horizon in horizons.items():  # after the partials they close
        _broadcast(out, cx_partials_topic, Watermark(f"j{partition}", horizon))
    # The windows first: the journeys' known event ids are what keeps a replay from
    # contributing again, so they are saved only once the windows hold the contributions.
    out.save(windows_table)
    out.save(stored)
    await out.commit()


def _window_partials(table: Staged, contributions: dict[int, list[tuple[int, Contribution]]],
                     clocks: dict[int, LowWatermark],
                     carriers: dict[int, EventT],
                     ) -> tuple[dict[tuple[bytes, int], Partial], dict[int, datetime]]:
    """Apply a batch's contributions to each journey partition's open windows, and close
    those its watermark passed. Returns the partials to send (key: window and
    partition) and the partitions' horizons that moved.

    Each contribution comes with the offset of the message that brought it; an entry
    skips those at or below its ``applied_through`` (already in it: a replay).
    An open window's part goes out at most every JOURNEY_CX_UPDATE_SECONDS (a window
    touched by many batches is sent once), a closing window's last part at once.
    """
    out: dict[tuple[bytes, int], Partial] = {}
    horizons: dict[int, datetime] = {}
    for partition in sorted(set(clocks) | {p for p, cs in contributions.items() if cs}):
        clock = clocks.get(partition) or _load_clock(table, partition)
        dirty = _dirty.windows[partition]
        by_key: dict[tuple[str, str], list[tuple[int, Contribution]]] = defaultdict(list)
        for offset, c in contributions.get(partition, []):
            by_key[(c.metric, c.dimension)].append((offset, c))
        changed: dict[bytes, OpenWindows] = {}
        for (metric, dimension), items in by_key.items():
            table_key = f"{partition}|{metric}|{dimension}".encode()
            windows = changed[table_key] = _load_windows(table, table_key)
            done = windows.applied_through
            new = [c for offset, c in items if done is None or offset > done]
            windows.applied_through = max(offset for offset, _ in items)
            touched, too_late = windows.add(new, clock.horizon)
            metrics.cx_window_too_late.inc(too_late)
            dirty.update((table_key, window) for window in touched)
        prefix = f"{partition}|".encode()
        horizon = clock.advance(LATENESS)
        refresh = _dirty.due(partition)
        if horizon is not None or refresh:
            first = not _dirty.published(partition)  # since start: what was sent is unknown
            # The entries this batch created too: left for the next batch, their windows
            # would close after this horizon told the aggregator they had (measured: their
            # final parts arrived too late, and hundreds of windows never got a final row).
            for table_key in table.keys_with(prefix) | changed.keys():
                if table_key == prefix:
                    continue
                windows = changed.get(table_key)
                if windows is None:
                    next_end = _next_end.get(table_key, 0)  # 0: not known in this process
                    if not first and (horizon is None or next_end is None
                                      or next_end > horizon.timestamp()):
                        continue  # nothing of it to close: leave it undecoded
                    windows = _load_windows(table, table_key)
                if first:
                    dirty.update((table_key, window) for window in windows.open_windows())
                if horizon is None:
                    continue
                closed = windows.close(horizon)
                if closed:
                    changed[table_key] = windows
                for window, state in closed.items():
                    if (table_key, window) in dirty:
                        dirty.discard((table_key, window))
                        out[(_window_key(table_key, window), partition)] = _partial(
                            partition, state)
            if horizon is not None:
                horizons[partition] = horizon
        if refresh:
            read: dict[bytes, OpenWindows] = {}  # unchanged: not written back
            for table_key, window in _dirty.take(partition):
                windows = changed.get(table_key) or read.get(table_key)
                if windows is None:
                    windows = read[table_key] = _load_windows(table, table_key)
                out[(_window_key(table_key, window), partition)] = _partial(
                    partition, windows.get(window))
        if clock.value is not None:
            metrics.cx_watermark_seconds.labels(str(partition)).set(clock.value.timestamp())
        carrier = carriers[partition]
        for table_key, windows in changed.items():
            table.set(table_key, msgspec.msgpack.encode(windows), carrier)
            _next_end[table_key] = windows.next_end
        table.set(prefix, msgspec.msgpack.encode(clock), carrier)
    return out, horizons


class Changed:
    """Per partition, the open windows changed since they were last published, and when
    that was: a window that many batches change is published once per
    JOURNEY_CX_UPDATE_SECONDS. In memory: after a restart or a rebalance it starts empty.
    """

    def __init__(self) -> None:
        self.windows: dict[int, set[tuple[bytes, Any]]] = defaultdict(set)
        self._published_at: dict[int, float] = {}

    def published(self, partition: int) -> bool:
        """Whether this process has published the partition's windows yet."""
        return partition in self._published_at

    def due(self, partition: int) -> bool:
        last = self._published_at.get(partition)
        return last is None or time.monotonic() - last >= settings.cx_update_seconds

    def take(self, partition: int) -> set[tuple[bytes, Any]]:
        """The changed windows, to publish now; the partition starts afresh."""
        self._published_at[partition] = time.monotonic()
        return self.windows.pop(partition, set())

    def clear(self) -> None:
        self.windows.clear()
        self._published_at.clear()


#: The journey partitions' windows (table key, window) whose parts are to be sent. After
#: a restart or a rebalance every open window is sent once again (the aggregator keeps
#: the latest part, so repeats are harmless).
_dirty = Changed()
#: The aggregator partitions' windows (table key, window) whose rows are to be written.
_shown = Changed()
#: When the soonest open window of each `cx-partials` key ends (None: none open), so a
#: key with nothing to close is not decoded; filled as keys are written.
_next_end: dict[bytes, int | None] = {}


@functools.lru_cache(maxsize=65536)
def _window_key(table_key: bytes, window: WindowKey) -> bytes:
    """The aggregator's key of a window: metric|dimension|window|start."""
    _partition, _, metric_dimension = table_key.partition(b"|")
    return metric_dimension + f"|{window[0]}|{int(window[1].timestamp())}".encode()


def _partial(partition: int, state: WindowState) -> Partial:
    return Partial(partition, state.numerator, state.denominator, state.samples)


def _load_windows(table: Staged, table_key: bytes) -> OpenWindows:
    stored = table.get(table_key)
    return msgspec.msgpack.decode(stored, type=OpenWindows) if stored else OpenWindows()


def _load_clock(table: Staged, partition: int) -> LowWatermark:
    stored = table.get(f"{partition}|".encode())
    if stored is None:  # inputs: every touchpoint partition and every by-device partition
        return LowWatermark(channels=2 * PARTITIONS)
    return msgspec.msgpack.decode(stored, type=LowWatermark)


def _emit_journey(journey_log: JourneyLog, fresh: list[Touchpoint], rows: dict[str, list],
                  now: datetime, version: int, counted: set[str],
                  contributions: list[tuple[int, Contribution]], offsets: Mapping[str, int],
                  offset: int) -> list[Alert]:
    """Rows for a journey that changed; returns the alerts it raises for the first time.

    ``contributions`` collects what the journey's new touchpoints add to CX windows,
    each with the offset of the message that brought its touchpoint (``offsets`` by
    event id; ``offset``, the journey's last message of the batch, for answers whose
    rated thing arrived now).
    """
    j = fold(journey_log, inactive_after=INACTIVE_AFTER, now=now)
    new = [(offset, c) for c in resolve_pending(j, journey_log)]
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
        if tp.event_id not in counted:
            _count_cx(tp, j)
            brought_by = offsets.get(tp.event_id, offset)
            new += [(brought_by, c) for c in contributions_for(event_of(tp), j, journey_log)]
    contributions += new
    for _, c in new:
        if c.dimension.startswith("rated="):
            metrics.cx_rated_responses.labels(c.metric, answer_category(c),
                                              c.dimension[6:]).inc()
    journey_log.emitted_transitions = len(j.transitions)
    if journey_log.customer_id:  # identified: its events never move again
        journey_log.events = [msgspec.structs.replace(e, raw=b"") if e.raw else e
                              for e in journey_log.events]
    raised = [a for a in alerts_for(journey_log, j, now=now, first_response_sla=SLA,
                                    churn_risk_threshold=settings.churn_risk_alert)
              if a.alert_id not in journey_log.alerts_raised]
    journey_log.alerts_raised += [a.alert_id for a in raised]
    rows["journey_alerts"] += [alert_row(a, now) for a in raised]
    return raised


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


def _load(table: Staged, key: bytes) -> JourneyLog:
    stored = table.get(key)
    if stored is not None:
        return decode_log(stored)
    text = key.decode()
    return JourneyLog(key=text, customer_id=None if text.startswith("anon:") else text)


def _dead_letter(out: Effects, event: EventT, exc: SchemaError) -> None:
    message = event.message
    raw: bytes = event.value
    metrics.dead_letters.labels(exc.reason).inc()
    log.warning("dead letter %s[%d]@%d: %s", message.topic, message.partition, message.offset,
                exc)
    out.send(dead_letters_topic, message.key, msgspec.json.encode({
        "reason": exc.reason, "field": exc.field, "error": exc.detail, "topic": message.topic,
        "partition": message.partition, "offset": message.offset,
        "payload": raw.decode("utf-8", errors="replace")}))
    out.rows["dead_letters"].append(dead_letter_row(
        utcnow(), message.topic, message.partition, message.offset, exc.reason, exc.field,
        exc.detail, raw))


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
