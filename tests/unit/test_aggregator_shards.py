"""The aggregator's table entries stay bounded however far its watermark lags: one
entry grew past Kafka's 1 MB message limit and crashed the worker before sharding."""

from stream_processors.stages.aggregator import SHARD_SECONDS, shard
from stream_processors.windows import WINDOWS


def test_an_entry_holds_at_most_360_windows_of_one_spec() -> None:
    for spec in WINDOWS:
        hop = int(spec.hop.total_seconds())
        starts = range(1_777_000_000 // hop * hop, 1_777_000_000 + 40 * 86400, hop)
        per_shard: dict[str, int] = {}
        for start in starts:
            span = shard(f"{spec.name}|{start}")
            per_shard[span] = per_shard.get(span, 0) + 1
        assert max(per_shard.values()) <= 360, spec.name
        assert SHARD_SECONDS[spec.name] // hop <= 360
        assert all(span.startswith(f"{spec.name}@") for span in per_shard)


def test_the_schedule_gives_each_entry_once_at_its_soonest_time() -> None:
    from stream_processors.stages.aggregator import Schedule

    schedule = Schedule()
    for key, when in [(b"a", 30.0), (b"b", 10.0), (b"a", 20.0), (b"a", 40.0), (b"c", 50.0)]:
        schedule.at(key, when)
    assert schedule.due == {b"a": 20.0, b"b": 10.0, b"c": 50.0}  # the soonest of each
    assert schedule.first_due() == 10.0
    assert schedule.pop(5.0) is None  # nothing due yet
    assert [schedule.pop(25.0), schedule.pop(25.0), schedule.pop(25.0)] == [b"b", b"a", None]
    assert schedule.first_due() == 50.0  # a's items at 30 and 40 were stale
    schedule.at(b"a", 40.0)  # the windows a keeps: due again later
    assert schedule.first_due() == 40.0
    assert [schedule.pop(100.0), schedule.pop(100.0), schedule.pop(100.0)] == [b"a", b"c", None]
    assert schedule.due == {}
    assert schedule.first_due() == float("inf")
