"""First hop: validate each touchpoint and route it to its device or its customer.

A touchpoint that names its customer goes straight to the customer's journey (one hop
fewer, and the touchpoint crosses the broker once more, not twice). Only an
``identify`` links a device to a customer: it also sends a small ``Link`` to the
device's partition, where the device's link lives. Any other touchpoint that names both
ids is the customer's, and leaves the device as it was: a track call is no proof that
the device belongs to that customer, and a forged one would otherwise carry a device's
history into someone else's journey. An anonymous touchpoint goes to its device's
partition, which knows whether the device was identified. Invalid input, and times
outside the bounds (schemas/bounds.py: the SDK writes to Kafka directly, so the
collector's check is not enough), go to the dead letters with their reason, never stall.

The router also keeps each source partition's progress, for the watermarks it sends
downstream (stream_processors/windows.py says why): the furthest event time routed
(each touchpoint's time, but no later than when it was received: a client clock that
runs ahead, within the bounds, must not close every CX window early),
when the partition was last active, and the offset after the last touchpoint whose
outputs are acknowledged. All three move only once a batch is committed: a marker may
not say "passed" before the events it passes are delivered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from schemas import SchemaError, decode_touchpoint, encode_touchpoint
from schemas.bounds import TimeBounds
from schemas.privacy import Redaction
from stream_processors.commands import Link, Touch, Watermark, encode_command
from stream_processors.effects import BY_DEVICE, JOURNEY_EVENTS, Message, Output
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages.per_partition import PerPartition

__all__ = ["Router", "SourceProgress"]

log = logging.getLogger(__name__)


class SourceProgress:
    """One touchpoint partition, as far as this worker took it."""

    __slots__ = ("done", "event_time", "marked", "seen")

    def __init__(self, now: float) -> None:
        #: The latest event time routed and acknowledged.
        self.event_time: datetime | None = None
        #: Monotonic time of the last touchpoint taken in or committed (quiet since).
        self.seen = now
        #: The offset after the last touchpoint routed and committed.
        self.done = 0
        #: ``done`` as the last watermark the broker acknowledged covered it (None: none
        #: since this worker took the partition): offsets are committed up to here only.
        self.marked: int | None = None


class Router:
    def __init__(self, metrics: WorkerMetrics, partitions: int, topic: str,
                 bounds: TimeBounds | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 redaction: Redaction | None = None) -> None:
        self.metrics = metrics
        self.partitions = partitions
        self.topic = topic  # the touchpoints topic's name, for dead letters
        self.bounds = bounds or TimeBounds()
        #: Personal data redacted here too: a producer other than ours (or an SDK with
        #: other settings) may have sent it in clear, and it is to reach neither the
        #: internal topics nor ClickHouse so.
        self.redaction = redaction or Redaction("")
        self.clock = clock
        self.sources: PerPartition[SourceProgress] = PerPartition(
            lambda _partition: SourceProgress(clock()))

    def route(self, batch: Sequence[Message], now: datetime) -> Output:
        """``batch``: raw touchpoints as received."""
        out = Output(self.partitions)
        progress: dict[int, datetime] = {}
        links: dict[str, str] = {}  # device → the customer last linked in this batch
        for message in batch:
            # Activity counts from intake, not only from the commit: a batch being routed
            # is not quiet (see the fault suite's notes in the README).
            self.sources[message.partition].seen = self.clock()
            try:
                tp = self.bounds.check(decode_touchpoint(message.value), now)
            except SchemaError as exc:
                self._dead_letter(out, message, exc, now)
                continue
            raw: bytes = message.value
            redacted = self.redaction.apply(tp)
            if redacted is not tp:
                tp, raw = redacted, encode_touchpoint(redacted)
            at = min(tp.occurred_at, tp.received_at or now)
            if message.partition not in progress or at > progress[message.partition]:
                progress[message.partition] = at
            self.metrics.touchpoints_processed.labels(tp.type).inc()
            self.metrics.processing_lag_seconds.observe(
                max(0.0, (now - tp.occurred_at).total_seconds()))
            if tp.customer_id:  # straight to its journey; the device, if any, learns the link
                out.add(JOURNEY_EVENTS, tp.customer_id.encode(),
                        encode_command(Touch(tp.customer_id, [raw])))
                if (tp.type == "identify" and tp.anonymous_id
                        and links.get(tp.anonymous_id) != tp.customer_id):
                    links[tp.anonymous_id] = tp.customer_id
                    out.add(BY_DEVICE, tp.anonymous_id.encode(),
                            encode_command(Link(tp.customer_id)))
            else:  # anonymous: its device's partition knows where it belongs
                out.add(BY_DEVICE, tp.anonymous_id.encode(),
                        encode_command(Touch(None, [raw])))
        out.then(lambda: self._committed(batch, progress))
        return out

    def _committed(self, batch: Sequence[Message], progress: dict[int, datetime]) -> None:
        # Quiet counts from here: a batch still committing is not idle (the consumer's
        # position says fetched, not processed; measured: a 3 s wait on acks let the
        # watermark overtake buffered touchpoints, which then missed their windows).
        finished = self.clock()
        for message in batch:
            source = self.sources[message.partition]
            source.seen = finished
            source.done = max(source.done, message.offset + 1)
        for partition, at in progress.items():
            source = self.sources[partition]
            if source.event_time is None or at > source.event_time:
                source.event_time = at

    def watermarks(self, partitions: Iterable[int], idle_seconds: float,
                   caught_up: Callable[[int, int], bool],
                   ) -> tuple[list[Watermark], dict[int, int]]:
        """Each source partition's marker, and the offset each covers (give it to
        :meth:`marked` once the markers are acknowledged). A partition is idle, and
        stops holding windows open, once it had no touchpoint for ``idle_seconds`` and
        ``caught_up(partition, done)`` (the consumer's view: fetched lately, nothing
        left to process below the highwater)."""
        marks, covered = [], {}
        now = self.clock()
        for partition in partitions:
            source = self.sources[partition]
            idle = now - source.seen > idle_seconds and caught_up(partition, source.done)
            marks.append(Watermark(f"t{partition}", source.event_time, idle))
            covered[partition] = source.done
        return marks, covered

    def marked(self, covered: dict[int, int]) -> None:
        """The markers of :meth:`watermarks` are in the broker: their offsets may be
        committed."""
        for partition, done in covered.items():
            if partition in self.sources:  # still this worker's
                source = self.sources[partition]
                source.marked = max(done, source.marked or 0)

    def commit_limit(self, partition: int) -> int | None:
        """How far a touchpoint partition's offsets may be committed: up to the last
        acknowledged marker's, so that what it routed is in a marker before its records
        are done (None: not at all yet).

        Why: a partition's event time lives in this worker's memory and reaches the
        windows only in a marker. Committed past the last one, a handover lost it: the
        next owner routes nothing of it again. Measured in the fault suite's SIGTERM
        scenario: the last second's touchpoints (one 11-25 event, others 11-18) routed
        and committed, no marker past 11-18 12:31, and 467-484 final CX windows never
        written (5 runs in 14 of two versions of the journey stage). Held back like this, the
        next owner routes those records again (idempotent downstream) and marks them."""
        return self.sources[partition].marked if partition in self.sources else None

    def _dead_letter(self, out: Output, message: Message, exc: SchemaError,
                     now: datetime) -> None:
        raw: bytes = message.value
        self.metrics.dead_letters.labels(exc.reason).inc()
        log.warning("dead letter %s[%d]@%d: %s", self.topic, message.partition, message.offset,
                    exc)
        out.dead_letter(self.topic, message, exc.reason, exc.field, exc.detail, raw, now)
