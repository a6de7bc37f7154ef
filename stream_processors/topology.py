"""The stream topology, top to bottom: validate → resolve identity → update journey → emit.

    <prefix>.touchpoints
        │  route_by_device (stages/routing.py): validate; invalid → dead letters
        ├──── anonymous ───────────► <prefix>.touchpoints-by-device (key: device)
        │     (an identify with a       │  resolve_identity (stages/identity.py):
        │      device: a Link too)      │  `devices` table (device → customer); the first
        │                               │  link of a device merges its anonymous journey
        └──── identified ────────┐      │
                                 ▼      ▼
                          <prefix>.journey-events (key: customer, or anon:<device>)
                                 │  update_journey (stages/journeys.py): `journeys` table
                                 │  (each journey's touchpoints); fold; rows and alerts;
                                 │  the partition's CX windows (stages/partials.py)
                                 ▼
        ClickHouse: touchpoints, customer_journeys, journey_transitions, support_tickets
                                 │
                          <prefix>.cx-partials (key: metric|dimension)
                                 │  aggregate_cx (stages/aggregator.py): `cx-windows`
                                 ▼
        ClickHouse: cx_metrics (open windows as they fill, then the final value)

    <prefix>.dead-letters ── record_rejects (stages/rejects.py): the collector's
        rejects → ClickHouse: dead_letters (the worker writes its own letters' rows)

This file only wires: topics, tables, one stage object per hop, agents that feed a
stage a batch and commit what it returns, and timers. The stages hold the logic and
are unit-tested without Faust (tests/unit/test_stages.py).

**Crash safety.** A stage reads and writes its tables through ``Staged`` stores and
returns an ``Output``; ``Committer.commit`` applies it in the one safe order: rows into
ClickHouse, messages acknowledged by the broker, then table writes (a guarded table
before the table that guards it), so state that marks work as done is saved only after
the effects it guards are durable (stream_processors/effects.py). The batch's offsets
are committed by Faust after that. The inactivity sweep sends ``Sweep`` commands
rather than writing rows itself, so its rows, alerts and churn go the same way.

**Event time.** Windows close by watermark: each touchpoint partition's progress goes
downstream as markers (``send_watermarks``), each hop forwards the minimum over its
inputs (stream_processors/windows.py says why the max event time seen would not do).

**Bundles.** The internal hops carry one message per partition and batch holding many
keyed commands, partitioned as Kafka would partition each key alone: tables stay
co-partitioned while Faust's and the broker's per-message cost is paid per bundle.

**Backpressure.** The router routes a touchpoint far faster than the stages behind it
take one in; with JOURNEY_ROUTER_MAX_AHEAD set, on a backlog it stops taking
touchpoints while an internal partition of this worker has more than that many records
waiting (``hold_back_router``, stream_processors/backpressure.py).

Each agent reads batches bounded by size *and* time. Identity lives with the device's
partition and a journey with its own, so results do not depend on how partitions are
spread over workers; what a stage keeps in memory is per partition, made on
assignment and dropped on revocation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import msgspec
from aiokafka import TopicPartition
from faust.types import EventT, StreamT
from faust.web import Request, Response, Web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schemas import decode_trusted, utcnow
from schemas.partitioning import partition_for
from stream_processors import consumer, logs, recovery
from stream_processors.app import app, settings
from stream_processors.backpressure import Backlog, Gate
from stream_processors.batches import BatchRunner, parts
from stream_processors.clickhouse.client import connect
from stream_processors.clickhouse.client import enforce_retention as clickhouse_retention
from stream_processors.clickhouse.rows import COLUMNS
from stream_processors.clickhouse.sink import ClickHouseSink
from stream_processors.commands import (
    Command,
    Expire,
    Touch,
    decode_command,
    decode_partial,
    encode_command,
)
from stream_processors.effects import (
    ALERTS,
    BY_DEVICE,
    CX_PARTIALS,
    DEAD_LETTERS,
    JOURNEY_EVENTS,
    Committer,
    Message,
    Output,
    Staged,
    decode_batch,
    named_partition,
    unbundle,
)
from stream_processors.journey import ALERT_KINDS, decode_log
from stream_processors.malloc import trim_malloc
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages import (
    Aggregator,
    CollectorRejects,
    IdentityResolver,
    JourneyUpdater,
    PartitionWindows,
    Router,
)

log = logging.getLogger(__name__)

registry = CollectorRegistry()
metrics = WorkerMetrics.create(registry)
sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, metrics,
                      max_retry_seconds=settings.sink_max_retry_seconds,
                      stopping=lambda: app.should_stop)
recovery.on_rebuild(lambda table, partition, reason:
                    metrics.state_rebuilds.labels(table, reason).inc())
# Every known label set from the start, at zero: a dashboard's rate() then shows 0
# rather than no data, and the first increase is not lost to extrapolation.
for _name in COLUMNS:
    metrics.sink_failures.labels(_name)
    metrics.sink_rejected_rows.labels(_name)
for _kind in ALERT_KINDS:
    metrics.alerts_raised.labels(_kind)
for _stage in ("by-device", "journey"):
    metrics.suppressed_touchpoints.labels(_stage)
PARTITIONS = settings.topic_partitions
BATCH, WITHIN = settings.sink_batch_size, settings.sink_flush_seconds
MOST_MESSAGES = settings.stage_batch_messages
#: The hops that only re-key (no ClickHouse insert to amortise) pass a partial batch on
#: sooner: end-to-end latency is the sum of every stage's wait.
HOP_WITHIN = min(WITHIN, 0.05)

# ── topics ───────────────────────────────────────────────────────────────────
_raw = {"key_serializer": "raw", "value_serializer": "raw", "partitions": PARTITIONS}
touchpoints_topic = app.topic(settings.touchpoints_topic, **_raw)
by_device_topic = app.topic(settings.by_device_topic, **_raw)
journey_events_topic = app.topic(settings.journey_events_topic, **_raw)
cx_partials_topic = app.topic(settings.cx_partials_topic, **_raw)
dead_letters_topic = app.topic(settings.dead_letter_topic, **_raw)
alerts_topic = app.topic(settings.alerts_topic, **_raw)

# ── tables ───────────────────────────────────────────────────────────────────
# Keys and values are bytes. use_partitioner: a changelog record follows its key (each
# key's partition is the one its topic's messages go to).
def _table(name: str, **kwargs: Any) -> Any:
    """A table of bytes; RocksDB's memory per partition database as configured."""
    return app.Table(name, partitions=PARTITIONS, key_type=bytes, value_type=bytes,
                     options=settings.table_options, **kwargs)



