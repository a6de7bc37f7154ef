"""`journey status` checks the worker group as a whole: every input partition the broker
has is owned by exactly one worker (each worker's /readyz speaks only of itself)."""

from __future__ import annotations

from deploy.status import Component, Group, coverage, format_status, group_whole

PARTITIONS = [f"j.{topic}:{p}" for topic in ("touchpoints", "journey-events") for p in range(3)]


def worker(name: str, inputs: list[str] | None, state: str = "ready") -> Component:
    return Component(name, "worker", f"http://{name}/metrics", f"http://{name}/readyz",
                     state=state, inputs=inputs)


def broker() -> Component:
    return Component("broker", "broker", "kafka://b:9092", "tcp://b:9092", state="up")


def test_a_group_that_owns_every_partition_once_is_whole() -> None:
    found = [broker(), worker("worker-1", PARTITIONS[:4]), worker("worker-2", PARTITIONS[4:])]
    group = Group({"j.touchpoints": 0}, PARTITIONS)
    assert coverage(found, PARTITIONS) == ([], [])
    assert group_whole(found, group)
    text = format_status(found, group, "j")
    assert "partitions: each of the 6 input partitions owned by one of 2 workers" in text
    assert "<-" not in text


def test_a_partition_no_worker_owns_or_two_do_is_named() -> None:
    # worker-2 stopped: what it held is owned by no one until the group rebalances; and
    # worker-1 and worker-3 both say they hold journey-events 0.
    found = [broker(), worker("worker-1", PARTITIONS[:4]), worker("worker-2", None, "down"),
             worker("worker-3", [PARTITIONS[3]])]
    group = Group({}, PARTITIONS)
    assert coverage(found, PARTITIONS) == (PARTITIONS[4:], [PARTITIONS[3]])
    assert not group_whole(found, group)
    text = format_status(found, group, "j")
    assert ("partitions: 2 of 6 input partitions owned by no worker: journey-events[1], "
            "journey-events[2]  <-") in text
    assert "partitions: owned by more than one worker: journey-events[0]  <-" in text


def test_without_the_broker_or_the_workers_word_nothing_is_claimed() -> None:
    found = [broker(), worker("worker-1", None, "down")]
    assert group_whole(found, "broker unreachable (refused)")
    assert "partitions:" not in format_status(found, "broker unreachable (refused)", "j")
    # Workers that do not list their inputs (an older version): no check either.
    assert group_whole(found, Group({}, PARTITIONS))
    assert "partitions:" not in format_status(found, Group({}, PARTITIONS), "j")
