"""A broker that goes away mid-run: a few lines in the worker's log naming the setting,
not one per retry (issue 17). On a broker of the test's own, killed for 30 s."""

from __future__ import annotations

import re
import time

from deploy.stack import Stack
from producers import JourneyClient
from tests.conftest import free_port, wait_for

OUTAGE_SECONDS = 30
#: Lines a 30 s outage may cost: about one per kind of failure per 10 s.
MAX_LINES = 40


def test_a_broker_outage_is_a_few_lines_that_name_the_setting(settings, clickhouse,
                                                              start_worker, tmp_path) -> None:
    own = settings.replace(broker_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "own")
    broker = Stack(own, echo=lambda line: None)
    broker.start(["broker"])
    try:
        worker = start_worker(broker_url=own.broker_url)
        with JourneyClient(own.bootstrap_servers, own.touchpoints_topic,
                           spool_dir=tmp_path / "spool") as sdk:
            sdk.track("page_view", anonymous_id="d-1", event_id="before")
        wait_for(lambda: clickhouse.execute("SELECT count() FROM touchpoints")[0][0] == 1,
                 timeout=60, what="a touchpoint before the outage")
        before = len(worker.log_path.read_text(errors="replace").splitlines())
        broker.stop()
        time.sleep(OUTAGE_SECONDS)
        lines = worker.log_path.read_text(errors="replace").splitlines()[before:]
    finally:
        broker.stop()
    noisy = [line for line in lines if re.search(r"WARNING|ERROR|CRITICAL", line)]
    print(f"{len(lines)} log lines in a {OUTAGE_SECONDS} s outage, {len(noisy)} warnings "
          "or worse:\n" + "\n".join(line[:200] for line in noisy[:30]))
    assert len(lines) <= MAX_LINES, len(lines)
    assert any("JOURNEY_BROKER_URL" in line for line in lines)
    assert "Traceback" not in "\n".join(lines)
