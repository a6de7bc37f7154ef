"""A real Prometheus scrapes a worker; its recording-rule NPS equals ClickHouse's."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from producers import JourneyClient
from producers.simulator import simulate
from tests.conftest import REPO, free_port, require_binary, wait_for

RULES = REPO / "deploy" / "prometheus" / "rules"


def start_prometheus(tmp_path: Path, worker_port: int, collector_port: int | None = None,
                     ) -> tuple[subprocess.Popen, str]:
    binary = require_binary("prometheus", "`sudo apt-get install prometheus` (`make setup`)")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for path in RULES.glob("*.yml"):  # the shipped rules, evaluated every second
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        (rules_dir / path.name).write_text(yaml.safe_dump(rules))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_dir / "*.yml")],
        "scrape_configs": [{"job_name": "journey-worker",
                            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}],
    }
    if collector_port is not None:  # the job names of deploy/prometheus/prometheus.yml
        config["scrape_configs"].append({
            "job_name": "journey-collector",
            "static_configs": [{"targets": [f"127.0.0.1:{collector_port}"]}]})
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def query(url: str, expr: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}), timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


def scalar(url: str, expr: str) -> float | None:
    try:
        result = query(url, expr)
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


def test_recording_rule_nps_equals_clickhouse(settings, clickhouse, start_worker,
                                              tmp_path) -> None:
    worker = start_worker(churn_inactive_days=0.0)
    prometheus, url = start_prometheus(tmp_path, worker.settings.worker_web_port)
    try:
        # A few scrapes of the zeroed counters before any event: the baseline.
        wait_for(lambda: (scalar(url, 'count_over_time(up{job="journey-worker"}[1m])') or 0)
                 >= 3, timeout=60, what="Prometheus to scrape the worker")
        people = simulate(200, seed=13, prefix="prom-")
        events = [e for p in people for e in p.events]
        with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                           spool_dir=tmp_path / "spool") as sdk:
            for e in events:
                sdk.send(e)
        wait_for(lambda: clickhouse.execute("SELECT count() FROM touchpoints FINAL")[0][0]
                 == len(events), timeout=90, what="every touchpoint in ClickHouse")
        promoters, detractors, responses = clickhouse.execute(
            "SELECT countIf(score >= 9), countIf(score <= 6), count() FROM ("
            " SELECT visitParamExtractInt(properties, 'score') AS score FROM touchpoints FINAL"
            " WHERE type = 'survey_response'"
            " AND visitParamExtractString(properties, 'survey') = 'nps')")[0]
        assert responses > 20
        expected = 100 * (promoters - detractors) / responses

        def rule_agrees() -> bool:
            value = scalar(url, "journey:nps:score_1h")
            return value is not None and abs(value - expected) < 1e-6

        wait_for(rule_agrees, timeout=60, interval=1.0,
                 what=f"journey:nps:score_1h to equal ClickHouse's NPS {expected:.3f}")
    finally:
        prometheus.terminate()
        prometheus.wait(10)
