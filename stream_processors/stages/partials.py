"""A journey partition's part of the CX metric windows, sent on to the aggregator.

The journey stage hands over each batch's contributions (what new touchpoints add to a
metric, under a dimension) and the watermarks that reached its partitions. Here they
become each partition's open windows (``OpenWindows``, as panes), and a window's
*part* (numerator, denominator, samples, as this partition saw it) goes to the
aggregator, keyed by metric and dimension so that one aggregator partition sums all
parts of a window.

Table ``cx-partials``, per journey partition: ``<p>|<metric>|<dimension>`` → its open
windows; ``<p>|#<metric>|<dimension>|<hop>|<span>`` → panes of closed windows kept for
revisions (:class:`SettledPanes`); ``<p>|`` → its watermark (the low watermark over
every touchpoint and by-device partition, and the horizon windows were closed at).
Every key starts with its partition: the worker stages a write by it.

What is sent when:
- an open window's part at most every JOURNEY_CX_UPDATE_SECONDS, however many batches
  changed it (the aggregator keeps the latest part per partition);
- a closing window's last part at once, then the partition's new horizon, after it:
  the aggregator finalises a window once every partition's horizon passed its end;
- after a restart or a rebalance, every open window once more (what was sent before is
  not known; repeats are harmless);
- a closed window's part again, in the batch a late contribution changed it, while the
  window ended less than the revision horizon ago (the aggregator writes a revision).
  Later contributions miss it: they become ``cx_missed`` rows instead.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import msgspec

from schemas import utcnow
from stream_processors.clickhouse.rows import missed_row
from stream_processors.commands import (
    Partial,
    Watermark,
    encode_partial,
)
from stream_processors.effects import CX_PARTIALS, Output, Store, keys_with
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages.per_partition import PerPartition, Unpublished
from stream_processors.windows import (
    Contribution,
    LowWatermark,
    OpenWindows,
    SettledPanes,
    WindowKey,
    WindowState,
    settled_expiry,
    settled_span,
    window_panes,
)

__all__ = ["PartitionWindows", "clock_key", "kept_apart"]

#: A contribution and the offset of the journey-events message that brought it.
Numbered = tuple[int, Contribution]


def clock_key(partition: int) -> bytes:
    """The table key of a partition's watermark; its windows' keys extend it."""
    return f"{partition}|".encode()


def kept_apart(key: bytes) -> bytes:
    """The key under which closed windows of ``key`` (``<p>|...``) are kept apart from
    its open ones: ``<p>|#...``, still starting with the partition the worker stages a
    write by. (Settled panes here, closed windows at the aggregator.)"""
    partition, _, rest = key.partition(b"|")
    return partition + b"|#" + rest


class _Held:
    """What this process knows of one journey partition's windows."""

    def __init__(self) -> None:
        #: (table key, window) changed since last sent.
        self.unpublished = Unpublished()
        #: When the soonest open window of each table key ends (None: none open), so a
        #: key with nothing to close is not decoded; learnt as keys are written.
        self.next_end: dict[bytes, int | None] = {}
        #: The keys of its open windows (``<p>|<metric>|<dimension>``); read from the
        #: table when first needed, then kept as batches write them.
        self.keys: set[bytes] | None = None
        #: (when, key) each settled span's key leaves the table (past the revision
        #: horizon), soonest first, and the keys; built from the table when first needed.
        self.settled_expiry: list[tuple[int, bytes]] | None = None
        self.settled_keys: set[bytes] = set()


