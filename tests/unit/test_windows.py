"""Event-time windows: assignment, late events, finality, watermarks, and recomputation."""

import random
from datetime import UTC, datetime, timedelta

import msgspec

from stream_processors.cx_metrics import nps
from stream_processors.windows import (
    WINDOWS,
    Contribution,
    LowWatermark,
    OpenWindows,
    WindowSpec,
    spec_named,
)

T = datetime(2026, 5, 4, 10, 7, 30, tzinfo=UTC)
MINUTE = WINDOWS[0]


def test_tumbling_and_hopping_assignment() -> None:
    minute = WindowSpec("1m", timedelta(minutes=1), timedelta(minutes=1))
    assert minute.windows_for(T) == [(T.replace(second=0), T.replace(second=0, minute=8))]
    windows = spec_named("1h").windows_for(T)
    assert len(windows) == 12  # a 1 h window every 5 min: twelve contain any instant
    assert all(start <= T < end for start, end in windows)
    assert windows[0][0] == datetime(2026, 5, 4, 9, 10, tzinfo=UTC)
    assert windows[-1][0] == datetime(2026, 5, 4, 10, 5, tzinfo=UTC)
    assert [len(s.windows_for(T)) for s in WINDOWS] == [1, 12, 24, 7, 30]


def test_a_window_boundary_belongs_to_the_next_window() -> None:
    edge = T.replace(second=0)
    assert MINUTE.windows_for(edge)[0][0] == edge


def nps_contribution(score: int, at: datetime) -> Contribution:
    return Contribution("nps", "all", at, numerator=(score >= 9) - (score <= 6))


def test_late_events_within_the_bound_update_and_closed_windows_refuse_the_rest() -> None:
    windows = OpenWindows()
    minute = ("1m", T.replace(second=0))
    windows.add([nps_contribution(10, T), nps_contribution(0, T + timedelta(seconds=5))],
                horizon=None, specs=(MINUTE,))
    # Late against the 10:12 events seen since, but the horizon has not passed 10:08.
    touched, _, _, late, *_ = windows.add([nps_contribution(0, T + timedelta(seconds=9))],
                                      horizon=T.replace(minute=2), specs=(MINUTE,))
    assert (touched, late) == ({minute}, 0)
    assert windows.get(minute).ratio() == -100 / 3
    closed = windows.close(T.replace(second=0, minute=8))  # the end itself closes it
    assert list(closed) == [minute] and closed[minute].samples == 3
    assert windows.panes == {}
    touched, _, _, late, *_ = windows.add([nps_contribution(9, T)], horizon=T.replace(minute=8),
                                      specs=(MINUTE,))
    assert (touched, late, windows.panes) == (set(), 1, {})


def test_a_contribution_too_late_for_a_short_window_still_counts_in_longer_ones() -> None:
    windows = OpenWindows()
    touched, _, _, late, *_ = windows.add([nps_contribution(10, T)],
                                      horizon=T + timedelta(minutes=5))
    assert late == 1
    assert {name for name, _ in touched} == {"1h", "24h", "7d", "30d"}


def test_windows_equal_recomputation_whatever_the_order_and_however_split() -> None:
    rng = random.Random(4)
    events = [(rng.randint(0, 10), T + timedelta(minutes=rng.uniform(0, 180)))
              for _ in range(500)]
    shuffled = events[:]
    rng.shuffle(shuffled)
    parts = [OpenWindows(), OpenWindows(), OpenWindows()]  # three partitions' shares
    for n, chunk in enumerate(range(0, len(shuffled), 37)):
        parts[n % 3].add([nps_contribution(s, at) for s, at in shuffled[chunk:chunk + 37]],
                         horizon=None)
    closed = [p.close(T + timedelta(days=60)) for p in parts]
    for key in set().union(*closed):
        name, start = key
        spec = spec_named(name)
        inside = [s for s, at in events if start <= at < start + spec.size]
        states = [c[key] for c in closed if key in c]
        numerator = sum(s.numerator for s in states)
        assert sum(s.samples for s in states) == len(inside)
        assert 100 * numerator / len(inside) == nps(inside).value, key


