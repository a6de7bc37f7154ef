"""Every stage in one process, with no broker and no ClickHouse: CPU seconds per stage.

    python -m tests.benchmarks.stages                      # 50,000 customers
    python -m tests.benchmarks.stages --customers 2000     # a quick look

The simulator's touchpoints (the full bench's workload) go through the real stages:
router, identity, journey with its CX windows, and aggregator. Each is applied the way
the worker applies it: bundles opened, commands decoded, tables read and written as
dicts. Each topic partition is a queue, and each pass takes up to a batch of records
from every stage's input.

What this measures:
- only the stages' own calls (process CPU time);
- decoding and bundling, timed apart;
- on top of this, the full bench (python -m tests.benchmarks) measures Faust, Kafka and
  ClickHouse.

Why it exists: the full bench's throughput moves by 5-10 % between runs of the same
code, and a stage's share of the worker is less than that. This bench is deterministic:
a fake clock that moves a fixed step per pass. So a change to one stage can be judged
on its own here.

What it prints: the CPU seconds per stage, the messages and rows each made, and a digest
of every CX window's final value, which a change made for speed must leave as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry

from schemas import utcnow
from schemas.partitioning import partition_for
from schemas.settings import Settings
from stream_processors.commands import (
    BUNDLE_KEY,
    decode_command,
    decode_partial,
    encode_bundle,
)
from stream_processors.effects import (
    BY_DEVICE,
    CX_PARTIALS,
    JOURNEY_EVENTS,
    Message,
    Outbox,
    Output,
    decode_batch,
    unbundle,
)
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages import (
    Aggregator,
    IdentityResolver,
    JourneyUpdater,
    PartitionWindows,
    Router,
)
from stream_processors.worker import tune_gc
from tests.benchmarks.harness import make_workload

TOUCHPOINTS = "touchpoints"
STAGES = ("router", "identity", "journey", "aggregator")
#: What each stage reads.
INPUT = {"router": TOUCHPOINTS, "identity": BY_DEVICE, "journey": JOURNEY_EVENTS,
         "aggregator": CX_PARTIALS}


class Pipeline:
    """The stages, their tables as dicts and their topics as queues of records."""

    def __init__(self, settings: Settings, seconds_per_pass: float, started: datetime,
                 ) -> None:
        self.settings = settings
        self.partitions = p = settings.topic_partitions
        self.step = seconds_per_pass
        self.clock = 0.0  # what the stages see as time.monotonic()
        self.started = started  # what the stages see as now, at clock 0
        metrics = WorkerMetrics.create(CollectorRegistry())
        tick: Callable[[], float] = lambda: self.clock  # noqa: E731
        self.router = Router(metrics, p, TOUCHPOINTS, settings.time_bounds, clock=tick,
                             redaction=settings.redaction)
        self.identity = IdentityResolver(p, settings.device_retention,
                                         privacy_key=settings.privacy_key, metrics=metrics)
        windows = PartitionWindows(metrics, p, settings.lateness, settings.cx_update_seconds,
                                   clock=tick, revision=settings.cx_revision,
                                   windows_per_batch=settings.cx_windows_per_batch)
        self.journey = JourneyUpdater(
            metrics, p, windows, lateness=settings.lateness,
            first_response_sla=settings.first_response_sla,
            inactive_after=settings.churn_inactive_after,
            churn_risk_alert=settings.churn_risk_alert,
            anonymous_retention=settings.anonymous_retention,
            merged_retention=settings.merged_retention, privacy_key=settings.privacy_key,
            tail=settings.tail, tail_touchpoints=settings.tail_touchpoints,
            compress=settings.compress_journeys,
            compress_up_to=settings.compress_up_to_bytes)
        self.aggregator = Aggregator(metrics, p, settings.cx_update_seconds, clock=tick,
                                     revision=settings.cx_revision,
                                     rows_per_batch=settings.cx_windows_per_batch)
        self.tables: dict[str, dict[bytes, bytes]] = {
            name: {} for name in ("devices", "device-suppressions", "journeys",
                                  "journey-suppressions", "cx-partials", "cx-windows")}
        #: (topic, partition) → records (key, value) not yet read; offsets go on.
        self.queues: dict[tuple[str, int], deque[tuple[int, bytes, bytes]]] = {
            (topic, n): deque() for topic in INPUT.values() for n in range(p)}
        self.offsets: Counter[tuple[str, int]] = Counter()
        self.turn: Counter[str] = Counter()  # the partition each topic's next batch starts at
        self.sizes: Counter[int] = Counter()  # touchpoints per input partition
        self.cpu: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        #: (metric, dimension, window, start) → the latest cx_metrics row's values.
        self.windows: dict[tuple, tuple] = {}
        #: Whether the last marks the router sent said every source is idle.
        self.idle_sent = False

    def now(self) -> datetime:
        return self.started + timedelta(seconds=self.clock)

    def put(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """Queue a record for the stage that reads ``topic`` (alerts and dead letters:
        none here)."""
        queue = (topic, partition)
        if queue not in self.queues:
            return
        self.queues[queue].append((self.offsets[queue], key, value))
        self.offsets[queue] += 1

    def load(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """The touchpoints, partitioned by key as Kafka's producer would."""
        for key, value in records:
            partition = partition_for(key, self.partitions)
            self.put(TOUCHPOINTS, partition, key, value)
            self.sizes[partition] += 1

    def take(self, topic: str, most: int) -> list[tuple[int, int, bytes, bytes]]:
        """Up to ``most`` records of ``topic``: a partition's records in a run, the
        partitions in turn, as a consumer's fetches hand them over (a fetch brings up to
        a megabyte of each partition). That keeps the partitions apart in event time by
        about what a batch spans, which the full bench's worker shows as well: windows
        stay open until the slowest partition passes them."""
        out: list[tuple[int, int, bytes, bytes]] = []
        first = self.turn[topic] = (self.turn[topic] + 1) % self.partitions
        for n in range(first, first + self.partitions):
            queue = self.queues[(topic, n % self.partitions)]
            while queue and len(out) < most:
                out.append((n % self.partitions, *queue.popleft()))
        return out

    def run(self, stage: str) -> None:
        """One batch of ``stage``, if it has input."""
        records = self.take(INPUT[stage], self.settings.sink_batch_size)
        if not records:
            return
        started = time.process_time()
        batch = _decoded(stage, records)
        self.cpu["decode"] += time.process_time() - started
        started = time.process_time()
        out = self.apply(stage, batch)
        self.cpu[stage] += time.process_time() - started
        self.commit(out)

    def apply(self, stage: str, batch: list[Message]) -> Output:
        t = self.tables
        now, version = self.now(), int(self.clock * 1e6) + 1
        if stage == "router":
            return self.router.route(batch, now)
        if stage == "identity":
            return self.identity.resolve(batch, t["devices"], now, t["device-suppressions"])
        if stage == "journey":
            return self.journey.update(batch, t["journeys"], t["cx-partials"], now, version,
                                       t["journey-suppressions"])
        return self.aggregator.aggregate(batch, t["cx-windows"], now, version)

    def commit(self, out: Output) -> None:
        """Rows counted (cx_metrics kept by window), messages queued, callbacks run."""
        started = time.process_time()
        for table, rows in out.rows.items():
            self.rows[table] += len(rows)
            if table == "cx_metrics":
                for row in rows:
                    self.windows[row[:4]] = row[5:12]  # by window: its latest values
        for message in out.outgoing():
            if isinstance(message, Outbox):
                for partition, items in message.bundles():
                    self.messages[message.topic] += len(items)
                    self.put(message.topic, partition, BUNDLE_KEY, encode_bundle(items))
            else:
                partition = message.partition
                if partition is None:
                    partition = partition_for(message.key, self.partitions)
                self.messages[message.topic] += 1
                self.put(message.topic, partition, message.key, message.value)
        for callback in out.callbacks:
            callback()
        self.cpu["commit"] += time.process_time() - started

    def timers(self) -> None:
        """What the worker's timers do: the router's watermarks, the aggregator's ticks."""
        out = Output(self.partitions)
        marks, _covered = self.router.watermarks(
            range(self.partitions), self.settings.watermark_idle_seconds,
            lambda partition, done: done >= self.sizes[partition])
        for mark in marks:
            out.mark(BY_DEVICE, mark)
            out.mark(JOURNEY_EVENTS, mark)
        self.idle_sent = all(mark.idle for mark in marks)
        self.aggregator.tick(out, range(self.partitions))
        self.commit(out)

    def drain(self, most_passes: int, progress: Callable[[int], None]) -> int:
        """Passes until every queue is empty and every window has its final row: the
        sources went idle, their last marks went through, no aggregator partition
        waits."""
        for passes in range(1, most_passes + 1):
            for stage in STAGES:
                self.run(stage)
            if (self.idle_sent and not any(self.queues.values())
                    and not self.aggregator.waiting(range(self.partitions))):
                return passes
            self.timers()
            self.clock += self.step
            progress(passes)
        raise RuntimeError(f"not drained after {most_passes} passes")

    def digest(self) -> str:
        """Of every window's latest values: a change for speed must leave it as it was."""
        h = hashlib.sha256()
        for key in sorted(self.windows, key=repr):
            h.update(repr((key, self.windows[key])).encode())
        return h.hexdigest()[:16]


