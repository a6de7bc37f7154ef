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
    # Offsets Faust knows hold no record (a gap) do not hold it back.
    assert Consumer._new_offset(consumer(100, [101], gap=(100, 101)), TP) == 102


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