class PartitionWindows:
    def __init__(self, metrics: WorkerMetrics, partitions: int, lateness: timedelta,
                 update_seconds: float, clock: Callable[[], float] = time.monotonic,
                 revision: timedelta = timedelta(0),
                 windows_per_batch: int | None = None) -> None:
        """``windows_per_batch`` bounds the open windows' parts a batch sends (the rest
        stay due, for the next batch: watermarks bring one every interval); closing
        windows' parts are not bounded, they go before the horizon that closes them."""
        self.metrics = metrics
        self.windows_per_batch = windows_per_batch if windows_per_batch else float("inf")
        self.partitions = partitions
        self.lateness = lateness
        self.revision = revision
        self.update_seconds = update_seconds
        self.clock = clock
        self.held: PerPartition[_Held] = PerPartition(lambda _partition: _Held())

    def process(self, out: Output, store: Store, marks: Sequence[tuple[int, Watermark]],
                contributions: Mapping[int, list[Numbered]],
                now: datetime | None = None) -> None:
        """Take in a batch's watermarks and contributions; queue the parts and horizons
        to send in ``out`` and stage the windows in ``store``.

        Each contribution comes with the offset of the message that brought it; a table
        entry skips those at or below its ``applied_through`` (already in it: a replay).
        """
        clocks: dict[int, LowWatermark] = {}
        for partition, mark in marks:
            if partition not in clocks:
                clocks[partition] = _load_clock(store, partition, self.partitions)
            clocks[partition].update(mark.channel, mark.at, mark.idle)
        parts: dict[tuple[bytes, int], Partial] = {}
        horizons: list[tuple[int, datetime]] = []
        for partition in sorted(set(clocks) | {p for p, cs in contributions.items() if cs}):
            clock = clocks.get(partition) or _load_clock(store, partition, self.partitions)
            horizon = self._advance(store, partition, clock, contributions.get(partition, []),
                                    parts, out.rows["cx_missed"], now or utcnow())
            if horizon is not None:
                horizons.append((partition, horizon))
        for (key, _), partial in parts.items():  # a metric and dimension's to one place
            out.add(CX_PARTIALS, key, encode_partial(partial),
                    partition_key=key.rsplit(b"|", 2)[0])
        for partition, horizon in horizons:  # after the parts they close
            out.mark(CX_PARTIALS, Watermark(f"j{partition}", horizon))

    def _save_settled(self, store: Store, partition: int, settled: _Settled,
                      horizon: datetime | None) -> None:
        """Write the spans this batch changed; drop those past the revision horizon."""
        held = self.held[partition]
        if held.settled_expiry is None:
            held.settled_keys = keys_with(store, kept_apart(clock_key(partition)))
            held.settled_expiry = [(_settled_expiry(key, self.revision), key)
                                   for key in held.settled_keys]
            heapq.heapify(held.settled_expiry)
        for key in settled.changed:
            store[key] = msgspec.msgpack.encode(settled.spans[key])
            if key not in held.settled_keys:
                held.settled_keys.add(key)
                heapq.heappush(held.settled_expiry, (_settled_expiry(key, self.revision), key))
        expiry = held.settled_expiry
        if horizon is not None:
            h = horizon.timestamp()
            while expiry and expiry[0][0] <= h:
                _, key = heapq.heappop(expiry)
                held.settled_keys.discard(key)
                if store.get(key) is not None:
                    del store[key]

    def _advance(self, store: Store, partition: int, clock: LowWatermark,
                 contributions: list[Numbered], parts: dict[tuple[bytes, int], Partial],
                 missed_rows: list[tuple], now: datetime) -> datetime | None:
        """One partition: apply its contributions, close what its horizon passed, and
        collect the parts due; returns its new horizon, if it moved."""
        held = self.held[partition]
        unpublished = held.unpublished
        by_key: dict[tuple[str, str], list[Numbered]] = defaultdict(list)
        for offset, c in contributions:
            by_key[(c.metric, c.dimension)].append((offset, c))
        changed: dict[bytes, OpenWindows] = {}
        revised: set[tuple[bytes, WindowKey]] = set()
        settled = _Settled(store)
        for (metric, dimension), items in by_key.items():
            table_key = f"{partition}|{metric}|{dimension}".encode()
            windows = changed[table_key] = _load_windows(store, table_key)
            done = windows.applied_through
            new = [(offset, c) for offset, c in items if done is None or offset > done]
            # Never back: a replay comes in batches of their own size, and one that ends
            # below the mark must not let the next apply what is already in.
            windows.applied_through = max(done if done is not None else -1,
                                          *(offset for offset, _ in items))
            added = windows.add([c for _, c in new], clock.horizon, self.revision)
            for n, hop, start in added.to_settled:
                offset, c = new[n]
                settled.late(table_key, hop, start, offset, c)
            self.metrics.cx_window_too_late.inc(added.missed)
            if added.lacking:
                missed_rows += _missed_rows(partition, [new[n] for n in added.lacking],
                                            added.lacking_through, now)
            self.metrics.cx_late_contributions.inc(added.late)
            unpublished.windows.update((table_key, window) for window in added.touched)
            revised.update((table_key, window) for window in added.revised)
        # A revised closed window's part goes in this batch, not when due: the batch's
        # state is saved after its messages, so a crash before that sends it again.
        for table_key, window in revised:
            state = changed[table_key].get(window)
            state.merge(settled.window(table_key, window))
            parts[(_window_key(table_key, window), partition)] = _partial(partition, state)
        prefix = clock_key(partition)
        horizon = clock.advance(self.lateness)
        tick = self.clock()
        refresh = unpublished.due(tick, self.update_seconds)
        if horizon is not None or refresh:
            first = unpublished.never_published
            # The entries this batch created too: left for the next batch, their windows
            # would close after this horizon told the aggregator they had (measured: their
            # final parts arrived too late, and hundreds of windows never got a final row).
            if held.keys is None:
                apart = kept_apart(prefix)
                held.keys = {key for key in keys_with(store, prefix)
                             if key != prefix and not key.startswith(apart)}
            for table_key in held.keys | changed.keys():
                windows = changed.get(table_key)
                if windows is None:
                    next_end = held.next_end.get(table_key, 0)  # 0: not known here yet
                    if not first and (horizon is None or next_end is None
                                      or next_end > horizon.timestamp()):
                        continue  # nothing of it to close: leave it undecoded
                    windows = _load_windows(store, table_key)
                if first:
                    unpublished.windows.update((table_key, window)
                                               for window in windows.open_windows())
                if horizon is None:
                    continue
                left = len(windows.expiry)
                closed = windows.close(horizon, settle=functools.partial(
                    settled.settle, table_key) if self.revision else None,
                    wanted=lambda window, k=table_key, p=unpublished.windows: (k, window) in p)
                if closed or len(windows.expiry) != left:
                    changed[table_key] = windows
                for window, state in closed.items():
                    if state is not None:  # changed since its part was last sent
                        unpublished.windows.discard((table_key, window))
                        parts[(_window_key(table_key, window), partition)] = _partial(
                            partition, state)
        room = self.windows_per_batch - len(parts)
        if refresh and room > 0:
            due: dict[bytes, list[WindowKey]] = defaultdict(list)
            for table_key, window in unpublished.take(tick, room):
                due[table_key].append(window)
            for table_key, keys in due.items():
                windows = changed.get(table_key) or _load_windows(store, table_key)
                for window, state in windows.states(keys).items():  # unchanged: not written
                    parts[(_window_key(table_key, window), partition)] = _partial(
                        partition, state)
        if clock.value is not None:
            self.metrics.cx_watermark_seconds.labels(str(partition)).set(
                clock.value.timestamp())
        for table_key, windows in changed.items():
            if not windows.panes:  # every window closed (settled panes are kept apart)
                if store.get(table_key) is not None:
                    del store[table_key]
                held.next_end.pop(table_key, None)
                if held.keys is not None:
                    held.keys.discard(table_key)
                continue
            store[table_key] = msgspec.msgpack.encode(windows)
            held.next_end[table_key] = windows.next_end
            if held.keys is not None:
                held.keys.add(table_key)
        self._save_settled(store, partition, settled, horizon)
        store[prefix] = msgspec.msgpack.encode(clock)
        return horizon


