"""Benchmark building blocks: workloads, the local stack, and one function per measurement.

Each measurement starts what it needs as real processes on loopback (the Tansu broker
and ClickHouse are shared by the run; workers, the naive app and the collector are
started per measurement, each on fresh topics and a fresh database) and returns plain
numbers. ``__main__`` runs them in one go, so the ratios come from one machine state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPartition
from prometheus_client.parser import text_string_to_metric_families

from deploy.stack import Stack
from producers.simulator import simulate
from schemas import Touchpoint
from schemas.settings import Settings
from stream_processors.clickhouse.client import connect, migrate
from stream_processors.topics import ensure_topics
from tests.changelogs import changelog_state

__all__ = ["Bench", "Workload", "make_workload"]

_encode = msgspec.json.Encoder().encode


@dataclass
class Workload:
    """Simulated journeys, encoded once: (key, value) records in event-time order."""

    customers: int
    records: list[tuple[bytes, bytes]]
    touchpoints: list[Touchpoint]

    def __len__(self) -> int:
        return len(self.records)


def make_workload(customers: int, seed: int = 11, as_of: datetime | None = None) -> Workload:
    """``as_of``: the journeys as they stand then, started 45 to 75 days before (by
    default: now). The same ``as_of`` gives the same touchpoints at the same times."""
    start = None if as_of is None else as_of - timedelta(days=75)
    people = simulate(customers, seed=seed, prefix="b-", start=start)
    tps = sorted((e for p in people for e in p.events
                  if as_of is None or e.occurred_at <= as_of), key=lambda e: e.occurred_at)
    return Workload(customers, [(tp.key.encode(), _encode(tp)) for tp in tps], tps)


@dataclass
class Series:
    """(seconds since start, value) samples, for the chart."""

    name: str
    points: list[tuple[float, float]] = field(default_factory=list)


class Bench:
    """One benchmark run: its stack, its scratch space and its samples."""

    def __init__(self, partitions: int, echo: Callable[[str], None] = print,
                 data_dir: Path | None = None) -> None:
        self.echo = echo
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="journey-bench-"))
        from tests.conftest import free_port

        self.free_port = free_port
        self.base = Settings.from_env({}).replace(
            broker_url=f"127.0.0.1:{free_port()}",
            clickhouse_url=f"clickhouse://default@127.0.0.1:{free_port()}/default",
            clickhouse_http_port=free_port(), data_dir=self.dir / "stack",
            topic_partitions=partitions, log_level="warn")
        self.stack = Stack(self.base, echo=lambda line: echo(f"  {line.strip()}"))
        self.series: list[Series] = []

    def __enter__(self) -> Bench:
        self.stack.start(["broker", "clickhouse"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    def fresh(self, **changes: object) -> Settings:
        """Settings with their own topics, consumer group, database and ports."""
        name = f"b{uuid.uuid4().hex[:8]}"
        return self.base.replace(topic_prefix=name, app_id=name,
                                 clickhouse_url=self.base.clickhouse_url_for(name),
                                 worker_web_port=self.free_port(), data_dir=self.dir / name,
                                 **changes)

    # ── load ─────────────────────────────────────────────────────────────────
    def prefill(self, settings: Settings, workload: Workload) -> float:
        """Write the workload to the touchpoints topic; returns events/s."""
        ensure_topics(settings)
        return asyncio.run(_produce(settings, settings.touchpoints_topic, workload.records))

    # ── 1. ceiling ───────────────────────────────────────────────────────────
    def ceiling(self, settings: Settings, expected: int) -> float:
        """A bare aiokafka consumer reading and JSON-decoding the topic: events/s."""
        return asyncio.run(_consume_all(settings, settings.touchpoints_topic, expected))

    # ── 2. naive baseline ────────────────────────────────────────────────────
    def naive(self, settings: Settings, expected: int, timeout: float = 900,
              bare: bool = False) -> tuple[float, float]:
        """A Faust agent with one table update per event: events/s from first to last,
        and the share of one core its process was busy meanwhile.

        ``bare``: Faust's floor instead, batches JSON-decoded and nothing else.

        The share says whether a rate is what the CPU allows or what the broker
        delivers: a floor far below 100 % busy is a fetch rate, not Faust's cost.
        """
        # A consumer group of its own: the pipeline reads the same topic afterwards.
        name = "bare" if bare else "naive"
        settings = settings.replace(app_id=f"{settings.app_id}-{name}",
                                    worker_web_port=self.free_port())
        env = {**os.environ, **settings.to_env()}
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        log = settings.data_dir / f"{name}.log"
        with open(log, "w") as out:  # Faust sends print() to its log: read it there
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.benchmarks.naive", settings.touchpoints_topic,
                 str(expected), *(["bare"] if bare else [])],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        stamps: dict[str, float] = {}
        # (monotonic time, CPU seconds) when each stamp was first seen: sampled on the
        # same 0.2 s poll at both ends, so the busy share's error is a poll over the run.
        cpu: dict[str, tuple[float, float]] = {}
        try:
            deadline = time.monotonic() + timeout
            while "DONE" not in stamps and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
                for line in log.read_text(errors="replace").splitlines():
                    for word in ("FIRST", "DONE"):
                        if f"{word} " in line:
                            stamps[word] = float(line.split(f"{word} ")[1].split()[0])
                            if word not in cpu:
                                cpu[word] = (time.monotonic(), _cpu_seconds(proc.pid))
        finally:
            proc.terminate()
            proc.wait(30)
        if "DONE" not in stamps:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the naive agent did not finish; {log} ends with:\n{tail}")
        (t0, c0), (t1, c1) = cpu["FIRST"], cpu["DONE"]
        busy = (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan")
        return (expected - 1) / (stamps["DONE"] - stamps["FIRST"]), busy

    # ── 3, 6, 7. the real pipeline ───────────────────────────────────────────
    def pipeline(self, settings: Settings, expected: int, workers: int = 1,
                 timeout: float = 1800, label: str = "pipeline",
                 profile: Path | None = None, chart_progress: bool = False,
                 chart: bool = True) -> dict:
        """Worker processes on a pre-filled topic, until ClickHouse has everything.

        Timed from the first touchpoint taken in to the moment every touchpoint row is
        in ClickHouse and the worker group has committed every offset of every topic it
        reads (so journey snapshots and metric windows are written too).

        Each stage's messages taken in are sampled over the run from the workers'
        metrics: a stage that waits while another drains its backlog shows there, and
        so do the totals per touchpoint (``stage_messages``, ``sink_rows``).
        """
        client = _clickhouse(settings)
        stacks = []
        for n in range(workers):
            s = settings.replace(worker_web_port=self.free_port(), broker_commit_interval=0.5,
                                 data_dir=settings.data_dir / f"w{n}")
            stack = Stack(s, echo=lambda line: None, start_timeout=120)
            stack.start(["worker"])
            stacks.append(stack)
        pids = [st._started[0].process.pid for st in stacks]  # type: ignore[union-attr]
        rss_start = max(_rss(pid) for pid in pids)
        cpu_start = sum(_cpu_seconds(pid) for pid in pids)
        ports = [st.settings.worker_web_port for st in stacks]
        series = Series(f"{label}: touchpoints in ClickHouse per second")
        # Where memory goes over the run: state grows with what was processed, a batch's
        # transients come and go, and RSS keeps its peaks.
        memory = Series(f"{label}: worker RSS (MiB)")
        # Each stage's messages taken in, every _PROGRESS_SECONDS and at the end: a page
        # of the worker's metrics costs its event loop about 12 ms to render.
        progress: dict[str, Series] = {}

        def sample_progress(at: float, pages: list[str]) -> dict[str, float]:
            taken = _summed(pages, _STAGE_MESSAGES)
            for stage, n in taken.items():
                name = f"{label}: {stage}, messages taken in"
                progress.setdefault(stage, Series(name)).points.append((at, n))
            return taken

        profiler = _start_profiler(pids[0], profile) if profile else None
        _pause_gc()
        try:
            start = _wait(lambda: sum(_processed(p) for p in ports) > 0, timeout, 0.05)
            last = (start, 0)
            next_progress = 0.0
            rows = 0
            while rows < expected:
                time.sleep(0.5)
                rows = client.execute("SELECT uniqExact(event_id) FROM touchpoints")[0][0]
                now = time.monotonic()
                series.points.append((now - start, (rows - last[1]) / (now - last[0])))
                with contextlib.suppress(OSError):  # a worker restarted: its pid is gone
                    memory.points.append((now - start, max(_rss(pid) for pid in pids) / 2**20))
                if now - start >= next_progress:
                    sample_progress(now - start, [_scrape(port) for port in ports])
                    next_progress = now - start + _PROGRESS_SECONDS
                last = (now, rows)
                if now - start > timeout:
                    raise RuntimeError(f"{label}: {rows} of {expected} rows after {timeout} s")
            visible = time.monotonic()
            _settle(settings, timeout)
            done = time.monotonic()
            pages = [_scrape(port) for port in ports]
            stage_messages = sample_progress(done - start, pages)
            sink_rows = _summed(pages, _SINK_ROWS)
            # RSS at rest: once the worker's heap trim ran after the work (it runs every
            # JOURNEY_MALLOC_TRIM_SECONDS), not whatever the last batches left free.
            time.sleep(settings.malloc_trim_seconds + 1)
            rss = [_rss(pid) for pid in pids]
            peak = [_rss(pid, "VmHWM") for pid in pids]
            memory.points.append((time.monotonic() - start, max(rss) / 2**20))  # at rest
            cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu_start
            disk = sum(f.stat().st_size for st in stacks
                       for f in (st.settings.data_dir / "worker").rglob("*") if f.is_file())
        finally:
            gc.enable()
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                profiler.wait(60)
            for stack in stacks:
                stack.stop()
            client.disconnect()
        if chart:
            self.series += [series, memory]
        if chart_progress:
            self.series += list(progress.values())
        return {"events_per_second": expected / (done - start),
                "seconds": done - start, "touchpoints_visible_seconds": visible - start,
                "worker_rss_bytes": max(rss), "worker_rss_at_start_bytes": rss_start,
                "worker_rss_mib_over_time": [(round(t, 1), round(m, 1))
                                             for t, m in memory.points],
                "worker_disk_bytes": disk, "worker_peak_rss_bytes": max(peak),
                # Busy share of one core: near 1 is CPU-bound, well below waits on I/O.
                "worker_cpu_seconds": cpu,
                "worker_cpu_share": cpu / (done - start) / workers,
                # Messages each stage took in (bundles opened) and rows per table, at the
                # end; per touchpoint they say where the work goes (README, Benchmarks).
                "stage_messages": stage_messages, "sink_rows": sink_rows,
                "stage_messages_over_time": {stage: [(round(t, 1), n) for t, n in s.points]
                                             for stage, s in progress.items()}}

    # ── 6a. the state itself ─────────────────────────────────────────────────
    def state(self, settings: Settings) -> dict[str, dict[str, int]]:
        """Each table's live state after a run, read back from its changelog: keys, and
        bytes of keys and values (what the memory store holds, before a dict's and an
        allocator's overhead). Unlike RSS it does not move from run to run."""
        state = {}
        for table in TABLES:
            live = changelog_state(settings.bootstrap_servers,
                                   f"{settings.app_id}-{table}-changelog")
            state[table] = {"keys": len(live),
                            "bytes": sum(len(k) + len(v) for k, v in live.items())}
        return state

    # ── 4. latency ───────────────────────────────────────────────────────────
    def latency(self, settings: Settings, workload: Workload, rate: float,
                seconds: float) -> dict[str, float]:
        """Offered load at ``rate`` events/s; touchpoint sent → visible in ClickHouse."""
        client = _clickhouse(settings)
        ensure_topics(settings)
        stack = Stack(settings, echo=lambda line: None, start_timeout=120)
        stack.start(["worker"])
        _pause_gc()
        try:
            # Warm up: the group has joined once a first touchpoint came through.
            asyncio.run(_produce(settings, settings.touchpoints_topic, workload.records[:1]))
            _wait(lambda: client.execute("SELECT count() FROM touchpoints")[0][0] > 0, 120, 0.1)
            count = min(len(workload) - 1, int(rate * seconds))
            sent: dict[str, float] = {}
            seen: dict[str, float] = {}
            series = Series("latency: p99 per second of sending (s)")
            asyncio.run(_paced(settings, workload.touchpoints[1:count + 1], rate, sent,
                               lambda: _poll_seen(client, seen)))
            deadline = time.monotonic() + 60
            # Until every sent id is seen: ``seen`` also holds the warm-up touchpoint, so
            # comparing counts stopped one short (and the smoke test failed on 2701 of 2702
            # when the last row came in an insert of its own).
            while (missing := [k for k in sent if k not in seen]) and time.monotonic() < deadline:
                _poll_seen(client, seen)
                time.sleep(0.05)
                # A row inserted while no poll ran for 5 s (a loaded machine) is past the
                # polls' window: look for what is missing by id (seen now: an upper bound).
                _poll_missing(client, seen, missing[:1000])
        finally:
            gc.enable()
            stack.stop()
            client.disconnect()
        latencies = sorted(seen[k] - sent[k] for k in sent if k in seen)
        if not latencies:
            raise RuntimeError("no touchpoint became visible")
        t0 = min(sent.values())
        by_second: dict[int, list[float]] = {}
        for k, t in sent.items():
            if k in seen:
                by_second.setdefault(int(t - t0), []).append(seen[k] - t)
        series.points = [(s, _quantile(sorted(v), 0.99)) for s, v in sorted(by_second.items())]
        self.series.append(series)
        return {"offered_events_per_second": rate, "events": len(sent),
                "visible": len(latencies), "p50_seconds": _quantile(latencies, 0.5),
                "p99_seconds": _quantile(latencies, 0.99)}

    # ── 5. collector and SDK ─────────────────────────────────────────────────
    def collector(self, settings: Settings, workload: Workload, events: int,
                  concurrency: int = 16, batch: int = 100) -> dict[str, float]:
        from producers.collector.auth import hash_key

        s = settings.replace(collector_port=self.free_port(),
                             collector_write_keys=f"bench:server={hash_key('bench-key')}",
                             collector_rate_limit=1e9, collector_rate_burst=1e9,
                             collector_client_rate_limit=1e9, collector_client_rate_burst=1e9)
        ensure_topics(s)
        stack = Stack(s, echo=lambda line: None)
        stack.start(["collector"])
        try:
            return asyncio.run(_segment_load(s, workload.touchpoints[:events], concurrency, batch))
        finally:
            stack.stop()

    def sdk(self, settings: Settings, workload: Workload, events: int) -> float:
        from producers import JourneyClient

        ensure_topics(settings)
        tps = workload.touchpoints[:events]
        with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                           spool_dir=settings.data_dir / "spool") as sdk:
            start = time.perf_counter()
            for tp in tps:
                sdk.send(tp)
            sdk.flush()
            elapsed = time.perf_counter() - start
        return len(tps) / elapsed


    def kafka_python_floor(self, settings: Settings, workload: Workload, events: int) -> float:
        """kafka-python alone: the SDK's records sent in a bare loop with the SDK's producer
        settings. The SDK is built on it and cannot be faster."""
        from kafka import KafkaProducer

        from producers.sdk import kafka_config

        ensure_topics(settings)
        records = workload.records[:events]
        producer = KafkaProducer(**kafka_config(settings.bootstrap_servers))
        try:
            start = time.perf_counter()
            for key, value in records:
                producer.send(settings.touchpoints_topic, key=key, value=value)
            producer.flush()
            return len(records) / (time.perf_counter() - start)
        finally:
            producer.close()