devices = _table("devices", use_partitioner=True)
journeys = _table("journeys", use_partitioner=True)
# Keys `<partition>|...`: each belongs to the partition it names (stages/partials.py and
# stages/aggregator.py give the layout); its changelog goes to that partition.
cx_partials = _table("cx-partials")
cx_windows = _table("cx-windows")
# Forgotten ids (hashed) per partition of each stage, keys `<partition>|<hash>`
# (stream_processors/suppression.py).
device_suppressions = _table("device-suppressions")
journey_suppressions = _table("journey-suppressions")
TABLES = (devices, journeys, cx_partials, cx_windows, device_suppressions, journey_suppressions)
for _each in TABLES:
    for _reason in ("ahead_of_changelog", "unreadable_store"):
        metrics.state_rebuilds.labels(_each.name, _reason)

# ── stages ───────────────────────────────────────────────────────────────────
router = Router(metrics, PARTITIONS, settings.touchpoints_topic, settings.time_bounds,
                redaction=settings.redaction)
identity = IdentityResolver(PARTITIONS, settings.device_retention,
                            privacy_key=settings.privacy_key, metrics=metrics)
journey_updater = JourneyUpdater(
    metrics, PARTITIONS,
    PartitionWindows(metrics, PARTITIONS, settings.lateness, settings.cx_update_seconds,
                     revision=settings.cx_revision,
                     windows_per_batch=settings.cx_windows_per_batch),
    lateness=settings.lateness, first_response_sla=settings.first_response_sla,
    inactive_after=settings.churn_inactive_after, churn_risk_alert=settings.churn_risk_alert,
    anonymous_retention=settings.anonymous_retention,
    merged_retention=settings.merged_retention, privacy_key=settings.privacy_key,
    tail=settings.tail, tail_touchpoints=settings.tail_touchpoints,
    compress=settings.compress_journeys, compress_up_to=settings.compress_up_to_bytes)