def test_open_windows_survive_encoding() -> None:
    windows = OpenWindows()
    windows.add([nps_contribution(10, T)], horizon=None)
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(windows), type=OpenWindows)
    assert again == windows and len(again.open_windows()) == 74
    assert sum(len(p) for p in again.panes.values()) == 4  # a pane per hop


def test_low_watermark_waits_for_every_input_and_takes_the_slowest() -> None:
    clock = LowWatermark(channels=3)
    clock.update("t0", T + timedelta(hours=5), idle=False)
    clock.update("t1", T, idle=False)
    assert clock.value is None  # t2 not heard from: it may hold anything
    clock.update("t2", T + timedelta(days=2), idle=False)
    assert clock.value == T
    clock.update("t1", T - timedelta(hours=1), idle=False)  # marks never move back
    assert clock.value == T
    assert clock.advance(timedelta(hours=1)) == T - timedelta(hours=1)
    assert clock.advance(timedelta(hours=1)) is None  # no progress, nothing to close


def test_an_idle_input_holds_nothing_back_until_it_moves_again() -> None:
    clock = LowWatermark(channels=2)
    clock.update("t0", None, idle=True)  # an empty partition
    clock.update("t1", T, idle=False)
    assert clock.value == T
    clock.update("t1", T + timedelta(minutes=1), idle=True)
    assert clock.value == T + timedelta(minutes=1) and clock.idle  # all quiet: all seen
    clock.update("t0", T - timedelta(minutes=10), idle=False)
    assert clock.value == T - timedelta(minutes=10)
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(clock), type=LowWatermark)
    assert again == clock


def test_a_closed_window_never_changes_and_panes_leave_once_no_window_needs_them() -> None:
    windows = OpenWindows()
    windows.add([nps_contribution(10, T)], horizon=None)
    hour_later = T + timedelta(hours=1)
    first = windows.close(hour_later)
    assert first and all(start + spec_named(name).size <= hour_later for name, start in first)
    touched, _, _, late, *_ = windows.add([nps_contribution(0, T)], horizon=hour_later)
    assert late == 1 and all(start + spec_named(name).size > hour_later
                             for name, start in touched)
    rest = windows.close(T + timedelta(days=60))
    assert not set(first) & set(rest)  # what closed is never published again
    assert all(state.samples == 1 for state in first.values())
    assert all(state.samples == 2 for state in rest.values())  # the late one counts here
    assert {name for name, _ in rest} == {"24h", "7d", "30d"}  # every 1 h one had closed
    assert windows.panes == {} and windows.expiry == []


def test_closing_sums_only_the_windows_wanted_and_names_every_one_that_closed() -> None:
    scores = [(10, T), (0, T + timedelta(minutes=7)), (9, T + timedelta(minutes=31))]
    day_later = T + timedelta(days=1, hours=2)
    every, some = OpenWindows(), OpenWindows()
    for windows in (every, some):
        windows.add([nps_contribution(s, at) for s, at in scores], horizon=None)
    early_hour = ("1h", T.replace(hour=9, minute=35, second=0))
    wanted = {early_hour, ("1m", T.replace(second=0))}
    everything = every.close(day_later)
    picked = some.close(day_later, wanted=wanted.__contains__)
    # The same windows close, and panes leave the same way; only the wanted are summed.
    assert set(picked) == set(everything) and some.expiry == every.expiry
    assert {k for k, state in picked.items() if state is not None} == wanted
    # Summed independently: 9:35-10:35 holds the answers of 10:07 and 10:14, not 10:38;
    # the 10:07 minute the first alone.
    assert picked[early_hour].ratio() == nps([10, 0]).value
    assert picked[("1m", T.replace(second=0))].ratio() == nps([10]).value


