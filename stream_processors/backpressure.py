"""How far the router may run ahead of the stages it feeds.

On a backlog (a pre-filled topic, a restart after an outage) the router reads the public
topic far faster than the stages behind it can take its output: on the bench, routing
took 2 s of the worker's time and the stages behind it 18-23 s. Faust fetches the public
topic as fast as the router empties its buffer, so the internal topics filled with the
whole backlog while the stages that read them had one batch each. Measured on the bench
(10,000 customers, a pre-filled topic): the router took two thirds of the touchpoints
in the first 10 s; the journey partitions had no watermark for 31 s of a 55 s run, as
the progress markers travel behind the data; every CX window stayed open meanwhile,
refreshed every few seconds, and 94,364 of 125,086 windows closed in one batch at the
end (what the worker's RSS climbed by in its last seconds).

So the router's partitions are paused (in aiokafka's consumer: ``consumer.pause_fetching``
says why not Faust's ``pause_partitions``) while any internal partition this worker holds
is more than ``high`` records behind, and resumed once all are at most ``low`` behind.
A record there is one bundle: one batch of the stage upstream, so ``high`` counts
upstream batches not yet taken in.

Off by default: with fetches of at most JOURNEY_BROKER_MAX_POLL_RECORDS the stages already
take turns from the start, and on 25,000 customers a bound of 8 cost 40 % of the
throughput, one of 32 15 %, for 105 and 40 MiB less at the peak (README, Benchmarks).

Only the partitions this worker holds count: with several workers, a router slows for
its own worker's stages, not for another's (each worker's router slows for its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Backlog", "Gate"]


class Backlog:
    """The records each internal partition has that its stage has not yet processed.

    Processed, not fetched: the consumer's fetch position runs ahead by whatever Faust
    holds in its buffers, which is what this has to bound."""

    def __init__(self) -> None:
        #: (topic, partition) → the offset after the last record through its stage.
        self.done: dict[tuple[str, int], int] = {}
        #: (topic, partition) → the offset after the last record this worker sent there.
        self.sent: dict[tuple[str, int], int] = {}

    def acknowledged(self, records: Iterable[Any]) -> None:
        """The broker has these records (metadata: topic, partition, offset): a
        highwater known before any fetch of the partition says it. Measured: the router
        sent 151 of a test's 181 batches before the fetches of the internal partitions
        gave their first highwaters, so a backlog counted by those alone stayed 0."""
        for record in records:
            _past(self.sent, (record.topic, record.partition), record.offset)

    def through(self, events: Sequence[Any]) -> None:
        """A stage's run of ``events`` is committed."""
        for event in events:
            message = event.message
            _past(self.done, (message.topic, message.partition), message.offset)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions revoked: the next holder knows how far it got (and a broker that
        came back empty starts offsets again)."""
        for key in partitions:
            self.done.pop(key, None)
            self.sent.pop(key, None)

    def unknown(self, partitions: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Those of ``partitions`` whose stage has taken nothing in here yet."""
        return [key for key in partitions if key not in self.done]

    def most_behind(self, partitions: Iterable[tuple[str, int]],
                    highwater: Callable[[str, int], int | None],
                    start: Mapping[tuple[str, int], int]) -> int:
        """The most records any of ``partitions`` is behind its highwater (the last
        fetch's, or past the last record sent from here if that is further).

        One whose stage has taken nothing in here yet is behind from ``start``: its
        consumer's position, which runs ahead of the stage by what Faust buffers, but is
        known at once. Not left out: the stages wait for their first batch while the
        router fills their topics (measured: 9 s before the journey stage's first batch
        on the bench). Not counted from its committed offset either: Faust forgets that
        at a rebalance, and a partition with nothing new would then look behind for ever,
        the router held back for good. One with no highwater or start is not behind."""
        most = 0
        for key in partitions:
            fetched, sent = highwater(*key), self.sent.get(key)
            high = sent if fetched is None else fetched if sent is None else max(fetched, sent)
            done = self.done.get(key, start.get(key))
            if high is not None and done is not None:
                most = max(most, high - done)
        return most


def _past(offsets: dict[tuple[str, int], int], key: tuple[str, int], offset: int) -> None:
    """``offsets[key]`` past ``offset``, never back (a replay repeats lower offsets)."""
    if offset >= offsets.get(key, 0):
        offsets[key] = offset + 1


class Gate:
    """Hold back above ``high``, let go at ``low`` or below (hysteresis, so the router
    is not paused and resumed at every check around one value)."""

    def __init__(self, high: int, low: int | None = None) -> None:
        if high < 1:
            raise ValueError("high must be at least 1")
        self.high = high
        self.low = high // 2 if low is None else low
        self.closed = False

    def update(self, behind: int) -> bool | None:
        """True: pause now; False: resume now; None: as it is."""
        if not self.closed and behind > self.high:
            self.closed = True
            return True
        if self.closed and behind <= self.low:
            self.closed = False
            return False
        return None
