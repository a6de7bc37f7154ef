"""ClickHouse goes down while touchpoints keep coming: the worker waits, then delivers all."""

from __future__ import annotations

from deploy.stack import Stack
from producers import JourneyClient
from producers.simulator import simulate
from stream_processors.clickhouse.client import connect
from tests.conftest import own_clickhouse, wait_for


def _failures(worker) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in worker.metrics().splitlines()
               if line.startswith("journey_sink_failures_total"))


def test_the_sink_retries_until_clickhouse_is_back(settings, start_worker, tmp_path) -> None:
    own, clickhouse = own_clickhouse(settings, tmp_path / "clickhouse-stack")
    people = simulate(60, seed=8, prefix="outage-")
    events = [e for p in people for e in p.events]
    first, second = events[: len(events) // 2], events[len(events) // 2:]
    worker = start_worker(clickhouse_url=own.clickhouse_url, sink_max_retry_seconds=1.0,
                          churn_inactive_days=0.0)
    sdk = JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                        spool_dir=tmp_path / "spool")
    try:
        for e in first:
            sdk.send(e)
        sdk.flush()

        def count() -> int:
            client = connect(own.clickhouse_url, database=own.clickhouse_database)
            try:
                return client.execute("SELECT count() FROM touchpoints FINAL")[0][0]
            finally:
                client.disconnect()

        wait_for(lambda: count() == len(first), timeout=60, what="the first half")
        clickhouse.stop()
        for e in second:
            sdk.send(e)
        sdk.flush()
        wait_for(lambda: _failures(worker) > 0, timeout=60, what="failed inserts to be retried")
        clickhouse = Stack(own, echo=lambda line: None)  # same data directory
        clickhouse.start(["clickhouse"])
        wait_for(lambda: count() == len(events), timeout=90, what="every touchpoint")

        def journeys() -> int:
            client = connect(own.clickhouse_url, database=own.clickhouse_database)
            try:
                return client.execute(
                    "SELECT count() FROM customer_journeys FINAL WHERE merged_into = ''")[0][0]
            finally:
                client.disconnect()

        wait_for(lambda: journeys() == len(people), timeout=60, what="every journey")
    finally:
        sdk.close(timeout=5)
        clickhouse.stop()
