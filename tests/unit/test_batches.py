"""A failure in a stage never loses its batch: data errors isolate the one bad message
(to the dead letters), infrastructure errors stop the worker before anything is acked."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from stream_processors.batches import EXIT_TO_REPLAY, BatchRunner, parts
from stream_processors.clickhouse.rows import COLUMNS
from stream_processors.effects import DEAD_LETTERS, JOURNEY_EVENTS, Committer, Message, Output
from stream_processors.metrics import WorkerMetrics

P = 4


class _Topic:
    def __init__(self, name: str, sent: list) -> None:
        self.name, self.sent = name, sent

    async def send(self, key: bytes, value: bytes, partition: int | None) -> asyncio.Future:
        self.sent.append((self.name, key, value))
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def runner_with(sent: list, rows: list, exits: list) -> BatchRunner:
    async def write(batch: dict) -> None:
        rows.extend((table, row) for table, table_rows in batch.items() for row in table_rows)

    def exit_(status: int) -> None:
        exits.append(status)
        raise SystemExit(status)

    topics = {name: _Topic(name, sent) for name in (JOURNEY_EVENTS, DEAD_LETTERS)}
    return BatchRunner(Committer(write, topics), WorkerMetrics.create(CollectorRegistry()),
                       P, exit=exit_)


def echo(batch: list[Message]) -> Output:
    """A stage that forwards each message, and fails on the value b"poison"."""
    out = Output(P)
    for m in batch:
        if m.value == b"poison":
            raise KeyError("a bug this message triggers")
        out.add(JOURNEY_EVENTS, m.key, m.value)
    return out


def test_a_bad_message_goes_to_the_dead_letters_and_its_batch_still_goes_through() -> None:
    sent: list = []
    rows: list = []
    batch = [Message(0, 10, b"a", b"1"), Message(0, 11, b"b", b"poison"),
             Message(1, 12, b"c", b"3")]
    asyncio.run(runner_with(sent, rows, []).run("update_journey", "t.journey-events", batch,
                                                echo))
    assert [(t, k) for t, k, _ in sent] == [(JOURNEY_EVENTS, b"\x00bundle"), (DEAD_LETTERS, b"b"),
                                            (JOURNEY_EVENTS, b"\x00bundle")]
    letter = msgspec.json.decode(sent[1][2])
    assert (letter["reason"], letter["field"], letter["offset"]) == (
        "processing_error", "update_journey", 11)
    [(table, row)] = rows
    row = dict(zip(COLUMNS["dead_letters"], row, strict=True))
    assert (table, row["reason"], row["partition"], row["offset"]) == (
        "dead_letters", "processing_error", 0, 11)
    assert "KeyError" in row["error"]


def test_an_infrastructure_error_stops_the_worker_before_the_batch_is_acknowledged() -> None:
    def broker_down(batch: list[Message]) -> Output:
        raise KafkaTimeoutError()

    exits: list = []
    with pytest.raises(SystemExit):
        asyncio.run(runner_with([], [], exits).run("route_by_device", "t.touchpoints",
                                                   [Message(0, 1, None, b"{}")], broker_down))
    assert exits == [EXIT_TO_REPLAY]


def test_a_batch_of_bundles_is_applied_in_runs_of_whole_records_of_bounded_messages() -> None:
    # Records as (offset, messages it holds): bundles of various sizes, one too big alone.
    sizes = [3, 4, 1, 9, 12, 2, 2, 2, 5]
    records = list(enumerate(sizes))

    def open_(rs: list) -> list[Message]:
        return [Message(0, offset, b"k", n) for offset, size in rs for n in range(size)]

    runs = list(parts(records, open_, 10))
    # Greedy by hand: [3+4+1]=8 (+9 > 10), [9], [12] alone, [2+2+2]=6 (+5 > 10), [5].
    assert [[offset for offset, _ in run] for run, _ in runs] == [[0, 1, 2], [3], [4],
                                                                  [5, 6, 7], [8]]
    assert [len(messages) for _, messages in runs] == [8, 9, 12, 6, 5]
    # Every message once, in order, each run's messages those of its own records.
    assert [m for _, messages in runs for m in messages] == open_(records)
    for run, messages in runs:
        assert {m.offset for m in messages} == {offset for offset, _ in run}
    assert list(parts([], open_, 10)) == []


def test_a_batch_s_commit_is_timed_step_by_step() -> None:
    """Which wait holds a stage's batches up: ClickHouse (``rows``), the broker's
    acknowledgement of the messages, or of the changelog records (``state``)."""
    slow = 0.3

    async def write(batch: dict) -> None:
        await asyncio.sleep(slow)  # a slow insert

    registry = CollectorRegistry()
    runner = BatchRunner(Committer(write, {JOURNEY_EVENTS: _Topic(JOURNEY_EVENTS, [])}),
                         WorkerMetrics.create(registry), P)

    def stage(batch: list[Message]) -> Output:
        out = echo(batch)
        out.rows["touchpoints"].append(("a row",))
        return out

    asyncio.run(runner.run("update_journey", "t.journey-events", [Message(0, 1, b"a", b"1")],
                           stage))
    took = {}
    for step in ("apply", "rows", "messages", "state", "commit"):
        labels = {"stage": "update_journey", "step": step}
        took[step] = (registry.get_sample_value("journey_stage_batch_seconds_count", labels),
                      registry.get_sample_value("journey_stage_batch_seconds_sum", labels))
    assert all(count == 1 for count, _ in took.values()), took
    assert took["rows"][1] >= slow > took["messages"][1] + took["state"][1]
    assert took["commit"][1] >= took["rows"][1] + took["messages"][1] + took["state"][1]