class _Settled:
    """One batch's view of the settled panes of a partition (:class:`SettledPanes`,
    key ``<p>|#<metric>|<dimension>|<hop>|<span>``, apart from the open windows'
    ``<p>|<metric>|<dimension>``): read once, written back if changed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.spans: dict[bytes, SettledPanes] = {}
        self.done: dict[bytes, int | None] = {}  # applied_through when read
        self.changed: set[bytes] = set()

    def span(self, table_key: bytes, hop: int, start: int) -> tuple[bytes, SettledPanes]:
        key = settled_key(table_key, hop, settled_span(hop, start))
        panes = self.spans.get(key)
        if panes is None:
            stored = self.store.get(key)
            panes = self.spans[key] = (msgspec.msgpack.decode(stored, type=SettledPanes)
                                       if stored else SettledPanes())
            self.done[key] = panes.applied_through
        return key, panes

    def settle(self, table_key: bytes, hop: int, start: int, state: WindowState) -> None:
        key, panes = self.span(table_key, hop, start)
        panes.settled[start] = state
        self.changed.add(key)

    def late(self, table_key: bytes, hop: int, start: int, offset: int,
             c: Contribution) -> None:
        key, panes = self.span(table_key, hop, start)
        done = self.done[key]
        if done is not None and offset <= done:
            return  # in it already: a replay
        pane = panes.late.get(start)
        if pane is None:
            pane = panes.late[start] = WindowState()
        pane.add(c)
        panes.applied_through = max(offset, panes.applied_through or offset)
        self.changed.add(key)

    def window(self, table_key: bytes, window: WindowKey) -> WindowState:
        """What the settled panes hold of a window."""
        hop, starts = window_panes(window)
        total = WindowState()
        for start in starts:
            state = self.span(table_key, hop, start)[1].pane(start)
            if state is not None:
                total.merge(state)
        return total


def _settled_expiry(key: bytes, revision: timedelta) -> int:
    hop, span = key.rsplit(b"|", 2)[1:]
    return settled_expiry(int(hop), int(span), revision)


def settled_key(table_key: bytes, hop: int, span: int) -> bytes:
    return kept_apart(table_key) + f"|{hop}|{span}".encode()


def _missed_rows(partition: int, missed: list[Numbered], lacking_through: datetime | None,
                 now: datetime) -> list[tuple]:
    """``cx_missed`` rows: per input message, what it would have added at each time, and
    which windows lack it (those ending by ``lacking_through``). A replayed message
    rewrites its own rows (the row's key holds the partition and offset)."""
    summed: dict[tuple[int, str, str, datetime], WindowState] = {}
    for offset, c in missed:
        state = summed.get((offset, c.metric, c.dimension, c.at))
        if state is None:
            state = summed[(offset, c.metric, c.dimension, c.at)] = WindowState()
        state.add(c)
    return [missed_row(metric, dimension, at, state.numerator, state.denominator,
                       state.samples, lacking_through or at, partition, offset, now)
            for (offset, metric, dimension, at), state in summed.items()]


def _window_key(table_key: bytes, window: WindowKey) -> bytes:
    """The aggregator's key of a window: metric|dimension|window|start.

    Not cached: 0.7 µs to build, against 1.9 µs for a cache miss, and a replay missed
    nearly always (249 hits in 116,669 calls on the bench workload) while the full cache
    held 12 MB and kept alive every window key in it."""
    _partition, _, metric_dimension = table_key.partition(b"|")
    return metric_dimension + f"|{window[0]}|{int(window[1].timestamp())}".encode()


def _partial(partition: int, state: WindowState) -> Partial:
    return Partial(partition, state.numerator, state.denominator, state.samples)


def _load_windows(store: Store, table_key: bytes) -> OpenWindows:
    stored = store.get(table_key)
    return msgspec.msgpack.decode(stored, type=OpenWindows) if stored else OpenWindows()


def _load_clock(store: Store, partition: int, partitions: int) -> LowWatermark:
    stored = store.get(clock_key(partition))
    if stored is None:  # inputs: every touchpoint partition and every by-device partition
        return LowWatermark(channels=2 * partitions)
    return msgspec.msgpack.decode(stored, type=LowWatermark)
