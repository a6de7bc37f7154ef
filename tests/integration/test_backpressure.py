"""A backlog goes through the stages together: the router runs only so far ahead.

The touchpoints are written before the worker starts, as after an outage; the router
routes one far faster than the stages behind it take it in, so without a bound the
internal topics would hold nearly the whole backlog at once.
"""

from __future__ import annotations

import contextlib
import threading
import time

from producers import JourneyClient
from producers.simulator import simulate
from stream_processors.topics import ensure_topics
from tests.conftest import wait_for

#: Small batches, so the backlog is many router batches (each one record, a bundle,
#: per internal partition).
BATCH = 100


def _value(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


def test_the_router_waits_for_the_stages_it_feeds_and_nothing_is_lost(
        settings, clickhouse, start_worker, tmp_path) -> None:
    people = simulate(1800, seed=17, prefix="bp-")
    events = [e for p in people for e in p.events]
    ensure_topics(settings)
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        for e in events:
            sdk.send(e)
    # Router batches the whole backlog makes: what the internal partitions would wait
    # with, unbounded (each batch is one record on each of them).
    batches = len(events) // BATCH
    worker = start_worker(sink_batch_size=BATCH, broker_max_poll_records=BATCH,
                          router_max_ahead=2)
    behind: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                behind.append(_value(worker.metrics(), "journey_backlog_records"))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_for(lambda: clickhouse.execute(
            "SELECT uniqExact(event_id) FROM touchpoints")[0][0] == len(events),
            timeout=180, what=f"all {len(events)} touchpoints in ClickHouse")
    finally:
        stop.set()
        sampler.join()
    text = worker.metrics()
    assert _value(text, "journey_router_pauses_total") >= 1
    # Faust's stream buffer (4,096 records) holds what was fetched before a pause: the
    # router still routes that, about 41 batches of 100, beyond the bound of 2.
    assert behind and max(behind) <= 2 + 4096 // BATCH + 4, (max(behind), batches)
    assert batches > 3 * (2 + 4096 // BATCH + 4), "the backlog is too small to tell"
