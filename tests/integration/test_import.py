"""`journey import`: a 30-day export in each format goes through the real pipeline, bad
rows are refused with their reasons, and importing the same files again changes nothing."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from producers.simulator import simulate
from schemas import encode_touchpoint
from tests.conftest import REPO, wait_for


def journey_import(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", "import", "--quiet", *args],
                          cwd=REPO, env={**os.environ, **settings.to_env()},
                          capture_output=True, text=True, timeout=300)


def summary(result: subprocess.CompletedProcess) -> tuple[int, int, int, int]:
    """(rows, sent, duplicates, rejected) from the command's first summary line."""
    found = re.search(r"([\d,]+) rows: ([\d,]+) sent, ([\d,]+) duplicates .*, ([\d,]+) rejected "
                      r"\(in",
                      result.stdout)
    assert found, (result.stdout, result.stderr)
    return tuple(int(g.replace(",", "")) for g in found.groups())  # type: ignore[return-value]


def test_history_imports_once_whatever_its_format(settings, clickhouse, start_worker,
                                                   tmp_path: Path) -> None:
    start_worker(churn_inactive_days=0.0)
    # Our own format: a simulated month, 120 customers.
    people = simulate(120, seed=5, prefix="imp-", spread=timedelta(days=30))
    events = [e for p in people for e in p.events]
    ours = tmp_path / "touchpoints.jsonl"
    ours.write_text("".join(encode_touchpoint(e).decode() + "\n" for e in events)
                    + "{not json\n"
                    + json.dumps({"event_id": "bad-type", "type": "no_such_type",
                                  "customer_id": "c", "occurred_at": events[0].occurred_at
                                  .isoformat()}) + "\n")
    # Segment messages without ids, one repeated, one from long ago (out of bounds).
    day = datetime.now(UTC) - timedelta(days=20)
    segment_rows = [
        {"type": "identify", "userId": "seg-1", "anonymousId": "seg-dev",
         "timestamp": day.isoformat(), "traits": {"email": "Seg@Example.com"}},
        {"type": "track", "userId": "seg-1", "event": "Order Completed",
         "timestamp": (day + timedelta(hours=1)).isoformat(),
         "properties": {"order_id": "seg-o1", "total": 25.5, "currency": "eur"}},
        {"type": "page", "anonymousId": "seg-dev", "name": "Home",
         "timestamp": (day - timedelta(hours=1)).isoformat()},
    ]
    segment = tmp_path / "segment-export.jsonl"
    segment.write_text("".join(json.dumps(r) + "\n" for r in [*segment_rows, segment_rows[1]])
                       + json.dumps({**segment_rows[2], "timestamp": "2020-01-01T00:00:00Z"})
                       + "\n")
    # A helpdesk's CSAT export: columns of its own, no event ids, one unreadable score.
    survey = tmp_path / "csat.csv"
    with survey.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["answered_at", "email", "rating", "comment"])
        for i in range(30):
            out.writerow([(day + timedelta(days=i % 15, minutes=i)).isoformat(), f"csv-{i % 7}",
                          str(1 + i % 5), "ok"])
        out.writerow([day.isoformat(), "csv-0", "five", "?"])
    csv_args = [str(survey), "--map", "answered_at=occurred_at", "--map", "email=customer_id",
                "--map", "rating=properties.score", "--set", "type=survey_response",
                "--set", "properties.survey=csat", "--set", "channel=email"]

    first = [journey_import(settings, str(ours)), journey_import(settings, str(segment)),
             journey_import(settings, *csv_args)]
    for result in first:
        print(result.stdout, result.stderr[-500:])
    assert summary(first[0]) == (len(events) + 2, len(events), 0, 2)
    assert summary(first[1]) == (5, 3, 1, 1)  # the repeat is a duplicate; 2020 is too old
    assert summary(first[2]) == (31, 30, 0, 1)
    assert "rejected 1 x out_of_bounds (first at line 5)" in first[1].stdout
    assert "invalid_property" in first[2].stdout or "invalid_field" in first[2].stdout
    rejected = [json.loads(line) for line in
                (tmp_path / "touchpoints.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (len(events) + 1, "invalid_json"), (len(events) + 2, "unknown_type")]

    expected = len(events) + 3 + 30

    def snapshot() -> tuple:
        return (clickhouse.execute("SELECT count(), sum(cityHash64(event_id, customer_id)) "
                                   "FROM touchpoints FINAL")[0],
                clickhouse.execute("SELECT count(), sum(touchpoints), sum(orders) "
                                   "FROM customer_journeys FINAL WHERE merged_into = ''")[0])

    wait_for(lambda: snapshot()[0][0] == expected, timeout=120,
             what=f"{expected} imported touchpoints in ClickHouse")
    wait_for(lambda: snapshot()[1][1] == expected, timeout=60, what="every journey folded")
    before = snapshot()
    # The Segment customer: identified, their order counted once, the email hashed.
    row = clickhouse.execute("SELECT orders, revenue FROM customer_journeys FINAL "
                             "WHERE journey_key = 'seg-1'")
    assert [(o, float(r)) for o, r in row] == [(1, 25.5)]
    traits = clickhouse.execute("SELECT properties FROM touchpoints FINAL WHERE type = "
                                "'identify' AND customer_id = 'seg-1'")[0][0]
    assert "Seg@Example.com" not in traits and "hmac:" in traits

    # Again: nothing new is sent (ClickHouse holds every id), and with --no-check every
    # row is sent again and the pipeline absorbs it.
    again = [journey_import(settings, str(ours)), journey_import(settings, *csv_args),
             journey_import(settings, "--no-check", str(segment))]
    assert summary(again[0]) == (len(events) + 2, 0, len(events), 2)
    assert summary(again[1]) == (31, 0, 30, 1)
    assert summary(again[2]) == (5, 3, 1, 1)
    time.sleep(5)  # what was sent again went through
    assert snapshot() == before