def _decoded(stage: str, records: list[tuple[int, int, bytes, bytes]]) -> list[Message]:
    """As the worker's agents hand batches to the stages: bundles opened, then decoded
    (stream_processors/topology.py)."""
    if stage == "router":
        return [Message(p, offset, key, value) for p, offset, key, value in records]
    opened = [Message(partition, offset, k, v) for partition, offset, key, value in records
              for k, v in unbundle(key, value)]
    return decode_batch(opened, decode_partial if stage == "aggregator" else decode_command)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=50_000,
                   help="simulated customers (default 50,000: the full bench's workload)")
    p.add_argument("--seconds-per-pass", type=float, default=1.0,
                   help="how far the stages' clock moves per pass (default 1 s): it paces "
                        "the open windows' refreshes (JOURNEY_CX_UPDATE_SECONDS)")
    args = p.parse_args(argv)
    settings = Settings()
    tune_gc(settings.gc_threshold)
    print(f"Simulating {args.customers:,} customers ...", flush=True)
    # Today at midnight: the same workload at the same times all day, and so the same
    # windows and the same digest.
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    workload = make_workload(args.customers, as_of=today)
    pipeline = Pipeline(settings, args.seconds_per_pass, today)
    pipeline.load(workload.records)
    print(f"  {len(workload):,} touchpoints, {pipeline.partitions} partitions", flush=True)

    def progress(passes: int) -> None:
        if passes % 10 == 0:
            left = sum(map(len, pipeline.queues.values()))
            print(f"  pass {passes}: {left:,} records queued, "
                  f"{sum(pipeline.cpu.values()):.1f} CPU s so far", flush=True)

    passes = pipeline.drain(100_000, progress)
    total = sum(pipeline.cpu.values())
    print(f"\n{len(workload):,} touchpoints in {passes} passes: {total:.1f} CPU s, "
          f"{len(workload) / total:,.0f} touchpoints per CPU second\n")
    print("| part | CPU s | share | µs per touchpoint |\n| --- | --- | --- | --- |")
    for part in (*STAGES, "decode", "commit"):
        seconds = pipeline.cpu[part]
        print(f"| {part} | {seconds:.2f} | {seconds / total:.0%} | "
              f"{seconds / len(workload) * 1e6:.1f} |")
    print("\nmessages: " + ", ".join(f"{topic} {n:,} ({n / len(workload):.2f} per touchpoint)"
                                     for topic, n in sorted(pipeline.messages.items())))
    print("rows: " + ", ".join(f"{table} {n:,}" for table, n in sorted(pipeline.rows.items())))
    print(f"CX windows with a row: {len(pipeline.windows):,}, final values' digest "
          f"{pipeline.digest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