aggregator = Aggregator(metrics, PARTITIONS, settings.cx_update_seconds,
                        revision=settings.cx_revision,
                        rows_per_batch=settings.cx_windows_per_batch)
rejects = CollectorRejects(PARTITIONS)
#: The internal partitions' records not yet through their stages, which the router may
#: run only so far ahead of (stream_processors/backpressure.py).
backlog = Backlog()
committer = Committer(sink.write, {
    BY_DEVICE: by_device_topic, JOURNEY_EVENTS: journey_events_topic,
    CX_PARTIALS: cx_partials_topic, DEAD_LETTERS: dead_letters_topic, ALERTS: alerts_topic},
    on_sent=backlog.acknowledged)
runner = BatchRunner(committer, metrics, PARTITIONS)
router_gate = Gate(settings.router_max_ahead) if settings.router_max_ahead else None
consumer.COMMIT_LIMITS[touchpoints_topic.get_topic_name()] = router.commit_limit


# ── agents ───────────────────────────────────────────────────────────────────
# Each feeds its stage a batch and commits the output; ``runner`` keeps a failure from
# losing the batch (stream_processors/batches.py). A stage gets fresh staged tables on
# every call, as a failed batch is applied again message by message.
_continuities: list[consumer.Continuity] = []  # one per agent


async def _batches(stream: StreamT, within: float,
                   open_: Callable[[Sequence[EventT]], list[Message]],
                   internal: bool = True,
                   ) -> AsyncIterator[tuple[list[EventT], list[Message]]]:
    """Batches bounded by size and time, of this generation's events only: an event
    fetched before a rebalance is left to its partition's owner, to read again
    (consumer.disown_stale says why acknowledging it would lose others); and without a
    hole: a partition whose records Faust passed over is read again from there
    (consumer.Continuity). Each comes with its messages (``open_``), at most
    JOURNEY_STAGE_BATCH_MESSAGES of them: Faust's batch is applied in runs of whole
    records (batches.parts says why). An ``internal`` topic's runs, once through, count
    off its backlog."""
    continuity = consumer.Continuity()
    _continuities.append(continuity)
    async for events in stream.take_events(BATCH, within=within):
        fresh = await continuity.check(app, consumer.disown_stale(app, events))
        for run, messages in parts(fresh, open_, MOST_MESSAGES):
            still = consumer.disown_stale(app, run)  # a rebalance came during a run
            if len(still) != len(run):
                run, messages = still, open_(still)
            if run:
                yield run, messages
                if internal:
                    backlog.through(run)
        consumer.disown_stale(app, fresh)  # a rebalance came during the batch


@app.agent(touchpoints_topic)
async def route_by_device(stream: StreamT) -> None:
    async for _events, batch in _batches(stream, HOP_WITHIN, _raw, internal=False):
        await runner.run("route_by_device", touchpoints_topic.get_topic_name(), batch,
                         lambda b: router.route(b, utcnow()))


@app.agent(by_device_topic)
async def resolve_identity(stream: StreamT) -> None:
    async for events, batch in _batches(stream, HOP_WITHIN, _unbundled):
        await runner.run(
            "resolve_identity", by_device_topic.get_topic_name(), batch,
            lambda b, e=events: identity.resolve(
                decode_batch(b, _by_device), _staged(devices, e, _key_partition), utcnow(),
                _staged(device_suppressions, e, named_partition)),
            forget=identity.suppression.known.clear)


