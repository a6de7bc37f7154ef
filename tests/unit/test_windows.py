"""Event-time windows: assignment, late events, finality, and agreement with recomputation."""

import random
from datetime import UTC, datetime, timedelta

from stream_processors.cx_metrics import nps
from stream_processors.windows import WINDOWS, Contribution, WindowAggregator, WindowSpec

T = datetime(2026, 5, 4, 10, 7, 30, tzinfo=UTC)


def test_tumbling_and_hopping_assignment() -> None:
    minute = WindowSpec("1m", timedelta(minutes=1), timedelta(minutes=1))
    assert minute.windows_for(T) == [(T.replace(second=0), T.replace(second=0, minute=8))]
    hourly = dict((s.name, s) for s in WINDOWS)["1h"]
    windows = hourly.windows_for(T)
    assert len(windows) == 12  # a 1 h window every 5 min: twelve contain any instant
    assert all(start <= T < end for start, end in windows)
    assert windows[0][0] == datetime(2026, 5, 4, 9, 10, tzinfo=UTC)
    assert windows[-1][0] == datetime(2026, 5, 4, 10, 5, tzinfo=UTC)
    assert [len(s.windows_for(T)) for s in WINDOWS] == [1, 12, 24, 7, 30]


def test_a_window_boundary_belongs_to_the_next_window() -> None:
    minute = WINDOWS[0]
    edge = T.replace(second=0)
    assert minute.windows_for(edge)[0][0] == edge


def nps_contribution(score: int, at: datetime) -> Contribution:
    return Contribution("nps", "all", at, numerator=(score >= 9) - (score <= 6), denominator=1)


def test_late_events_within_the_bound_update_and_final_values_never_change() -> None:
    agg = WindowAggregator(lateness=timedelta(minutes=10), specs=(WINDOWS[0],))
    agg.add([nps_contribution(10, T)])
    agg.add([nps_contribution(0, T + timedelta(minutes=5))])  # watermark 10:12:30
    agg.add([nps_contribution(0, T + timedelta(seconds=5))])  # late, within the bound
    key = ("nps", "all", "1m", T.replace(second=0))
    assert agg.windows[key].ratio() == 0.0  # (1 - 1) / 2
    assert agg.close() == set()  # 10:08 + 10 min is not yet behind 10:12:30
    agg.add([nps_contribution(9, T + timedelta(minutes=20))])  # watermark 10:27:30
    assert key in agg.close()
    agg.add([nps_contribution(0, T)])  # beyond the bound: counted, not applied
    assert (agg.windows[key].ratio(), agg.too_late) == (0.0, 1)


def test_windows_equal_recomputation_whatever_the_order() -> None:
    rng = random.Random(4)
    events = [(rng.randint(0, 10), T + timedelta(minutes=rng.uniform(0, 180)))
              for _ in range(500)]
    shuffled = events[:]
    rng.shuffle(shuffled)
    agg = WindowAggregator(lateness=timedelta(days=365))
    for chunk in range(0, len(shuffled), 37):
        agg.add(nps_contribution(s, at) for s, at in shuffled[chunk:chunk + 37])
    for (metric, _dim, name, start), state in agg.windows.items():
        spec = dict((s.name, s) for s in WINDOWS)[name]
        inside = [s for s, at in events if start <= at < start + spec.size]
        assert state.count == len(inside)
        assert state.ratio() == nps(inside).value, (metric, name, start)


def test_durations_give_quantiles() -> None:
    agg = WindowAggregator(lateness=timedelta(hours=1), specs=(WINDOWS[2],))
    agg.add(Contribution("first_response_seconds", "all", T, duration=d)
            for d in range(1, 1001))
    state = next(iter(agg.windows.values()))
    assert abs(state.quantile(0.9) - 900) / 900 < 0.02
