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