@app.agent(journey_events_topic)
async def update_journey(stream: StreamT) -> None:
    async for events, batch in _batches(stream, WITHIN, _unbundled):
        await runner.run(
            "update_journey", journey_events_topic.get_topic_name(), batch,
            lambda b, e=events: journey_updater.update(
                decode_batch(b, decode_command), _staged(journeys, e, _key_partition),
                _staged(cx_partials, e, named_partition), utcnow(), _row_version(),
                _staged(journey_suppressions, e, named_partition)),
            forget=_forgetting(journey_updater.windows.held,
                               journey_updater.suppression.known, journey_updater.decoded))


@app.agent(cx_partials_topic)
async def aggregate_cx(stream: StreamT) -> None:
    async for events, batch in _batches(stream, WITHIN, _unbundled):
        await runner.run(
            "aggregate_cx", cx_partials_topic.get_topic_name(), batch,
            lambda b, e=events: aggregator.aggregate(
                decode_batch(b, decode_partial), _staged(cx_windows, e, named_partition),
                utcnow(), _row_version()),
            forget=aggregator.held.clear)


@app.agent(dead_letters_topic)
async def record_rejects(stream: StreamT) -> None:
    async for _events, batch in _batches(stream, WITHIN, _raw, internal=False):
        await runner.run("record_rejects", dead_letters_topic.get_topic_name(), batch,
                         lambda b: rejects.record(b, utcnow()))


def _forgetting(*held: Any) -> Callable[[], None]:
    """What a failed batch makes a stage forget: each of ``held`` is read again."""
    def forget() -> None:
        for memory in held:
            memory.clear()
    return forget


# ── partitions come and go ───────────────────────────────────────────────────
_HELD_BY = ((touchpoints_topic, router.sources), (by_device_topic, identity.inputs),
            (by_device_topic, identity.suppression.known),
            (journey_events_topic, journey_updater.windows.held),
            (journey_events_topic, journey_updater.suppression.known),
            (journey_events_topic, journey_updater.decoded),
            (cx_partials_topic, aggregator.held))


@app.on_partitions_assigned.connect
async def _assigned(app: object, assigned: Iterable[Any], **kwargs: object) -> None:
    for topic, held in _HELD_BY:
        held.assign(tp.partition for tp in assigned if tp.topic == topic.get_topic_name())


@app.on_partitions_revoked.connect
async def _revoked(app: object, revoked: Iterable[Any], **kwargs: object) -> None:
    for topic, held in _HELD_BY:
        held.revoke(tp.partition for tp in revoked if tp.topic == topic.get_topic_name())
    backlog.forget((tp.topic, tp.partition) for tp in revoked)


# ── timers ───────────────────────────────────────────────────────────────────
@app.task
async def quiet_logs() -> None:
    """Faust and aiokafka log every message sent at debug level; measured at about a
    tenth of the worker's time when enabled, so keep those two loggers at INFO or above.
    And a broker outage is one line per kind of failure every 10 s, naming the setting
    (stream_processors/logs.py); installed here, once Faust has set up logging."""
    for name in ("faust.topics", "aiokafka.producer.producer"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.INFO, logger.getEffectiveLevel()))
    logs.quiet_outages(settings.bootstrap_servers)


@app.timer(interval=0.1)
async def hold_back_router() -> None:
    """Pause the router's partitions while an internal partition of this worker is more
    than JOURNEY_ROUTER_MAX_AHEAD records behind; resume them at half that. Made again
    at every check while it holds: a rebalance unpauses every partition it gives."""
    if app.rebalancing or app.in_recovery:
        return
    internal = [(topic.get_topic_name(), partition)
                for topic in (by_device_topic, journey_events_topic, cx_partials_topic)
                for partition in _assigned_partitions(topic)]
    start = {}
    for topic, partition in backlog.unknown(internal):
        position = consumer.position(app, TopicPartition(topic, partition))
        if position is not None:
            start[(topic, partition)] = position
    behind = backlog.most_behind(
        internal, lambda topic, partition: consumer.highwater(
            app, TopicPartition(topic, partition)), start)
    metrics.backlog_records.set(behind)
    if router_gate is None:
        return
    change = router_gate.update(behind)
    if router_gate.closed or change is False:
        tps = [TopicPartition(touchpoints_topic.get_topic_name(), partition)
               for partition in _assigned_partitions(touchpoints_topic)]
        await consumer.pause_fetching(app, tps, router_gate.closed)
        if change:
            metrics.router_pauses.inc()


