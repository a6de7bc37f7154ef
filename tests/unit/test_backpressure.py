"""How far the router may run ahead: the backlog counted and the gate's hysteresis."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream_processors.backpressure import Backlog, Gate


def _events(topic: str, partition: int, *offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition,
                                                    offset=offset)) for offset in offsets]


def test_the_backlog_is_what_the_stages_have_not_taken_in_of_each_partition() -> None:
    backlog = Backlog()
    highwaters = {("j", 0): 40, ("j", 1): 12, ("cx", 3): 7}
    held = list(highwaters)
    backlog.through(_events("j", 0, 10, 11, 12))  # through offset 12: 13 onwards waits
    backlog.through(_events("j", 1, 3, 4))
    backlog.through(_events("cx", 3, 6))
    # 40 - 13 = 27, 12 - 5 = 7, 7 - 7 = 0: the most behind counts.
    assert backlog.most_behind(held, lambda t, p: highwaters.get((t, p)), {}) == 27
    backlog.through(_events("j", 0, 39))
    assert backlog.most_behind(held, lambda t, p: highwaters.get((t, p)), {}) == 7
    # A run replayed after a failed batch does not move a partition back.
    backlog.through(_events("j", 1, 11))
    backlog.through(_events("j", 1, 3))
    assert backlog.most_behind(held, lambda t, p: highwaters.get((t, p)), {}) == 0


def test_a_partition_not_yet_through_its_stage_is_behind_from_its_position() -> None:
    backlog = Backlog()
    held = [("j", 0), ("j", 1), ("j", 2), ("j", 3)]
    highwaters = {("j", 0): 30, ("j", 1): 50, ("j", 3): 9}  # ("j", 2): none yet
    positions = {("j", 0): 0, ("j", 1): 45, ("j", 2): 4}  # ("j", 3): being reset
    assert backlog.unknown(held) == held
    assert backlog.most_behind(held, lambda t, p: highwaters.get((t, p)), positions) == 30
    backlog.through(_events("j", 0, 29))
    assert backlog.unknown(held) == held[1:]
    assert backlog.most_behind(held, lambda t, p: highwaters.get((t, p)), positions) == 5
    backlog.through(_events("j", 1, 20))  # through its stage: no longer its position
    assert backlog.most_behind(held, lambda t, p: highwaters.get((t, p)), positions) == 29
    backlog.forget([("j", 1)])  # revoked: known again by its position only
    assert backlog.most_behind(held, lambda t, p: highwaters.get((t, p)), positions) == 5


def test_records_sent_from_here_count_before_any_fetch_says_so() -> None:
    backlog = Backlog()
    held = [("j", 0), ("j", 1)]
    positions = {("j", 0): 0, ("j", 1): 0}
    sent = [SimpleNamespace(topic="j", partition=0, offset=n) for n in (0, 1, 2)]
    backlog.acknowledged([*sent, SimpleNamespace(topic="j", partition=1, offset=6)])
    assert backlog.most_behind(held, lambda t, p: None, positions) == 7
    # A fetch's highwater counts when it is further (another worker sent there too).
    assert backlog.most_behind(held, lambda t, p: 12 if p == 0 else 4, positions) == 12
    backlog.forget(held)
    assert backlog.most_behind(held, lambda t, p: None, positions) == 0


def test_the_gate_closes_above_high_and_opens_only_at_half() -> None:
    gate = Gate(8)
    assert [gate.update(n) for n in (3, 8, 9, 10, 7, 5, 4, 2, 8, 9)] == [
        None, None, True, None, None, None, False, None, None, True]
    assert gate.closed


def test_the_gate_needs_a_positive_bound() -> None:
    with pytest.raises(ValueError):
        Gate(0)
