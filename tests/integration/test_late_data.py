"""Late data: once the pipeline is quiet, every CX window in ClickHouse equals the truth.

Two ways data arrives days late, on the real broker, worker(s) and ClickHouse:
- a replay whose customers are interleaved with each one's calls held back by up to ten
  days (an app coming back online, a helpdesk export sent late), on one and two workers;
- `journey import` of a 30-day export after the last two days arrived live, with a few
  answers older than the revision horizon: those miss the windows that closed longer
  ago than the horizon, and only those, and are counted.

Expected values come from tests/reference.py (the events themselves), never from the
worker's code. Windows closed before late data came must have been revised: the test
checks that revisions happened, and that ``late_samples`` says how many came late.
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta

import msgspec
import pytest

from deploy.queries import load_queries
from producers import JourneyClient
from producers.simulator import simulate
from schemas import Touchpoint, encode_touchpoint
from stream_processors.windows import WINDOWS, spec_named
from tests.conftest import wait_for
from tests.integration.test_import import journey_import, summary
from tests.integration.test_readme_examples import code_blocks
from tests.reference import WindowKey, closed_windows, same

LATENESS = timedelta(hours=1)
REVISION = timedelta(days=35)  # JOURNEY_CX_REVISION_DAYS' default, which the workers keep


def latest_rows(clickhouse) -> dict[WindowKey, tuple]:
    """The latest revision of every final window that holds something (one whose only
    contribution was taken back closes with 0 samples: batch-dependent, left out)."""
    return {(m, d, w, s): (v, samples, revision, late) for m, d, w, s, v, samples, revision, late
            in clickhouse.execute(
                "SELECT metric, dimension, window, window_start, value, samples, revision, "
                "late_samples FROM cx_metrics FINAL WHERE final = 1 AND samples > 0")}


def wait_until_equal(clickhouse, expected: dict[WindowKey, float | None], workers) -> dict:
    def differences() -> list:
        got = latest_rows(clickhouse)
        wrong = [k for k, v in expected.items() if k not in got or not same(got[k][0], v)]
        return wrong + sorted(set(got) - set(expected))

    try:
        wait_for(lambda: not differences(), timeout=180, interval=2.0,
                 what="every closed window equal to the truth")
    except BaseException:
        wrong = differences()
        got = latest_rows(clickhouse)
        print(len(wrong), "of", len(expected), "differ:",
              [(k, expected.get(k), got.get(k)) for k in wrong[:5]])
        for worker in workers:
            print([line for line in worker.metrics().splitlines() if "cx_" in line
                   and not line.startswith("#")])
        raise
    return latest_rows(clickhouse)


def counter(workers, name: str) -> float:
    total = 0.0
    for worker in workers:
        for line in worker.metrics().splitlines():
            if line.startswith(f"{name} "):
                total += float(line.split()[1])
    return total


def held_back_by_days(events: list[Touchpoint], seed: int) -> list[Touchpoint]:
    """Each customer's calls in their order, but the customer held back by 0-10 days:
    customers interleave, and a window's answers arrive days apart."""
    rng = random.Random(seed)
    delay: dict[str, timedelta] = {}
    for e in events:
        who = e.customer_id or e.anonymous_id
        delay.setdefault(who, timedelta(days=rng.uniform(0, 10)) if rng.random() < 0.6
                         else timedelta(0))
    return sorted(events, key=lambda e: (e.occurred_at + delay[e.customer_id or e.anonymous_id],
                                         e.event_id))


