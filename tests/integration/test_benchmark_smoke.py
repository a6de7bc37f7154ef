"""The benchmark harness still works end to end (tiny sizes; no speed is asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from producers.simulator import simulate


def _not_json(word: str) -> None:
    raise AssertionError(f"bench.json holds {word}, which is not JSON")


def test_bench_smoke_measures_everything(tmp_path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "tests.benchmarks", "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Strict JSON, as jq or a browser reads it: an unknown number is null, never NaN.
    r = json.loads(out.read_text(), parse_constant=_not_json)
    assert r["events"] > 1000
    for number in (r["ceiling_events_per_second"], r["naive_events_per_second"],
                   r["faust_floor_events_per_second"],
                   r["pipeline"]["events_per_second"], r["pipeline_rocksdb"]["events_per_second"],
                   r["pipeline_two_workers"]["events_per_second"], r["sdk_events_per_second"],
                   r["kafka_python_floor_events_per_second"],
                   r["collector"]["events_per_second"], r["latency"]["p99_seconds"],
                   r["memory"]["memory_store_rss_bytes"],
                   r["memory"]["rocksdb_disk_bytes_per_customer"]):
        assert number > 0
    assert "slope_bytes_per_customer" in r["memory"] and "6b. memory slope" in run.stdout
    # --smoke: two runs at each size, the main run the first large one; the slope is
    # between the medians (of two: their means).
    sizes = r["memory"]["slope_rss_bytes"]
    low, high = (sizes[str(n)] for n in r["memory"]["slope_customers"])
    assert len(low) == len(high) == 2 and high[0] == r["memory"]["memory_store_rss_bytes"]
    assert r["memory"]["slope_bytes_per_customer"] == (
        (sum(high) / 2 - sum(low) / 2) / (r["customers"] - r["customers"] // 2))
    # The state read back from the changelogs: a journey for every customer who was
    # identified (the simulator's, counted here), besides anonymous ones.
    identified = {tp.customer_id for person in simulate(r["customers"], seed=11, prefix="b-")
                  for tp in person.events if tp.customer_id}
    state = r["memory"]["state"]
    assert state["journeys"]["keys"] >= len(identified) > 0
    assert state["journeys"]["bytes"] > 40 * state["journeys"]["keys"]
    assert r["memory"]["state_bytes_per_customer"] == (
        sum(t["bytes"] for t in state.values()) / r["customers"])
    assert "6a. state" in run.stdout
    memory = r["pipeline"]["worker_rss_mib_over_time"]  # sampled over the run, then at its end
    assert len(memory) >= 2 and all(mib > 0 for _, mib in memory)
    assert memory[-1][1] == round(r["pipeline"]["worker_rss_bytes"] / 2**20, 1)
    # Every touchpoint of the pre-filled topic went through the router and into ClickHouse;
    # each stage's count only grows over the run and ends at its total.
    taken = r["pipeline"]["stage_messages"]
    assert taken["route_by_device"] >= r["events"]
    assert r["pipeline"]["sink_rows"]["touchpoints"] >= r["events"]
    for stage, points in r["pipeline"]["stage_messages_over_time"].items():
        counts = [n for _, n in points]
        assert counts == sorted(counts) and counts[-1] <= taken[stage], stage
    assert set(r["pipeline"]["stage_messages_over_time"]) >= {"route_by_device", "update_journey"}
    assert "CX window parts per touchpoint" in run.stdout
    assert r["latency"]["visible"] == r["latency"]["events"]  # every sent event arrived
    assert r["collector"]["accepted_requests"] == r["collector"]["requests"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "3. pipeline, 1 worker" in run.stdout  # the table was printed


def test_journey_state_bench_smoke_prints_its_table() -> None:
    run = subprocess.run([sys.executable, "-m", "tests.benchmarks.journey_state", "--smoke"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| 1,000 |")]
    assert len(rows) == 2  # batches of 1 and of 10


def test_stages_bench_smoke_runs_every_touchpoint_through_every_stage() -> None:
    run = subprocess.run([sys.executable, "-m", "tests.benchmarks.stages", "--customers", "300"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    # Counted from the simulator, as of the bench's day (its journeys as they stand then).
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    people = simulate(300, seed=11, prefix="b-", start=today - timedelta(days=75))
    touchpoints = sum(e.occurred_at <= today for p in people for e in p.events)
    assert f"{touchpoints:,} touchpoints in " in out
    for stage in ("router", "identity", "journey", "aggregator"):
        assert re.search(rf"^\| {stage} \| \d+\.\d\d \|", out, re.M), stage
    rows = dict(re.findall(r"(\w+) ([\d,]+)", out.split("rows: ")[1].splitlines()[0]))
    assert int(rows["touchpoints"].replace(",", "")) >= touchpoints
    assert int(rows["cx_metrics"].replace(",", "")) > 0
    assert re.search(r"final values' digest [0-9a-f]{16}$", out, re.M)
