"""The sink on the real ClickHouse: rows it cannot hold are dead-lettered, the rest of
their batch lands, and an unreachable server is retried until the worker is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from producers import JourneyClient
from schemas import Touchpoint
from stream_processors.clickhouse.rows import touchpoint_row
from stream_processors.clickhouse.sink import INSERT_ROWS, ClickHouseSink
from stream_processors.metrics import WorkerMetrics
from tests.conftest import free_port, own_clickhouse, wait_for

NOW = datetime.now(UTC).replace(microsecond=0)


def row(event_id: str, at: datetime) -> tuple:
    tp = Touchpoint(event_id=event_id, type="page_view", anonymous_id="a", occurred_at=at)
    return touchpoint_row(tp, "anon:a", None, "consideration", NOW, 1)


def test_a_row_clickhouse_cannot_hold_is_dead_lettered_and_the_rest_lands(settings,
                                                                          clickhouse) -> None:
    metrics = WorkerMetrics.create(CollectorRegistry())
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, metrics,
                          max_retry_seconds=0.2)
    # 1900 does not fit DateTime (the driver refuses to pack it), and 2200 neither.
    good = [row(f"ok-{i}", NOW - timedelta(minutes=i)) for i in range(50)]
    bad = [row("bad-1900", datetime(1900, 1, 1, tzinfo=UTC)),
           row("bad-2200", datetime(2200, 1, 1, tzinfo=UTC))]
    batch = [*good[:20], bad[0], *good[20:40], bad[1], *good[40:]]
    asyncio.run(sink.write({"touchpoints": batch}))
    landed = {r[0] for r in clickhouse.execute("SELECT event_id FROM touchpoints")}
    assert landed == {f"ok-{i}" for i in range(50)}
    letters = clickhouse.execute("SELECT topic, reason, field, error, payload FROM dead_letters")
    assert sorted(json.loads(p)["event_id"] for *_, p in letters) == ["bad-1900", "bad-2200"]
    assert {(t, r, f) for t, r, f, _, _ in letters} == {
        ("sink:touchpoints", "sink_rejected", "touchpoints")}
    assert all(e for *_, e, _ in letters)  # ClickHouse's (or the driver's) reason
    # The same batch again (a replay): nothing new, the same two letters.
    asyncio.run(sink.write({"touchpoints": batch}))
    assert clickhouse.execute("SELECT count() FROM dead_letters FINAL")[0][0] == 2


def test_more_months_than_one_insert_may_touch_are_split_not_refused(settings,
                                                                     clickhouse) -> None:
    """ClickHouse refuses an insert that touches more than 100 partitions (months): a
    server-side data error. Split in halves, every row lands and nothing is a letter."""
    metrics = WorkerMetrics.create(CollectorRegistry())
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, metrics)
    rows = [row(f"m-{i}", NOW - timedelta(days=31 * i)) for i in range(120)]
    asyncio.run(sink.write({"touchpoints": rows}))
    assert clickhouse.execute("SELECT count() FROM touchpoints")[0][0] == 120
    assert clickhouse.execute("SELECT count() FROM dead_letters")[0][0] == 0


def test_rows_beyond_one_inserts_worth_land_in_several_inserts(settings, clickhouse) -> None:
    """A batch with more of a table's rows than one insert takes: every row lands, in
    inserts of at most INSERT_ROWS (what the sink itself observed per insert)."""
    metrics = WorkerMetrics.create(CollectorRegistry())
    sink = ClickHouseSink(settings.clickhouse_url, settings.clickhouse_database, metrics)
    rows = [row(f"r-{i}", NOW - timedelta(seconds=i)) for i in range(2 * INSERT_ROWS + 5)]
    asyncio.run(sink.write({"touchpoints": rows}))
    assert clickhouse.execute("SELECT uniqExact(event_id) FROM touchpoints")[0][0] == len(rows)
    sizes = metrics.sink_batch_rows.labels("touchpoints")
    assert (sizes._sum.get(), sum(b.get() for b in sizes._buckets)) == (len(rows), 3)


def test_an_unreachable_server_is_retried_and_a_stop_still_stops(settings) -> None:
    metrics = WorkerMetrics.create(CollectorRegistry())
    url = f"clickhouse://default@127.0.0.1:{free_port()}/nowhere"  # nothing listens
    sink = ClickHouseSink(url, "nowhere", metrics, max_retry_seconds=0.2)

    async def run() -> tuple[float, float]:
        task = asyncio.create_task(sink.write({"touchpoints": [row("x", NOW)]}))
        while metrics.sink_failures.labels("touchpoints")._value.get() < 3:
            await asyncio.sleep(0.05)
        assert not task.done()  # still trying: the row is not given up on
        started = time.monotonic()
        task.cancel()  # what Faust does to an agent on SIGTERM
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return metrics.sink_rejected_rows.labels("touchpoints")._value.get(), \
            time.monotonic() - started

    rejected, stopped_in = asyncio.run(run())
    assert rejected == 0  # a connection error is no reason to drop a row
    assert stopped_in < 2.0


def test_a_worker_stuck_on_a_dead_clickhouse_stops_on_sigterm(settings, start_worker,
                                                              tmp_path) -> None:
    own, clickhouse = own_clickhouse(settings, tmp_path / "clickhouse-stack")
    try:
        worker = start_worker(clickhouse_url=own.clickhouse_url, sink_max_retry_seconds=1.0)
    finally:
        clickhouse.stop()  # the worker is up; its inserts now fail
    sdk = JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                        spool_dir=tmp_path / "spool")
    sdk.track("page_view", anonymous_id="stuck")
    sdk.close()

    def failing() -> bool:
        return any(line.startswith("journey_sink_failures_total") and
                   float(line.rsplit(" ", 1)[1]) >= 2 for line in worker.metrics().splitlines())

    wait_for(failing, timeout=60, what="the worker to retry its inserts")
    started = time.monotonic()
    worker.process.terminate()
    worker.process.wait(30)
    assert time.monotonic() - started < 20, worker.log()
    # It stopped before acknowledging the batch it could not write: replayed on restart.
    assert worker.process.returncode == 75 and "replays it once restarted" in worker.log()
