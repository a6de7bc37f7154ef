"""Last hop, keyed by metric and dimension: the sum of the journey partitions' parts.

Each journey partition sends its part of a window (its whole part so far) and its
horizon; the aggregator keeps the latest part of each partition and writes the window's
row to ``cx_metrics``: while open, at most every JOURNEY_CX_UPDATE_SECONDS however many
parts changed it; once every partition's horizon passed its end, a final row. A closed
window stays for the revision horizon: a part that changes it then (late data) writes a
revision row in the same batch (``revision`` + 1, ``late_samples``); after that it
leaves the table, and later parts for it are counted as too late.

Table ``cx-windows``, per aggregator partition: ``<p>|<metric>|<dimension>|<shard>`` →
the open windows of one spec whose starts fall in one span (:func:`shard`), and
``<p>|#<metric>|<dimension>|<shard>`` → its closed ones, while they can be revised; so
a batch costs a few changelog records per metric and dimension it touched, not one per
window, and an entry stays far below Kafka's 1 MB message limit however far the
watermark lags;
``<p>|`` → the partition's low watermark over every journey partition's horizon.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from stream_processors.clickhouse.rows import metric_row
from stream_processors.commands import WATERMARK_KEY, Partial, Tick, Watermark, encode_command
from stream_processors.contributions import SCALES
from stream_processors.effects import (
    CX_PARTIALS,
    Message,
    Output,
    Store,
    keys_with,
    named_partition,
)
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages.partials import clock_key, kept_apart
from stream_processors.stages.per_partition import Decoded, PerPartition, Unpublished
from stream_processors.windows import TIME_CACHE, WINDOWS, LowWatermark, spec_named

__all__ = ["SHARD_SECONDS", "Aggregator", "AggregatorState", "Schedule", "Window", "shard"]

class Window(msgspec.Struct, array_like=True):
    """One window: the latest part of each journey partition, and how far it got."""

    parts: dict[int, Partial] = {}
    #: -1 while open; then how many rows it had since its final row (0: just that one).
    revision: int = -1
    #: Samples in its first final row: later rows say how many came since.
    final_samples: int = 0

    @property
    def closed(self) -> bool:
        return self.revision >= 0


#: An entry's windows: window (`<name>|<start>`) → its state, decoded (``Window``) only
#: once a batch touches it (``_window``); the others stay ``msgspec.Raw``, slices of the
#: stored bytes, and are written back as they were.
#:
#: Why: an entry holds the windows of a span (72 one-hour windows, 360 one-minute ones)
#: and a batch usually touches a few. Replaying the aggregator's input captured from the
#: 50,000-customer bench (136 batches, 872,747 parts) in-process: 23.3 CPU seconds when
#: every window of every entry touched was decoded, 17.5 s like this, the same rows.
AggregatorState = dict[str, "Window | msgspec.Raw"]
#: Windows of one spec whose starts fall in the same span share a table entry (a 6 h
#: span holds 360 one-minute windows).
SHARD_SECONDS = {spec.name: int(max(spec.size, timedelta(hours=6)).total_seconds())
                 for spec in WINDOWS}

_decoder = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
_window_decoder = msgspec.msgpack.Decoder(Window)
#: Encoded bytes of entries kept between batches, per partition (with the windows a batch
#: decoded: at most about nine times as much): the windows around the watermark, which
#: most batches touch.
#: Measured with py-spy on the 10,000-customer bench: decoding entries took 5.1 % of the
#: worker's samples without this, 2.6 % with 256 KiB, 0.6 % with 1 MiB. 1 MiB cost 33-41
#: MiB of RSS at the end of the 10,000- and 20,000-customer runs (65 MiB at the peak)
#: for no throughput the bench could tell from its noise.
DECODED_BYTES = 256 * 1024


def shard(window: str) -> str:
    """The span a window (`<name>|<start>`) is kept in: `<name>@<n>`."""
    name, start = window.split("|")
    return f"{name}@{int(start) // SHARD_SECONDS[name]}"


class Schedule:
    """When each table entry next has a window to close, or a closed one to leave the
    table: one heap item per entry, not one per window.

    Why per entry: the windows of an entry close in order of their starts, so a batch
    whose horizon passes one usually passes its neighbours too, and one heap item per
    window (a tuple, the key and the window's name, for every window of the revision
    horizon) is a lot to hold: on the 20,000-customer bench workload, in-process, the
    aggregator's live memory at the end fell from 46 to 36 MB with this.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, bytes]] = []
        #: Each entry's soonest time; a heap item that no longer matches it is stale.
        self.due: dict[bytes, float] = {}

    def at(self, key: bytes, when: float) -> None:
        """A window of ``key`` is due at ``when``."""
        if when < self.due.get(key, float("inf")):
            self.due[key] = when
            heapq.heappush(self._heap, (when, key))

    def pop(self, until: float) -> bytes | None:
        """An entry with a window due by ``until`` (taken off the schedule: put it back
        with :meth:`at` for the windows it keeps), or None."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, key = heapq.heappop(heap)
            if self.due.get(key) == when:
                del self.due[key]
                return key
        return None

    def first_due(self) -> float:
        """When the soonest entry is due (infinity if none): stale heap items go."""
        heap = self._heap
        while heap and self.due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else float("inf")


_TICK = encode_command(Tick())


class _Held:
    """What this process knows of one aggregator partition."""

    def __init__(self) -> None:
        #: When each table entry has a window to close (or a closed one leaves the table:
        #: its end plus the revision horizon); built from the table when first needed.
        self.closing: Schedule | None = None
        #: (table key, window) whose rows are to be written.
        self.unpublished = Unpublished()
        self.decoded: Decoded[AggregatorState] = Decoded(DECODED_BYTES)
        #: The partition's low watermark as its last batch left it (a timestamp), to
        #: tell whether closings are left for the next batch (``waiting``).
        self.horizon: float | None = None


class Aggregator:
    """``rows_per_batch`` bounds the rows a batch writes for closing and open windows
    (a window's revision, and the windows of the last entry it closes, may go past it);
    what is left is carried into the next batches, and a batch that leaves some sends
    its partition a :class:`Tick`, so it goes on without input.

    Why: each row is a transient of about 500 bytes until the batch is committed. A
    worker draining a backlog refreshed 44,000-58,000 open windows in one batch on the
    50,000-customer bench, and each such batch raised its RSS by 22-32 MiB for good;
    the final closing wrote 150,000 rows in one.
    """

    def __init__(self, metrics: WorkerMetrics, partitions: int, update_seconds: float,
                 clock: Callable[[], float] = time.monotonic,
                 revision: timedelta = timedelta(0),
                 rows_per_batch: int | None = None) -> None:
        self.metrics = metrics
        self.partitions = partitions
        self.update_seconds = update_seconds
        self.clock = clock
        self.revision = revision
        self.rows_per_batch = rows_per_batch if rows_per_batch else float("inf")
        self.held: PerPartition[_Held] = PerPartition(lambda _partition: _Held())

    def aggregate(self, batch: Sequence[Message], cx_windows: Store, now: datetime,
                  version: int) -> Output:
        """``batch``: parts (key `<metric>|<dimension>|<name>|<start>`) and horizons."""
        out = Output(self.partitions)
        states: dict[bytes, AggregatorState] = {}
        clocks: dict[int, LowWatermark] = {}
        revised: set[tuple[bytes, str]] = set()
        watermarks: dict[int, datetime | None] = {}  # clock.value, kept as marks come
        moved: set[int] = set()  # partitions with more than ticks: their clocks are saved
        for message in batch:
            partition = message.partition
            clock = clocks.get(partition)
            if clock is None:
                clock = clocks[partition] = _load_clock(cx_windows, partition, self.partitions)
                watermarks[partition] = clock.value
            if isinstance(message.value, Tick):  # runs the batch: closings and rows due
                self.held[partition]
                continue
            moved.add(partition)
            if isinstance(message.value, Watermark):
                mark = message.value
                clock.update(mark.channel, mark.at, mark.idle)
                watermarks[partition] = clock.value
                continue
            metric, dimension, window = message.key.decode().split("|", 2)
            key = f"{partition}|{metric}|{dimension}|{shard(window)}".encode()
            window_end = _window_end(window)
            watermark = watermarks[partition]
            closed = watermark is not None and window_end <= watermark
            if closed and window_end + self.revision <= watermark:  # type: ignore[operator]
                self.metrics.cx_window_too_late.inc()  # past the revision horizon
                continue
            state = self._cached(states, cx_windows, partition, key)
            entry = _window(state, window)
            if entry is None and closed:  # closed already, or closing in this batch
                key = kept_apart(key)
                state = self._cached(states, cx_windows, partition, key)
                entry = _window(state, window)
            if entry is None:  # a new window: schedule its closing (or its leaving)
                entry = state[window] = Window({}, 0 if closed else -1)
                due = window_end + self.revision if closed else window_end
                self._closing(cx_windows, partition).at(key, due.timestamp())
            partial: Partial = message.value
            if entry.closed and entry.parts.get(partial.partition) == partial:
                continue  # sent again (a replay): its row is written already
            entry.parts[partial.partition] = partial
            if entry.closed:  # a late part: its row is revised in this batch
                revised.add((key, window))
            else:
                self.held[partition].unpublished.windows.add((key, window))
        rows = out.rows["cx_metrics"]
        for key, window in revised:
            entry = _window(states[key], window)
            if _samples(entry) < 0:
                # One partition's part took back what another's, not here yet, adds
                # (a journey that moved partitions when a device was identified): a
                # moment's state, not a value. The next part writes the revision.
                continue
            entry.revision += 1
            rows.append(_metric_row(key, window, entry, version, now))
            self.metrics.cx_window_revisions.inc()
        budget = self.rows_per_batch
        for partition, clock in clocks.items():
            if partition in moved:
                cx_windows[clock_key(partition)] = msgspec.msgpack.encode(clock)
            horizon = clock.value
            if horizon is None:
                continue
            closing = self._closing(cx_windows, partition)
            held = self.held[partition]
            unpublished = held.unpublished
            until = held.horizon = horizon.timestamp()
            while len(rows) < budget and (key := closing.pop(until)) is not None:
                state = self._cached(states, cx_windows, partition, key)
                leaving = _holds_closed(key)
                due = sorted((when, window) for window in state
                             if (when := self._due(window, leaving)) <= until)
                for _when, window in due:
                    if leaving:  # closed, past the revision horizon: it leaves
                        del state[window]
                        continue
                    entry = _window(state, window)
                    del state[window]
                    entry.revision = 0
                    entry.final_samples = _samples(entry)
                    rows.append(_metric_row(key, window, entry, version, now))
                    unpublished.windows.discard((key, window))
                    # Kept apart from the open windows for the revision horizon, so the
                    # batches that update open windows do not decode a month of closed ones.
                    apart = kept_apart(key)
                    self._cached(states, cx_windows, partition, apart)[window] = entry
                    closing.at(apart, self._due(window, True))
                if state:
                    closing.at(key, self._soonest(key, state))
        read: dict[bytes, AggregatorState] = {}  # unchanged: not written back
        tick = self.clock()
        for partition in self.held:
            unpublished = self.held[partition].unpublished
            if len(rows) >= budget or not unpublished.due(tick, self.update_seconds):
                continue
            if unpublished.never_published:
                # What the last holder had not written yet is not known here (it kept
                # that in memory): every open window's row is written once. The closing
                # schedule lists every entry in the table that holds a window.
                closed = kept_apart(clock_key(partition))
                for key in list(self._closing(cx_windows, partition).due):
                    if not key.startswith(closed):
                        state = self._read(states, read, cx_windows, partition, key)
                        unpublished.windows.update((key, window) for window in state)
            for key, window in unpublished.take(tick, budget - len(rows)):
                entry = _window(self._read(states, read, cx_windows, partition, key), window)
                if entry is not None and not entry.closed and _samples(entry) >= 0:
                    rows.append(_metric_row(key, window, entry, version, now))
        for key, state in states.items():
            decoded = self.held[named_partition(key)].decoded
            if state:
                cx_windows[key] = encoded = msgspec.msgpack.encode(state)
                decoded.put(key, state, len(encoded))
                continue
            decoded.drop(key)
            if cx_windows.get(key) is not None:
                del cx_windows[key]
        if len(rows) >= budget:  # more to write: goes on without input
            self.tick(out, self.held)
        out.save(cx_windows)  # a window's state is saved once its row is in ClickHouse
        return out

    def tick(self, out: Output, partitions: Iterable[int]) -> None:
        """Queue a :class:`Tick` in ``out`` for each of ``partitions`` ``waiting``."""
        for partition in self.waiting(partitions):
            out.send(CX_PARTIALS, WATERMARK_KEY, _TICK, partition)

    def waiting(self, partitions: Iterable[int]) -> list[int]:
        """Those of ``partitions`` (the ones this worker holds) with rows to write now:
        open windows' rows due, or closings an earlier batch left over
        (``rows_per_batch``). Only a batch writes them, so each needs a :class:`Tick` if
        no input comes. A partition held but not yet published counts, for its takeover
        rows."""
        tick = self.clock()
        return [partition for partition in partitions
                if ((unpublished := (held := self.held[partition]).unpublished).due(
                    tick, self.update_seconds)
                    and (unpublished.windows or unpublished.never_published))
                or (held.closing is not None and held.horizon is not None
                    and held.closing.first_due() <= held.horizon)]

    def _closing(self, cx_windows: Store, partition: int) -> Schedule:
        held = self.held[partition]
        if held.closing is None:
            held.closing = Schedule()
            prefix = clock_key(partition)
            for key in keys_with(cx_windows, prefix):
                if key != prefix and (state := _load(cx_windows, key)):
                    held.closing.at(key, self._soonest(key, state))
        return held.closing

    def _due(self, window: str, closed: bool) -> float:
        """When an open window closes, or a closed one leaves the table."""
        return (_window_end(window) + self.revision * closed).timestamp()

    def _soonest(self, key: bytes, state: AggregatorState) -> float:
        """When the first of an entry's windows is due."""
        closed = _holds_closed(key)
        return min(self._due(window, closed) for window in state)

    def _cached(self, states: dict[bytes, AggregatorState], cx_windows: Store,
                partition: int, key: bytes) -> AggregatorState:
        """An entry this batch changes (written back at its end): decoded once per batch,
        and kept decoded for the next (``Decoded``)."""
        state = states.get(key)
        if state is None:
            state = states[key] = self._decoded(cx_windows, partition, key)
        return state

    def _read(self, states: dict[bytes, AggregatorState], read: dict[bytes, AggregatorState],
              cx_windows: Store, partition: int, key: bytes) -> AggregatorState:
        """An entry only read, for its rows: as this batch changed it, or decoded once
        per batch into ``read`` (not written back)."""
        state = states.get(key)
        if state is None:
            state = read.get(key)
            if state is None:
                state = read[key] = self._decoded(cx_windows, partition, key)
        return state

    def _decoded(self, cx_windows: Store, partition: int, key: bytes) -> AggregatorState:
        """An entry as the table has it: kept decoded from an earlier batch, or decoded
        now and kept (``Decoded``)."""
        decoded = self.held[partition].decoded
        state = decoded.get(key)
        if state is None:
            stored = cx_windows.get(key)
            if stored is None:
                return {}
            state = _decoder.decode(stored)
            decoded.put(key, state, len(stored))
        return state


def _window(state: AggregatorState, window: str) -> Window | None:
    """A window of an entry, decoded now if this batch had not touched it yet."""
    entry = state.get(window)
    if type(entry) is msgspec.Raw:
        entry = state[window] = _window_decoder.decode(entry)
    return entry  # type: ignore[return-value]


def _holds_closed(key: bytes) -> bool:
    """Whether an entry is one of closed windows (``kept_apart``): an entry's windows
    are all open or all closed, so a schedule needs no window decoded."""
    return key.split(b"|", 2)[1].startswith(b"#")


def _load(cx_windows: Store, key: bytes) -> AggregatorState:
    stored = cx_windows.get(key)
    return _decoder.decode(stored) if stored is not None else {}


def _load_clock(cx_windows: Store, partition: int, partitions: int) -> LowWatermark:
    stored = cx_windows.get(clock_key(partition))
    if stored is None:  # inputs: the horizon of every journey partition
        return LowWatermark(channels=partitions)
    return msgspec.msgpack.decode(stored, type=LowWatermark)


def _samples(entry: Window) -> int:
    return sum(p.samples for p in entry.parts.values())


def _metric_row(key: bytes, window: str, entry: Window, version: int, now: datetime,
                ) -> tuple:
    _partition, metric, dimension, _span = key.decode().split("|")
    metric = metric.removeprefix("#")  # a closed window's key
    name, start, end = _bounds(window)
    numerator = denominator = samples = 0
    for p in entry.parts.values():  # one pass over the parts, not three
        numerator += p.numerator
        denominator += p.denominator
        samples += p.samples
    return metric_row(
        metric, dimension, name, start, end,
        SCALES[metric] * numerator / denominator if denominator else None, numerator,
        denominator, samples, entry.closed, version, now, revision=max(entry.revision, 0),
        late_samples=samples - entry.final_samples if entry.closed else 0)


@functools.lru_cache(maxsize=TIME_CACHE)
def _bounds(window: str) -> tuple[str, datetime, datetime]:
    """A window's (`<name>|<start>`) spec name, start and end."""
    name, start_s = window.split("|")
    start = datetime.fromtimestamp(int(start_s), UTC)
    return name, start, start + spec_named(name).size


@functools.lru_cache(maxsize=TIME_CACHE)
def _window_end(window: str) -> datetime:
    return _bounds(window)[2]
