"""deploy/prometheus rules: valid, unit-tested with promtool, and about real metrics."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from producers.collector.metrics import CollectorMetrics
from stream_processors.metrics import WorkerMetrics

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is not installed: `sudo apt-get install prometheus` "
                    "(`make setup` installs it)")
    return path


def test_rules_are_valid() -> None:
    result = subprocess.run([promtool(), "check", "rules",
                             *map(str, sorted((PROMETHEUS / "rules").glob("*.yml")))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = subprocess.run([promtool(), "test", "rules", "journey_rules_test.yml"],
                            cwd=PROMETHEUS / "tests", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_is_valid_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    result = subprocess.run([promtool(), "check", "config", "--syntax-only",
                             str(PROMETHEUS / "prometheus.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_only_use_metrics_the_code_exports() -> None:
    registry = CollectorRegistry()
    WorkerMetrics.create(registry)
    CollectorMetrics.create(registry)
    exported = set()
    for family in registry.collect():
        for sample in family.samples:
            exported.add(sample.name)
        exported.add(family.name + "_total")
        for suffix in ("_bucket", "_sum", "_count"):
            exported.add(family.name + suffix)
    text = "\n".join(p.read_text() for p in (PROMETHEUS / "rules").glob("*.yml"))
    used = set(re.findall(r"\b(journey_[a-z_]+)", text))
    assert used and used <= exported, sorted(used - exported)
