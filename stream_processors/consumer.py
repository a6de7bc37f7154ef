"""What Faust's consumer knows about a partition that it does not readily say.

Used by the topology: which events of a batch still belong to this worker's current
generation, whether a source partition is caught up (for idle watermarks) and how far
each partition lags (for ops). These read aiokafka's and Faust's internals, in one
place, so an upgrade that moves them breaks here only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition

__all__ = ["caught_up", "disown_stale", "fetched_within", "guard_commits", "lag",
           "seek_uncommitted_to_start"]


def caught_up(app: Any, tp: TopicPartition, done: int, fresh_seconds: float) -> bool:
    """Whether the worker has processed ``tp`` up to its highwater (``done``: the offset
    after the last record whose outputs are acknowledged).

    Only by a highwater that is fresh: while a rebalance or a pause stops fetching, the
    last one stays equal to the position, and every partition looked idle at once; the
    watermark then jumped to the furthest event seen (measured: five weeks of CX windows
    closed early, their touchpoints all too late). And processed, not fetched: the fetch
    position runs ahead by whatever Faust holds in its buffers (measured: a restarted
    worker's partitions looked idle while the records it had just fetched still waited).
    """
    if app.rebalancing or not fetched_within(app, tp, fresh_seconds):
        return False
    consumer = app.consumer
    try:
        highwater = consumer.highwater(tp)
    except Exception:  # just revoked
        return False
    committed = consumer._committed_offset.get(tp) or 0
    return highwater is not None and max(done, committed) >= highwater


def fetched_within(app: Any, tp: TopicPartition, seconds: float) -> bool:
    """Whether the consumer heard from the broker about ``tp`` in the last ``seconds``."""
    try:
        # aiokafka knows when each partition's last fetch response came; Faust does not say.
        aio = app.consumer._thread._ensure_consumer()
        stamp = aio.last_poll_timestamp(tp)
    except Exception:  # not assigned (any more), or no fetch yet
        return False
    return stamp is not None and time.time() * 1000 - stamp <= seconds * 1000


async def lag(app: Any) -> list[tuple[str, int, int]]:
    """(topic, partition, records behind the highwater) of each assigned input partition.

    Inputs only: the changelog partitions in the assignment are read by recovery, not by
    the streams, and an idle one kept reading 1 behind its highwater for ever."""
    consumer = app.consumer
    out = []
    for tp in consumer.assignment():
        if not app.topics.acks_enabled_for(tp.topic):
            continue
        try:
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
        except Exception:  # not fetched yet, or just revoked
            continue
        if position is not None and highwater is not None:
            out.append((tp.topic, tp.partition, max(0, highwater - position)))
    return out


def disown_stale(app: Any, events: Sequence[Any]) -> list[Any]:
    """The events of the consumer's current generation; the others are disowned.

    Faust's ``take_events`` may hold events fetched before a rebalance, and it
    acknowledges a batch whatever happened meanwhile. After a rebalance Faust forgets
    the committed offset of every partition it was given again, so one stale event's
    acknowledgement is enough to commit past the records the new generation has not
    processed yet; a kill then loses them (measured: 1,922 anonymous touchpoints of a
    fault run, in whole runs of offsets). A disowned event is marked acknowledged
    without being counted, so Faust never commits it; the partition's owner reads it
    again from the last commit. Called before a batch (stale events are not processed)
    and after it (a rebalance during the batch: its output stands, and is redone
    idempotently by the owner).
    """
    generation = app.consumer_generation_id
    fresh = []
    for event in events:
        message = event.message
        if message.generation_id == generation:
            fresh.append(event)
        elif not message.acked:
            message.acked = True  # Consumer.ack() now skips it: its offset is not counted
            app.consumer._unacked_messages.discard(message)
    return fresh


def guard_commits() -> None:
    """Make Faust's consumer never commit past a record it was not told was processed.

    Faust's ``Consumer._new_offset`` commits the first run of consecutive acknowledged
    offsets, and guards against a hole at its head with ``min(acked) - committed > 1``:
    one record at the committed offset may be missing and the run is committed anyway
    (the committed offset is the next one to read, so any ``min(acked) > committed`` is a
    hole). With bundles one record carries a whole batch of touchpoints. Here a hole at
    the head holds the commit back, unless Faust itself recorded it as a gap (offsets with
    no record, e.g. transaction markers): a record not yet processed is read again after
    a crash, never skipped.
    """
    from faust.transport.consumer import Consumer

    original = getattr(Consumer, "_journey_original_new_offset", Consumer._new_offset)

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed:
            gap = self._gap.get(tp)
            if gap is None or not gap.overlaps(committed):
                return None
        return original(self, tp)

    Consumer._journey_original_new_offset = original  # type: ignore[attr-defined]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


def seek_uncommitted_to_start() -> None:
    """Make Faust's seek after a rebalance reset every input partition that has no
    committed offset to its start, and remember that start as its committed offset.

    Faust seeks each partition to its committed offset once a rebalance's recovery is
    done (``Consumer.perform_seek``), so that whatever its streams skipped meanwhile (records
    fetched while flow was paused, or of the previous generation) is read again.
    aiokafka's ``seek_to_committed`` seeks only to an offset above 0, and Faust then
    records no committed offset: a partition this group never committed keeps the
    position its fetcher reached during recovery, and the records skipped there are
    never read. With no committed offset known, :func:`guard_commits` cannot see the
    hole either, and the first commit goes past it. Measured in the fault suite: the
    first bundles of CX partials (offsets 0-2 of two partitions, produced just before a
    worker was killed) were never aggregated, and 2,031 CX windows were missing.
    """
    from faust.transport.consumer import Consumer

    original = getattr(Consumer, "_journey_original_perform_seek", Consumer.perform_seek)

    async def perform_seek(self: Any) -> None:
        await original(self)
        inputs = [tp for tp in self.assignment()
                  if self.app.topics.acks_enabled_for(tp.topic)
                  and not self._committed_offset.get(tp)]
        if not inputs:
            return
        starts = await self._thread.call_thread(_seek_to_start, self._thread, inputs)
        for tp, start in starts.items():
            self._committed_offset[tp] = start
            self._read_offset[tp] = start

    Consumer._journey_original_perform_seek = original  # type: ignore[attr-defined]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


async def _seek_to_start(thread: Any, tps: list[Any]) -> dict[Any, int]:
    """On the consumer's thread: seek ``tps`` to their first offset; returns it."""
    aio = thread._ensure_consumer()
    starts = await aio.beginning_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
    out = {}
    for tp in tps:
        start = starts[TopicPartition(tp.topic, tp.partition)]
        aio.seek(TopicPartition(tp.topic, tp.partition), start)
        out[tp] = start
    return out
