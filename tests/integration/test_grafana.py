"""Every query of the Grafana dashboards returns data: the PromQL from a real Prometheus
scraping a real worker and collector (with the shipped recording rules), the SQL from
the real ClickHouse, after simulated customers went through the pipeline."""

from __future__ import annotations

import json
import re
import time

from kafka import KafkaProducer

from deploy.grafana.dashboards import DASHBOARDS, OUT
from producers import JourneyClient
from producers.simulator import simulate
from tests.conftest import TEST_WRITE_KEY, wait_for
from tests.integration.test_privacy import post
from tests.integration.test_prometheus import query, start_prometheus


def dashboard_queries() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(panel title, PromQL) and (panel title, SQL) of every shipped dashboard."""
    promql, sql = [], []
    for name in DASHBOARDS:
        for panel in json.loads((OUT / f"{name}.json").read_text())["panels"]:
            for target in panel["targets"]:
                if target.get("rawSql"):
                    sql.append((panel["title"], target["rawSql"]))
                else:
                    promql.append((panel["title"], target["expr"]))
    return promql, sql


def test_every_dashboard_query_returns_data(settings, clickhouse, start_worker,
                                            start_collector, tmp_path) -> None:
    worker = start_worker(churn_inactive_days=0.0)
    collector = start_collector()
    prometheus, url = start_prometheus(tmp_path, worker.settings.worker_web_port,
                                       collector_port=int(collector.url.rsplit(":", 1)[1]))
    try:
        people = simulate(150, seed=21, prefix="graf-")
        events = [e for p in people for e in p.events]
        with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                           spool_dir=tmp_path / "spool") as sdk:
            for e in events:
                sdk.send(e)
            for score in (3, 5, 6):  # the simulator answers no effort survey
                sdk.track("survey_response", customer_id="graf-ces", channel="email",
                          properties={"survey": "ces", "score": score},
                          occurred_at=events[-1].occurred_at)
        raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)  # a dead letter
        raw.send(settings.touchpoints_topic, b'{"event_id": "x"}').get(timeout=10)
        raw.close()
        status, answer = post(f"{collector.url}/v1/track", {
            "userId": "graf-web", "event": "Product Viewed", "properties": {
                "product_id": "p-1"}}, TEST_WRITE_KEY)
        assert status == 200, answer
        wait_for(lambda: clickhouse.execute("SELECT count() FROM touchpoints FINAL")[0][0]
                 >= len(events) + 3, timeout=90, what="every touchpoint in ClickHouse")
        promql, sql = dashboard_queries()
        assert len(promql) >= 20 and len(sql) >= 5

        def empty() -> list[tuple[str, str]]:
            return [(title, expr) for title, expr in promql if not query(url, expr)]

        deadline = time.monotonic() + 90  # recording rules over 1 s evaluations
        while (missing := empty()) and time.monotonic() < deadline:
            time.sleep(2)
        assert missing == [], f"no data for {len(missing)} of {len(promql)}: {missing}"
        for title, text in sql:  # open CX windows get their rows every few seconds
            runnable = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 > toDateTime(0)", text)
            wait_for(lambda q=runnable: clickhouse.execute(q), timeout=60,
                     what=f"rows for the panel {title!r}")
    finally:
        prometheus.terminate()
        prometheus.wait(10)