@app.timer(interval=1.0)
async def refill_holes() -> None:
    """Read again records Faust passed over, where no later record showed the hole yet
    (consumer.Continuity)."""
    for continuity in _continuities:
        await continuity.reseek(app)


@app.timer(interval=settings.watermark_interval_seconds)
async def send_watermarks() -> None:
    """Each touchpoint partition's event-time progress, to every downstream partition."""
    out = Output(PARTITIONS)
    mine = _assigned_partitions(touchpoints_topic)
    marks, covered = router.watermarks(mine, settings.watermark_idle_seconds, _caught_up)
    for mark in marks:
        out.mark(BY_DEVICE, mark)
        out.mark(JOURNEY_EVENTS, mark)
    await committer.commit(out)
    router.marked(covered)  # their offsets may be committed now (Router.commit_limit)


@app.timer(interval=1.0)
async def tick_aggregator() -> None:
    """The aggregator writes open windows' rows inside a batch, at most every
    JOURNEY_CX_UPDATE_SECONDS; parts that came in between wait for the next batch, and
    once traffic stops nothing else would bring one (the journey stage sends horizons
    only when they move). So each of this worker's cx-partials partitions with rows due
    gets a ``Tick``: a batch of its own, through the same crash-safe path. (A batch that
    stops at JOURNEY_CX_WINDOWS_PER_BATCH sends its own; this one covers a lost one.)"""
    out = Output(PARTITIONS)
    aggregator.tick(out, _assigned_partitions(cx_partials_topic))
    if out.messages:
        await committer.commit(out)


@app.timer(interval=settings.churn_sweep_seconds)
async def sweep() -> None:
    """What changes with time alone, with no touchpoint to say so: journeys that went
    quiet churn (``Sweep``), and state past its retention goes (``Expire``: anonymous
    and merged device journeys, device links).

    Each is a command to the key's own partition, applied like any update, so a crash
    neither loses it nor repeats its effects. Only this worker's partitions are read,
    a chunk at a time, so the event loop keeps running.
    """
    now = utcnow()
    out = Output(PARTITIONS)
    journeys_due = links_due = 0
    if journey_updater.changes_with_time:
        async for key, stored in _mine(journeys, journey_events_topic):
            command = journey_updater.due(decode_log(stored), now)
            if command is not None:
                out.add(JOURNEY_EVENTS, key, encode_command(command))
                journeys_due += 1
    if identity.retention is not None:
        expire = encode_command(Expire())
        async for key, stored in _mine(devices, by_device_topic):
            if identity.past_retention(stored, now):
                out.add(BY_DEVICE, key, expire)
                links_due += 1
    if journeys_due or links_due:
        log.info("sweep: %d journeys to fold or forget, %d device links to forget",
                 journeys_due, links_due)
        await committer.commit(out)


async def _mine(table: Any, topic: Any) -> AsyncIterator[tuple[bytes, bytes]]:
    """The table's entries in this worker's partitions of ``topic``, yielding to the
    event loop every SWEEP_CHUNK keys."""
    mine = set(_assigned_partitions(topic))
    keys = [k for k in list(table.keys()) if partition_for(k, PARTITIONS) in mine]
    for i, key in enumerate(keys):
        if i % SWEEP_CHUNK == SWEEP_CHUNK - 1:
            await asyncio.sleep(0)
        stored = table.get(key)
        if stored is not None:
            yield key, stored


#: How many entries the sweep reads before it lets the event loop run again.
SWEEP_CHUNK = 500


@app.timer(interval=3600.0)
async def enforce_retention() -> None:
    """Touchpoints and dead letters past their retention leave ClickHouse (a TTL does
    it on 23.8+; on 18.16, a deletion). One worker runs it: the one holding the first
    touchpoint partition."""
    if 0 in _assigned_partitions(touchpoints_topic):
        await asyncio.to_thread(_enforce_retention)


