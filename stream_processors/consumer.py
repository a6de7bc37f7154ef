"""What Faust's consumer knows about a partition that it does not readily say.

Used by the topology: which events of a batch still belong to this worker's current
generation, whether a source partition is caught up (for idle watermarks) and how far
each partition lags (for ops). These read aiokafka's and Faust's internals, in one
place, so an upgrade that moves them breaks here only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import TopicPartition

__all__ = ["COMMIT_LIMITS", "Continuity", "caught_up", "disown_stale", "fetched_within",
           "guard_commits", "highwater", "inputs", "lag", "pause_fetching", "position",
           "seek_uncommitted_to_start"]

log = logging.getLogger(__name__)


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
    high = highwater(app, tp)
    committed = app.consumer._committed_offset.get(tp) or 0
    return high is not None and max(done, committed) >= high


def highwater(app: Any, tp: TopicPartition) -> int | None:
    """The highwater of ``tp`` as its last fetch response gave it; None before any, or
    once revoked."""
    try:
        return app.consumer.highwater(tp)
    except Exception:  # just revoked
        return None


def fetched_within(app: Any, tp: TopicPartition, seconds: float) -> bool:
    """Whether the consumer heard from the broker about ``tp`` in the last ``seconds``."""
    try:
        # aiokafka knows when each partition's last fetch response came; Faust does not say.
        aio = app.consumer._thread._ensure_consumer()
        stamp = aio.last_poll_timestamp(tp)
    except Exception:  # not assigned (any more), or no fetch yet
        return False
    return stamp is not None and time.time() * 1000 - stamp <= seconds * 1000


def inputs(app: Any) -> list[TopicPartition]:
    """The assigned partitions the streams read: its tables' changelog partitions, also
    in the assignment, are left out (recovery reads them)."""
    consumer = app.consumer
    if consumer is None:
        return []
    return [tp for tp in consumer.assignment() if app.topics.acks_enabled_for(tp.topic)]


async def lag(app: Any) -> list[tuple[str, int, int]]:
    """(topic, partition, records behind the highwater) of each assigned input partition.

    Inputs only: the changelog partitions in the assignment are read by recovery, not by
    the streams, and an idle one kept reading 1 behind its highwater for ever."""
    consumer = app.consumer
    out = []
    for tp in inputs(app):
        try:
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
        except Exception:  # not fetched yet, or just revoked
            continue
        if position is not None and highwater is not None:
            out.append((tp.topic, tp.partition, max(0, highwater - position)))
    return out


async def pause_fetching(app: Any, tps: Sequence[TopicPartition], pause: bool) -> None:
    """Stop (``pause``) or restart fetching ``tps``, in aiokafka's consumer.

    Not Faust's ``pause_partitions``: that only leaves the partitions out of what Faust
    hands to the streams, and records aiokafka had returned already are dropped with the
    position past them (measured: a hole in every paused partition, read again by
    ``Continuity`` each time, and a bench run that stalled). aiokafka's pause drops what
    it fetched and had not returned, its position left before it. The call runs in the
    consumer's thread: a pause makes a future the fetcher waits on, of that thread's
    loop. A rebalance gives the consumer fresh partition states, unpaused."""
    thread = app.consumer._thread

    async def apply() -> None:
        aio = thread._ensure_consumer()
        assigned = aio.assignment()
        mine = [tp for tp in tps if tp in assigned]
        if mine:
            (aio.pause if pause else aio.resume)(*mine)

    await thread.call_thread(apply)


def position(app: Any, tp: TopicPartition) -> int | None:
    """The consumer's fetch position in ``tp``, if it has one (None while aiokafka
    resets it, or once revoked). Read as aiokafka's own ``position`` reads it, without
    that coroutine's wait for a reset, nor a call into the consumer's thread."""
    try:
        aio = app.consumer._thread._ensure_consumer()
        if not aio._subscription.is_assigned(tp):
            return None
        state = aio._subscription.subscription.assignment.state_value(tp)
        return state.position if state.has_valid_position else None
    except Exception:  # no consumer yet, or a rebalance replaced the assignment
        return None


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
        if event.message.generation_id == generation:
            fresh.append(event)
        else:
            _disown(app, event)
    return fresh


def _disown(app: Any, event: Any) -> None:
    """Mark ``event`` acknowledged without counting it: Faust never commits its offset,
    and whoever reads the partition from its last commit processes it."""
    message = event.message
    if not message.acked:
        message.acked = True  # Consumer.ack() now skips it: its offset is not counted
        app.consumer._unacked_messages.discard(message)


class Continuity:
    """Makes sure no record of an input partition is passed over while the worker runs.

    Faust hands a fetched record to the streams with ``wait_first(deliver, flow
    stopped)``: when the flow stops meanwhile (a rebalance, recovery), the delivery is
    cancelled and the record is still counted as read, and Faust relies on its seek after
    recovery to fetch it again. A record whose delivery was cancelled around that seek
    was never seen again. Measured, under CPU load, on a restart: in 3 runs in 15 the
    first records after the first batch of one to three partitions never reached a
    stage, and Faust took the jump in offsets for a gap (offsets with no record), which
    it then committed past (see :func:`guard_commits`).

    So each batch is checked against the next offset expected per partition (the
    committed one to begin with): a batch that starts past it has a hole. Its events of
    that partition are disowned (:func:`_disown`) and the partition is read again from
    the hole, and again every ``RESEEK_SECONDS`` until the hole is filled. Offsets that
    really hold no record (none of our inputs is written in transactions, but a log's
    retention may delete what was not read in time) are accepted as a gap after
    ``GIVE_UP_SECONDS``, with an error in the log.
    """

    #: Seconds before a hole not yet filled is sought again: a seek made while Faust
    #: still delivers records it fetched before it is undone by them (they move its read
    #: offset past the hole, and the records fetched again are dropped as already read).
    RESEEK_SECONDS = 2.0
    GIVE_UP_SECONDS = 60.0

    def __init__(self) -> None:
        self._generation: int | None = None
        self._next: dict[Any, int] = {}
        #: tp → (next offset, last sought at, found at)
        self._holes: dict[Any, tuple[int, float, float]] = {}

    async def check(self, app: Any, events: Sequence[Any]) -> list[Any]:
        """The events to process now, in their order; seeks back where records are
        missing."""
        consumer = app.consumer
        self._on_generation(app)
        keep, found = [], {}
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            if tp in found:
                _disown(app, event)
                continue
            expected = self._next.get(tp, consumer._committed_offset.get(tp))
            if (expected is not None and offset > expected
                    and not _is_gap(consumer, tp, expected)
                    and not self._gives_up(tp, expected, offset, consumer)):
                found[tp] = expected
                _disown(app, event)
                continue
            keep.append(event)
            self._next[tp] = max(offset + 1, expected or 0)
            self._holes.pop(tp, None)
        for tp, expected in found.items():
            if self._holes.get(tp, (None,))[0] == expected:
                continue  # sought already; :meth:`reseek` tries again if need be
            log.warning("%s[%d]: records from offset %d were fetched but never reached "
                        "the stream; reading them again", tp.topic, tp.partition, expected)
            self._holes[tp] = (expected, 0.0, time.monotonic())
            await self._seek(consumer, tp, expected)
        return keep

    async def reseek(self, app: Any) -> None:
        """Seek again to every hole not filled since it was last sought (on a timer:
        records past a hole may never come to show it again)."""
        self._on_generation(app)
        now = time.monotonic()
        for tp, (expected, sought, _found) in list(self._holes.items()):
            if now - sought >= self.RESEEK_SECONDS:
                await self._seek(app.consumer, tp, expected)

    def _gives_up(self, tp: Any, expected: int, offset: int, consumer: Any) -> bool:
        hole = self._holes.get(tp)
        if hole is None or hole[0] != expected or \
                time.monotonic() - hole[2] < self.GIVE_UP_SECONDS:
            return False
        log.error("%s[%d]: offsets %d to %d were sought for %.0f s and hold no record this "
                  "worker can read (deleted by retention?); going on without them",
                  tp.topic, tp.partition, expected, offset - 1, self.GIVE_UP_SECONDS)
        consumer._gap[tp].addi(expected, offset)  # so that commits may pass them
        return True

    async def _seek(self, consumer: Any, tp: Any, offset: int) -> None:
        expected, _sought, found = self._holes[tp]
        self._holes[tp] = (expected, time.monotonic(), found)
        try:
            # On the consumer's own thread, and its read offset with it (Faust's seek()
            # calls aiokafka from this thread: measured, it lost every later record of
            # the partition in one run of ten).
            await consumer.seek_wait({tp: offset})
        except Exception as exc:  # revoked meanwhile: the next owner reads from the commit
            log.warning("%s[%d]: seeking to %d failed (%s)", tp.topic, tp.partition, offset,
                        exc)

    def _on_generation(self, app: Any) -> None:
        if app.consumer_generation_id != self._generation:  # a new assignment: start over
            self._generation, self._next, self._holes = app.consumer_generation_id, {}, {}


def _is_gap(consumer: Any, tp: Any, offset: int) -> bool:
    gap = consumer._gap.get(tp)
    return gap is not None and gap.overlaps(offset)


#: Topic → how far each of its partitions may be committed (the offset after the last
#: record whose effects outside the stream are durable; None: not at all yet). Faust
#: knows only that a record was processed; the router's event time reaches the windows
#: later, in a marker (stages/routing.py, ``Router.commit_limit``).
COMMIT_LIMITS: dict[str, Callable[[int], int | None]] = {}


def guard_commits() -> None:
    """Make Faust's consumer never commit past a record it was not told was processed,
    nor past a topic's ``COMMIT_LIMITS``.

    Faust's ``Consumer._new_offset`` commits the first run of consecutive acknowledged
    offsets, and guards against a hole at its head with ``min(acked) - committed > 1``:
    one record at the committed offset may be missing and the run is committed anyway
    (the committed offset is the next one to read, so any ``min(acked) > committed`` is a
    hole). With bundles one record carries a whole batch of touchpoints. Here a hole at
    the head holds the commit back, unless it is a gap (offsets with no record).

    And Faust no longer infers gaps: it took any jump in the offsets it delivered for
    one, and filled the run to commit with it, while its own cancelled deliveries make
    such jumps over real records (see :class:`Continuity`, which records a gap once it
    has made sure of one). None of our inputs is written in transactions, so their
    offsets have no markers between records.
    """
    from faust.transport.consumer import Consumer

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        return None

    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    original = getattr(Consumer, "_journey_original_new_offset", Consumer._new_offset)

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed:
            gap = self._gap.get(tp)
            if gap is None or not gap.overlaps(committed):
                return None
        topic, partition = tp  # Faust's TP: (topic, partition)
        limit = COMMIT_LIMITS.get(topic)
        if limit is None or not acked:
            return original(self, tp)
        most = limit(partition)
        if most is None:
            return None
        above = [offset for offset in acked if offset >= most]
        if not above:
            return original(self, tp)
        acked[:] = [offset for offset in acked if offset < most]  # Faust's takes its run
        try:
            return original(self, tp) if acked else None
        finally:
            acked.extend(above)
            acked.sort()

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
