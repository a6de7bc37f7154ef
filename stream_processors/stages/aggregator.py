"""Last hop, keyed by metric and dimension: the sum of the journey partitions' parts.

Each journey partition sends its part of a window (its whole part so far) and its
horizon; the aggregator keeps the latest part of each partition and writes the window's
row to ``cx_metrics``: while open, at most every JOURNEY_CX_UPDATE_SECONDS however many
parts changed it; once every partition's horizon passed its end, a final row, and the
window leaves the table (only after that row is in ClickHouse).

Table ``cx-windows``, per aggregator partition: ``<p>|<metric>|<dimension>|<shard>`` →
the windows of one spec whose starts fall in one span (:func:`shard`), so a batch costs a
few changelog records per metric and dimension it touched, not one per window, and an
entry stays far below Kafka's 1 MB message limit however far the watermark lags;
``<p>|`` → the partition's low watermark over every journey partition's horizon.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from stream_processors.clickhouse.rows import metric_row
from stream_processors.commands import Partial, Watermark
from stream_processors.contributions import SCALES
from stream_processors.effects import Message, Output, Store, keys_with
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages.partials import clock_key
from stream_processors.stages.per_partition import PerPartition, Unpublished
from stream_processors.windows import WINDOWS, LowWatermark, spec_named

__all__ = ["SHARD_SECONDS", "Aggregator", "AggregatorState", "shard"]

#: An entry's windows: window (`<name>|<start>`) → the latest part of each journey
#: partition.
AggregatorState = dict[str, dict[int, Partial]]
#: Windows of one spec whose starts fall in the same span share a table entry (a 6 h
#: span holds 360 one-minute windows).
SHARD_SECONDS = {spec.name: int(max(spec.size, timedelta(hours=6)).total_seconds())
                 for spec in WINDOWS}

_decoder = msgspec.msgpack.Decoder(AggregatorState)


def shard(window: str) -> str:
    """The span a window (`<name>|<start>`) is kept in: `<name>@<n>`."""
    name, start = window.split("|")
    return f"{name}@{int(start) // SHARD_SECONDS[name]}"


class _Held:
    """What this process knows of one aggregator partition."""

    def __init__(self) -> None:
        #: (window end, table key, window) of its open windows, soonest first; built
        #: from the table when first needed.
        self.closing: list[tuple[float, bytes, str]] | None = None
        #: (table key, window) whose rows are to be written.
        self.unpublished = Unpublished()


class Aggregator:
    def __init__(self, metrics: WorkerMetrics, partitions: int, update_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.partitions = partitions
        self.update_seconds = update_seconds
        self.clock = clock
        self.held: PerPartition[_Held] = PerPartition(lambda _partition: _Held())

    def aggregate(self, batch: Sequence[Message], cx_windows: Store, now: datetime,
                  version: int) -> Output:
        """``batch``: parts (key `<metric>|<dimension>|<name>|<start>`) and horizons."""
        out = Output(self.partitions)
        states: dict[bytes, AggregatorState] = {}
        clocks: dict[int, LowWatermark] = {}
        for message in batch:
            partition = message.partition
            clock = clocks.get(partition)
            if clock is None:
                clock = clocks[partition] = _load_clock(cx_windows, partition, self.partitions)
            if isinstance(message.value, Watermark):
                mark = message.value
                clock.update(mark.channel, mark.at, mark.idle)
                continue
            metric, dimension, window = message.key.decode().split("|", 2)
            key = f"{partition}|{metric}|{dimension}|{shard(window)}".encode()
            window_end = _window_end(window)
            if clock.value is not None and window_end <= clock.value:
                self.metrics.cx_window_too_late.inc()  # a replay after a rebalance
                continue
            state = states.get(key)
            if state is None:
                state = states[key] = _load(cx_windows, key)
            parts = state.get(window)
            if parts is None:  # a new window: schedule its closing
                parts = state[window] = {}
                heapq.heappush(self._closing(cx_windows, partition),
                               (window_end.timestamp(), key, window))
            partial: Partial = message.value
            parts[partial.partition] = partial
            self.held[partition].unpublished.windows.add((key, window))
        rows = out.rows["cx_metrics"]
        for partition, clock in clocks.items():
            cx_windows[clock_key(partition)] = msgspec.msgpack.encode(clock)
            horizon = clock.value
            if horizon is None:
                continue
            closing = self._closing(cx_windows, partition)
            unpublished = self.held[partition].unpublished
            while closing and closing[0][0] <= horizon.timestamp():
                _, key, window = heapq.heappop(closing)
                state = states.get(key)
                if state is None:
                    state = states[key] = _load(cx_windows, key)
                parts = state.pop(window, None)
                if parts is not None:
                    rows.append(_metric_row(key, window, parts, True, version, now))
                unpublished.windows.discard((key, window))
        read: dict[bytes, AggregatorState] = {}  # unchanged: not written back
        tick = self.clock()
        for partition in self.held:
            unpublished = self.held[partition].unpublished
            if not unpublished.due(tick, self.update_seconds):
                continue
            for key, window in unpublished.take(tick):
                state = states[key] if key in states else read.get(key)
                if state is None:
                    state = read[key] = _load(cx_windows, key)
                if window in state:
                    rows.append(_metric_row(key, window, state[window], False, version, now))
        for key, state in states.items():
            if state:
                cx_windows[key] = msgspec.msgpack.encode(state)
            elif cx_windows.get(key) is not None:
                del cx_windows[key]
        out.save(cx_windows)  # a window leaves the table once its final row is in ClickHouse
        return out

    def _closing(self, cx_windows: Store, partition: int) -> list[tuple[float, bytes, str]]:
        held = self.held[partition]
        if held.closing is None:
            prefix = clock_key(partition)
            held.closing = [(_window_end(window).timestamp(), key, window)
                            for key in keys_with(cx_windows, prefix) if key != prefix
                            for window in _load(cx_windows, key)]
            heapq.heapify(held.closing)
        return held.closing


def _load(cx_windows: Store, key: bytes) -> AggregatorState:
    stored = cx_windows.get(key)
    return _decoder.decode(stored) if stored is not None else {}


def _load_clock(cx_windows: Store, partition: int, partitions: int) -> LowWatermark:
    stored = cx_windows.get(clock_key(partition))
    if stored is None:  # inputs: the horizon of every journey partition
        return LowWatermark(channels=partitions)
    return msgspec.msgpack.decode(stored, type=LowWatermark)


def _metric_row(key: bytes, window: str, parts: dict[int, Partial], final: bool,
                version: int, now: datetime) -> tuple:
    _partition, metric, dimension, _span = key.decode().split("|")
    name, start_s = window.split("|")
    start = datetime.fromtimestamp(int(start_s), UTC)
    numerator = sum(p.numerator for p in parts.values())
    denominator = sum(p.denominator for p in parts.values())
    return metric_row(
        metric, dimension, name, start, start + spec_named(name).size,
        SCALES[metric] * numerator / denominator if denominator else None, numerator,
        denominator, sum(p.samples for p in parts.values()), final, version, now)


@functools.lru_cache(maxsize=65536)
def _window_end(window: str) -> datetime:
    name, start_s = window.split("|")
    return datetime.fromtimestamp(int(start_s), UTC) + spec_named(name).size