# ── helpers ──────────────────────────────────────────────────────────────────
def _pause_gc() -> None:
    """Turn this process's cyclic garbage collector off while it times a run (the
    caller turns it on again): this process holds the workload, and a full collection
    stops its sending and polling. Measured: a 1.09 s collection during a latency run
    made its p99 1.60 s, with the touchpoints of two seconds at 1.8 s (0.6-0.8 s in the
    others). Reference counting still frees what a run allocates."""
    gc.collect()
    gc.disable()


def _clickhouse(settings: Settings):
    """A client on the run's own database, migrated."""
    admin = connect(settings.clickhouse_url)
    try:
        migrate(admin, settings.clickhouse_database)
    finally:
        admin.disconnect()
    return connect(settings.clickhouse_url, database=settings.clickhouse_database)


async def _produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20,
                                max_batch_size=1 << 20, enable_idempotence=False, acks=1)
    await producer.start()
    try:
        start = time.perf_counter()
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return len(records) / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def _consume_all(settings: Settings, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.topic_partitions)])
        seen, start = 0, None
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20000)
            for records in batches.values():
                if start is None:
                    start = time.perf_counter()
                for record in records:
                    json.loads(record.value)
                seen += len(records)
        assert start is not None
        return expected / (time.perf_counter() - start)
    finally:
        await consumer.stop()