def _enforce_retention() -> None:
    client = connect(settings.clickhouse_url, database=settings.clickhouse_database)
    try:
        clickhouse_retention(client, settings.clickhouse_database, settings.retention_days,
                             settings.clickhouse_cluster or None)
    except Exception as exc:
        log.warning("retention: ClickHouse deletion failed (%s); trying again in an hour", exc)
    finally:
        client.disconnect()


async def trim_memory() -> None:
    """Free heap pages back to the system (stream_processors/malloc.py), every
    JOURNEY_MALLOC_TRIM_SECONDS: a worker that worked through a backlog keeps no more
    than its state needs once it is done."""
    trim_malloc()


if settings.malloc_trim_seconds > 0:
    app.timer(interval=settings.malloc_trim_seconds)(trim_memory)


@app.timer(interval=5.0)
async def observe_lag() -> None:
    """Consumer lag per assigned partition and table sizes, for ops."""
    lags = await consumer.lag(app)
    metrics.consumer_lag.clear()  # partitions move between workers on rebalance
    for topic, partition, behind in lags:
        metrics.consumer_lag.labels(topic, str(partition)).set(behind)
    for table in TABLES:
        metrics.table_keys.labels(table.name).set(len(table))


# ── what the agents and timers call ──────────────────────────────────────────
def _raw(events: Sequence[EventT]) -> list[Message]:
    """The batch's messages as they are (inputs written one record per event)."""
    return [Message(e.message.partition, e.message.offset, e.key, e.value) for e in events]


def _unbundled(events: Sequence[EventT]) -> list[Message]:
    """The batch's messages, bundles opened; values still encoded. A bundle that does not
    open stays one message, so that decoding it fails and sends it to the dead letters."""
    out = []
    for e in events:
        partition, offset = e.message.partition, e.message.offset
        try:
            items = unbundle(e.key, e.value)
        except msgspec.DecodeError:
            items = [(e.key, e.value)]
        out += [Message(partition, offset, key, value) for key, value in items]
    return out


def _by_device(value: bytes) -> Command:
    """A by-device command; a bare touchpoint is the format before ``Link`` (in flight
    across an upgrade): the identity stage takes it the way it did then."""
    if value[:1] == b"{":
        return Touch(decode_trusted(value).customer_id, [value])
    return decode_command(value)


def _staged(table: Any, events: Sequence[EventT], partition_of: Callable[[bytes], int],
            ) -> Staged:
    """``table`` for one batch; a key's write is made as if by an event of its partition."""
    carriers = {event.message.partition: event for event in events}
    return Staged(table, lambda key: carriers[partition_of(key)])


def _key_partition(key: bytes) -> int:
    return partition_for(key, PARTITIONS)


def _assigned_partitions(topic: Any) -> list[int]:
    name = topic.get_topic_name()
    return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == name)


def _caught_up(partition: int, done: int) -> bool:
    tp = TopicPartition(touchpoints_topic.get_topic_name(), partition)
    return consumer.caught_up(app, tp, done, FRESH_FETCH_SECONDS)


#: How recent a fetch response must be for its highwater to tell that a partition is
#: caught up (the worker long-polls every JOURNEY_BROKER_FETCH_WAIT_SECONDS).
FRESH_FETCH_SECONDS = max(2.0, 10 * settings.broker_fetch_wait_seconds)


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


@app.page("/readyz")
async def readyz(web: Web, request: Request) -> Response:
    """Consuming: the worker holds partitions and no rebalance or recovery is under way
    (``/healthz`` only says the process answers). ``journey up`` waits for this."""
    assignment = app.consumer.assignment() if app.consumer else set()
    ready = bool(assignment) and not app.rebalancing
    # The input partitions it owns, by which `journey status` tells whether the group as
    # a whole owns every partition exactly once.
    inputs = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.inputs(app))
    return web.json({"ready": ready, "partitions": len(assignment), "inputs": inputs},
                    status=200 if ready else 503)