def test_a_contribution_taken_back_leaves_the_window_as_before() -> None:
    from stream_processors.windows import Contribution, WindowState

    state = WindowState()
    at = datetime(2026, 5, 1, tzinfo=UTC)
    state.add(Contribution("on_time_rate", "all", at, 1.0))
    state.add(Contribution("on_time_rate", "all", at, 0.0))
    state.add(Contribution("on_time_rate", "all", at, -1.0, -1.0, -1))
    assert (state.numerator, state.denominator, state.samples) == (0.0, 1.0, 1)


def test_a_late_contribution_revises_closed_windows_within_the_horizon_only() -> None:
    """With a revision horizon, a closed window's panes are settled (handed over as they
    leave) and a late contribution to them is handed back with the windows it revises;
    past the horizon it misses them."""
    revision = timedelta(days=2)
    windows = OpenWindows()
    windows.add([nps_contribution(10, T)], horizon=None, revision=revision)
    day_later = T + timedelta(days=1, hours=2)
    settled: dict[tuple[int, int], float] = {}
    first = windows.close(day_later, settle=lambda hop, start, state: settled.__setitem__(
        (hop, start), state.samples))
    hour = ("1h", T.replace(minute=0, second=0))
    assert first[hour].samples == 1
    pane = int(T.timestamp())
    assert settled == {(60, pane // 60 * 60): 1, (300, pane // 300 * 300): 1,
                       (3600, pane // 3600 * 3600): 1}  # the day's pane is still live
    late_at = T + timedelta(minutes=1)
    added = windows.add([nps_contribution(0, late_at)], horizon=day_later, revision=revision)
    # Every window holding 10:01:30 that ended by the horizon is revised, the rest are open.
    holding = {(spec.name, start): end for spec in WINDOWS
               for start, end in spec.windows_for(late_at)}
    assert (added.late, added.missed, added.lacking) == (1, 0, [])
    assert added.revised == {key for key, end in holding.items() if end <= day_later}
    assert added.touched == {key for key, end in holding.items() if end > day_later}
    late = int(late_at.timestamp())
    assert sorted(added.to_settled) == [(0, 60, late // 60 * 60), (0, 300, late // 300 * 300),
                                        (0, 3600, late // 3600 * 3600)]
    # Past the horizon of the short windows: missed there, and said through when.
    much_later = T + timedelta(days=3, hours=1)
    windows.close(much_later)
    added = windows.add([nps_contribution(0, T + timedelta(minutes=2))], horizon=much_later,
                        revision=revision)
    assert (added.late, added.missed, added.lacking) == (0, 1, [0])
    assert added.lacking_through == much_later - revision
    late_at = T + timedelta(minutes=2)
    holding = {(spec.name, start): end for spec in WINDOWS
               for start, end in spec.windows_for(late_at)}
    assert added.touched == {key for key, end in holding.items() if end > much_later}
    assert added.revised == {key for key, end in holding.items()
                             if much_later - revision < end <= much_later}
    # The minute, 5-minute and hour panes are past it; the day's pane is still live
    # (30-day windows are open), so nothing is handed over.
    assert added.to_settled == []


def test_settled_spans_hold_60_panes_and_leave_past_the_horizon() -> None:
    from stream_processors.windows import SETTLED_SPAN, settled_expiry, settled_span

    assert SETTLED_SPAN[60] == 3600 and settled_span(60, 7200 + 59 * 60) == 2
    # The last pane of span 2 (minutes) is in a 1 m window ending at 3 h: revisable a day.
    assert settled_expiry(60, 2, timedelta(days=1)) == 3 * 3600 + 86400
    # A day's pane is held by 30-day windows: its span leaves 30 days after its last.
    assert settled_expiry(86400, 0, timedelta(0)) == 60 * 86400 - 86400 + 30 * 86400