#: The worker's tables (stream_processors/topology.py), whose changelogs hold its state.
TABLES = ("devices", "journeys", "cx-partials", "cx-windows", "device-suppressions",
          "journey-suppressions")


async def _paced(settings: Settings, tps: list[Touchpoint], rate: float, sent: dict[str, float],
                 poll: Callable[[], None]) -> None:
    """Send at ``rate`` events/s in 10 ms slices, each stamped with the current time."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=2,
                                enable_idempotence=False)
    await producer.start()
    loop = asyncio.get_running_loop()
    try:
        start = time.monotonic()
        i = 0
        last_poll = start
        while i < len(tps):
            due = int((time.monotonic() - start) * rate) + 1
            while i < min(due, len(tps)):
                tp = msgspec.structs.replace(tps[i], occurred_at=datetime.now(UTC))
                sent[tp.event_id] = time.time()
                await producer.send(settings.touchpoints_topic, _encode(tp), key=tp.key.encode())
                i += 1
            if time.monotonic() - last_poll > 0.1:
                await loop.run_in_executor(None, poll)
                last_poll = time.monotonic()
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()


def _poll_missing(client: object, seen: dict[str, float], ids: list[str]) -> None:
    if not ids:
        return
    now = time.time()
    for (event_id,) in client.execute(  # type: ignore[attr-defined]
            "SELECT event_id FROM touchpoints WHERE event_id IN %(ids)s", {"ids": tuple(ids)}):
        seen.setdefault(event_id, now)


def _poll_seen(client: object, seen: dict[str, float]) -> None:
    now = time.time()
    for (event_id,) in client.execute(  # type: ignore[attr-defined]
            "SELECT event_id FROM touchpoints WHERE ingested_at >= now() - 5"):
        seen.setdefault(event_id, now)


async def _segment_load(settings: Settings, tps: list[Touchpoint], concurrency: int,
                        batch: int) -> dict[str, float]:
    import aiohttp

    url = f"http://127.0.0.1:{settings.collector_port}/v1/batch"
    auth = aiohttp.BasicAuth("bench-key", "")
    bodies = []
    for i in range(0, len(tps), batch):
        bodies.append(json.dumps({"batch": [
            {"type": "track", "event": tp.type, "messageId": tp.event_id,
             "userId": tp.customer_id, "anonymousId": tp.anonymous_id,
             "timestamp": tp.occurred_at.isoformat(), "properties": tp.properties}
            for tp in tps[i:i + batch]]}).encode())
    latencies: list[float] = []
    accepted = 0
    queue = list(reversed(bodies))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            t = time.perf_counter()
            async with session.post(url, data=body, auth=auth,
                                    headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status == 200:
                    accepted += 1
            latencies.append(time.perf_counter() - t)

    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"events_per_second": len(tps) / elapsed, "requests": len(bodies),
            "accepted_requests": accepted, "p50_request_seconds": _quantile(latencies, 0.5),
            "p99_request_seconds": _quantile(latencies, 0.99)}


_STAGE_MESSAGES = "journey_stage_batch_messages_sum"
_PROGRESS_SECONDS = 2.0
_SINK_ROWS = "journey_sink_rows_total"


def _scrape(port: int) -> str:
    """A worker's metrics page ("" while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def _by_label(text: str, name: str) -> dict[str, float]:
    """The samples called ``name`` of a one-label metric, by label value."""
    return {next(iter(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name and sample.labels}


def _summed(pages: list[str], name: str) -> dict[str, float]:
    """``_by_label`` summed over the workers' metrics pages."""
    total: dict[str, float] = {}
    for page in pages:
        for label, value in _by_label(page, name).items():
            total[label] = total.get(label, 0.0) + value
    return total


def _processed(port: int) -> float:
    return sum(_by_label(_scrape(port), "journey_touchpoints_processed_total").values())


def _settle(settings: Settings, timeout: float, rounds: int = 3) -> None:
    """Wait until the worker group has committed what the topics held, ``rounds`` times.

    Watermark markers keep arriving, so "committed = end" never holds for long; instead
    take the end offsets, wait for commits to pass them, and repeat, to cover what
    processing produced meanwhile (merges, metric partials).
    """
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                             group_id=settings.app_id, enable_auto_commit=False)
    try:
        topics = (settings.touchpoints_topic, settings.by_device_topic,
                  settings.journey_events_topic, settings.cx_partials_topic)
        partitions = [KafkaPartition(t, p) for t in topics
                      for p in range(settings.topic_partitions)]
        for _ in range(rounds):
            ends = consumer.end_offsets(partitions)
            _wait(lambda ends=ends: all((consumer.committed(tp) or 0) >= end
                                        for tp, end in ends.items()), timeout, 0.1)
    finally:
        consumer.close()


def _rss(pid: int, field: str = "VmRSS") -> int:
    """Resident memory now (VmRSS) or at its highest so far (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pid: int) -> float:
    """CPU time the process used so far, user and system (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(predicate: Callable[[], object], timeout: float, interval: float) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic()


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start_profiler(pid: int, out: Path) -> subprocess.Popen:
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format",
         "raw", "--rate", "200", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=False)


def top_costs(raw: Path, limit: int = 15) -> list[tuple[str, float]]:
    """Share of samples per function (own time), from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frame = stack.split(";")[-1]
        own[frame] = own.get(frame, 0) + int(count)
        total += int(count)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:limit]
    return [(frame, n / total) for frame, n in ranked] if total else []


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
