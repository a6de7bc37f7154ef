"""Faust never commits past a record it was not told was processed: a hole at the head
of the acknowledged offsets holds the commit back (Faust alone let one record slip)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from stream_processors.consumer import guard_commits

TP = ("t", 0)


def consumer(committed: int | None, acked: list[int], gap: tuple[int, int] | None = None):
    gaps: defaultdict = defaultdict(IntervalTree)
    if gap:
        gaps[TP].addi(*gap)
    return SimpleNamespace(_acked=defaultdict(list, {TP: list(acked)}),
                           _committed_offset=defaultdict(lambda: None, {TP: committed}),
                           _gap=gaps, _acked_index=defaultdict(set, {TP: set(acked)}))


def test_a_hole_at_the_head_holds_the_commit_back() -> None:
    original = getattr(Consumer, "_journey_original_new_offset", Consumer._new_offset)
    assert original(consumer(100, [101, 102]), TP) == 103  # Faust alone: 100 skipped
    guard_commits()
    assert Consumer._new_offset(consumer(100, [101, 102]), TP) is None
    assert Consumer._new_offset(consumer(100, [100, 101]), TP) == 102
    assert Consumer._new_offset(consumer(None, [0, 1]), TP) == 2
    # Offsets known to hold no record (a gap) do not hold it back.
    assert Consumer._new_offset(consumer(100, [101], gap=(100, 101)), TP) == 102
    # Faust no longer takes a jump in delivered offsets for a gap (it was one of its own
    # dropped deliveries, and it committed past the records).
    import asyncio
    c = consumer(100, [100, 101, 105])
    asyncio.run(Consumer._add_gap(c, TP, 102, 105))
    assert not c._gap[TP] and Consumer._new_offset(c, TP) == 102


def test_a_topics_commit_limit_holds_its_offsets_back_until_it_moves() -> None:
    """The router's offsets are committed only as far as an acknowledged watermark
    covered them (stages/routing.py, Router.commit_limit)."""
    from stream_processors.consumer import COMMIT_LIMITS

    guard_commits()
    limits: dict[int, int | None] = {0: None}
    COMMIT_LIMITS["t"] = limits.get
    try:
        c = consumer(100, [100, 101, 102, 103])
        assert Consumer._new_offset(c, TP) is None  # no marker yet: nothing
        limits[0] = 102
        assert Consumer._new_offset(c, TP) == 102  # up to the marker's
        assert c._acked[TP] == [102, 103]  # the rest kept, for later
        c._committed_offset[TP] = 102
        assert Consumer._new_offset(c, TP) is None  # nothing more below the limit
        limits[0] = 110
        assert Consumer._new_offset(c, TP) == 104
    finally:
        del COMMIT_LIMITS["t"]
    assert Consumer._new_offset(consumer(100, [100, 101]), TP) == 102  # no limit: as before


def test_a_partition_never_committed_is_read_again_from_its_start() -> None:
    """aiokafka seeks only to a committed offset above 0: without the fix, a partition
    this group never committed kept the position its fetcher reached while the streams
    skipped records (measured: CX partials never aggregated)."""
    import asyncio

    from stream_processors.consumer import seek_uncommitted_to_start

    class Aio:
        def __init__(self) -> None:
            self.positions = {("in", 0): 3, ("in", 1): 9, ("t-changelog", 0): 5}

        async def beginning_offsets(self, tps):
            return {tp: 0 for tp in tps}

        def seek(self, tp, offset) -> None:
            self.positions[(tp.topic, tp.partition)] = offset

    class Thread:
        def __init__(self) -> None:
            self.aio = Aio()

        def _ensure_consumer(self) -> Aio:
            return self.aio

        async def call_thread(self, fun, *args):
            return await fun(*args)

    class Fake:  # only what perform_seek touches
        def __init__(self) -> None:
            self._thread = Thread()
            self._committed_offset = defaultdict(lambda: None)
            self._read_offset = defaultdict(lambda: None)
            self.app = SimpleNamespace(topics=SimpleNamespace(
                acks_enabled_for=lambda topic: topic == "in"))

        def assignment(self):
            from faust.types import TP as FaustTP
            return {FaustTP("in", 0), FaustTP("in", 1), FaustTP("t-changelog", 0)}

        async def seek_to_committed(self):
            from faust.types import TP as FaustTP
            return {FaustTP("in", 0): None, FaustTP("in", 1): 7}  # like aiokafka's

    original = getattr(Consumer, "_journey_original_perform_seek", Consumer.perform_seek)
    fake = Fake()
    asyncio.run(original(fake))  # Faust's alone
    assert fake._thread.aio.positions[("in", 0)] == 3  # left where the fetcher was
    seek_uncommitted_to_start()
    fake = Fake()
    asyncio.run(Consumer.perform_seek(fake))
    aio = fake._thread.aio
    assert aio.positions == {("in", 0): 0, ("in", 1): 9, ("t-changelog", 0): 5}
    committed = {(tp.topic, tp.partition): o for tp, o in fake._committed_offset.items()}
    assert committed == {("in", 0): 0, ("in", 1): 7}  # a hole at 0 now holds commits back


def test_a_batch_that_skips_records_is_held_back_and_the_partition_read_again() -> None:
    """Faust counts a record as read when its delivery to the stream is cancelled by a
    flow stop; the worker then never saw it (measured: one touchpoint lost per restart in
    a few)."""
    import asyncio

    from stream_processors.consumer import Continuity

    seeks: list[tuple] = []

    async def seek_wait(partitions) -> None:
        seeks.extend(partitions.items())

    from aiokafka import TopicPartition

    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)
    fake = SimpleNamespace(consumer_generation_id=1, consumer=SimpleNamespace(
        _committed_offset=defaultdict(lambda: None, {tp: 262, other: 10}),
        _gap=defaultdict(IntervalTree), _unacked_messages=set(), seek_wait=seek_wait))

    class Message:  # hashable, as Faust's are
        def __init__(self, tp: TopicPartition, offset: int) -> None:
            self.tp, self.offset, self.acked = tp, offset, False

    def events(partition, *offsets):
        return [SimpleNamespace(message=Message(partition, o)) for o in offsets]

    continuity = Continuity()
    # The first record after the last commit (262) never came; partition 1 is whole.
    batch = events(tp, 263, 264) + events(other, 10, 11)
    kept = asyncio.run(continuity.check(fake, batch))
    assert [(e.message.tp, e.message.offset) for e in kept] == [(other, 10), (other, 11)]
    assert seeks == [(tp, 262)]
    assert all(e.message.acked for e in batch[:2])  # disowned: never committed by Faust
    # Read again from 262: whole now, and a later batch follows on.
    assert len(asyncio.run(continuity.check(fake, events(tp, 262, 263, 264)))) == 3
    assert len(asyncio.run(continuity.check(fake, events(tp, 265)))) == 1
    # One record lost after a batch: held back again, from exactly there.
    assert asyncio.run(continuity.check(fake, events(tp, 267, 268))) == []
    assert seeks[-1] == (tp, 266)
    # Records fetched before the seek still come: held back, not sought again at once;
    # the timer seeks again once a hole has waited RESEEK_SECONDS.
    assert asyncio.run(continuity.check(fake, events(tp, 269))) == [] and len(seeks) == 2
    asyncio.run(continuity.reseek(fake))
    assert len(seeks) == 2
    continuity.RESEEK_SECONDS = 0.0
    asyncio.run(continuity.reseek(fake))
    assert seeks[-1] == (tp, 266) and len(seeks) == 3
    # Offsets Faust knows hold no record (a gap) are no hole; a new generation starts over.
    fake.consumer._gap[tp].addi(266, 267)
    assert len(asyncio.run(continuity.check(fake, events(tp, 267)))) == 1
    fake.consumer_generation_id = 2
    fake.consumer._committed_offset[tp] = 300
    assert len(asyncio.run(continuity.check(fake, events(tp, 300)))) == 1
    asyncio.run(continuity.reseek(fake))  # the hole went with the old generation
    assert len(seeks) == 3
    # Offsets that never come (retention deleted them) are given up after a while, and
    # recorded as a gap so that commits may pass them.
    assert asyncio.run(continuity.check(fake, events(tp, 310))) == []
    continuity.GIVE_UP_SECONDS = 0.0
    assert len(asyncio.run(continuity.check(fake, events(tp, 310)))) == 1
    assert fake.consumer._gap[tp].overlaps(301) and not fake.consumer._gap[tp].overlaps(310)