def replay(settings, tmp_path, events: list[Touchpoint], seconds: float = 12.0) -> None:
    """Send in arrival order over ``seconds``, as live traffic would come: the watermark
    moves on meanwhile, so windows close before the data held back arrives."""
    chunks = 40
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        for n in range(chunks):
            for e in events[n * len(events) // chunks:(n + 1) * len(events) // chunks]:
                sdk.send(e)
            sdk.flush()
            time.sleep(seconds / chunks)


@pytest.mark.parametrize("workers", [1, 2])
def test_windows_revised_by_data_days_late_equal_the_truth(settings, clickhouse, start_worker,
                                                            tmp_path, workers) -> None:
    people = simulate(150, seed=43, prefix=f"late{workers}-")
    events = [e for p in people for e in p.events]
    expected, _horizon = closed_windows(events, LATENESS)
    assert len(expected) > 3000
    started = [start_worker(churn_inactive_days=0.0, watermark_idle_seconds=3.0,
                            lateness_seconds=LATENESS.total_seconds()) for _ in range(workers)]
    replay(settings, tmp_path, held_back_by_days(events, seed=workers))
    got = wait_until_equal(clickhouse, expected, started)

    revised = {k: row for k, row in got.items() if row[2] > 0}
    print(f"{len(got)} windows equal the truth; {len(revised)} of them revised "
          f"(up to revision {max(r[2] for r in revised.values())}), "
          f"{sum(r[3] for r in revised.values())} late samples")
    # The late data really came after windows had closed, and each revision says how much.
    assert len(revised) > 100
    assert all(0 < late <= samples for _v, samples, _r, late in revised.values())
    assert all(late == 0 for _v, _s, revision, late in got.values() if revision == 0)
    assert counter(started, "journey_cx_late_contributions_total") > 0
    assert counter(started, "journey_cx_window_too_late_total") == 0
    # The README's query for analysts reads the latest revision, as written.
    [readme_sql] = code_blocks("sql")
    daily = {start: value for start, value, *_ in clickhouse.execute(readme_sql)}
    truth = {k[3]: v for k, v in expected.items() if k[:3] == ("nps", "all", "24h")}
    assert daily.keys() == truth.keys() and all(same(daily[k], v) for k, v in truth.items())


def test_a_30_day_import_revises_history_and_what_is_older_than_the_horizon_is_counted(
        settings, clickhouse, start_worker, tmp_path) -> None:
    people = simulate(120, seed=48, prefix="hist-", spread=timedelta(days=10))
    events = [e for p in people for e in p.events]
    newest = max(e.occurred_at for e in events)
    template = next(e for e in events if e.type == "survey_response"
                    and e.properties["survey"] == "nps")
    # The simulator has no CES: a survey export's answers, one every 31 hours or so.
    rng = random.Random(3)
    events += [msgspec.structs.replace(
        template, event_id=f"hist-ces-{n}", customer_id=f"hist-ces-{n % 7}",
        anonymous_id=f"hist-ces-device-{n % 7}", session_id=f"hist-ces-s{n}",
        occurred_at=newest - timedelta(hours=31 * n + rng.uniform(0, 30)),
        channel=rng.choice(["email", "web"]),
        properties={"survey": "ces", "score": rng.randint(1, 7)}) for n in range(24)]
    live = [e for e in events if e.occurred_at >= newest - timedelta(days=2)]
    history = [e for e in events if e.occurred_at < newest - timedelta(days=2)]
    assert newest - min(e.occurred_at for e in history) < REVISION - LATENESS  # all revisable
    assert min(e.occurred_at for e in history) < newest - timedelta(days=30)
    # Three NPS answers 40 days before the newest event: past the revision horizon for
    # the windows that closed more than 35 days before, within it for the longer ones.
    ancient = [msgspec.structs.replace(
        template, event_id=f"hist-ancient-{n}", customer_id="hist-ancient",
        anonymous_id="hist-ancient-device", session_id="hist-ancient-s",
        occurred_at=newest - timedelta(days=40, minutes=7 * n),
        properties={"survey": "nps", "score": n * 5}) for n in range(3)]

    worker = start_worker(churn_inactive_days=0.0, watermark_idle_seconds=3.0,
                          lateness_seconds=LATENESS.total_seconds())
    replay(settings, tmp_path, sorted(live, key=lambda e: e.occurred_at))
    # The live days are final. (Answers rating an order of the history wait for it in
    # their journeys: their `rated` windows are left out until then.)
    unrated = [msgspec.structs.replace(e, properties={**e.properties, "rates": None})
               if e.type == "survey_response" else e for e in live]
    live_truth, horizon = closed_windows(unrated, LATENESS)
    live_truth = {k: v for k, v in live_truth.items() if not k[1].startswith("rated=")}
    wait_for(lambda: all(k in (got := latest_rows(clickhouse)) and same(got[k][0], v)
                         for k, v in live_truth.items()),
             timeout=120, interval=2.0, what="the live days' windows, final")

    export = tmp_path / "export.jsonl"
    export.write_text("".join(json.dumps(json.loads(encode_touchpoint(e))) + "\n"
                              for e in [*history, *ancient]))
    result = journey_import(settings, str(export))
    assert result.returncode == 0, result.stderr
    assert summary(result)[1] == len(history) + len(ancient)

    # Truth: every window holds all its events, except the windows that ended more than
    # the horizon before the watermark's horizon: those lack the ancient answers.
    everything, _ = closed_windows([*events, *ancient], LATENESS)
    without_ancient, _ = closed_windows(events, LATENESS)
    cutoff: datetime = horizon - REVISION
    expected = {k: v for k, v in everything.items()
                if k[3] + _size(k[2]) > cutoff or k in without_ancient}
    for k in expected:
        if k[3] + _size(k[2]) <= cutoff:
            expected[k] = without_ancient[k]
    lacking = [k for k in everything if k[3] + _size(k[2]) <= cutoff and k not in without_ancient]
    revisable = [k for k in everything if k[3] + _size(k[2]) > cutoff
                 and k not in without_ancient]
    assert lacking and revisable  # the ancient answers fall on both sides of the horizon
    got = wait_until_equal(clickhouse, expected, [worker])
    revised = [k for k, row in got.items() if row[2] > 0]
    assert sum(1 for k in got if k[0] == "ces") > 24 * 5  # the CES answers' windows too
    print(f"{len(got)} windows equal the truth, {len(revised)} revised by the import; "
          f"{len(lacking)} windows past the horizon lack the ancient answers, "
          f"{len(revisable)} longer ones took them")
    assert len(revised) > 100
    # Each ancient answer counts under three dimensions (all, channel, rated=none), and
    # each of those contributions missed the short windows: counted, once.
    assert counter([worker], "journey_cx_window_too_late_total") == 3 * len(ancient)
    # The analyst's view of the windows says which lack samples, and how many.
    lacks: dict[WindowKey, int] = {}
    for e in ancient:
        for dimension in ("all", f"channel={e.channel}", "rated=none"):
            for spec in WINDOWS:
                for start, end in spec.windows_for(e.occurred_at):
                    if end <= cutoff:
                        key = ("nps", dimension, spec.name, start)
                        lacks[key] = lacks.get(key, 0) + 1
    _title, sql = load_queries()["cx_windows_latest"]
    view = {(m, d, w, s): (v, samples, missing) for m, d, w, s, _end, v, samples, _r, _l, missing
            in clickhouse.execute(sql)}
    assert {k: row[2] for k, row in view.items() if row[2]} == lacks
    assert all(view[k][1] == 0 and view[k][0] is None for k in lacking)  # nothing else
    assert all(same(view[k][0], v) for k, v in expected.items())
    # Importing it again changes nothing.
    again = journey_import(settings, str(export))
    assert again.returncode == 0 and summary(again)[2] == len(history) + len(ancient)
    assert latest_rows(clickhouse) == got


def _size(name: str) -> timedelta:
    return spec_named(name).size
