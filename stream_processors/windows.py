"""Event-time windows for CX metrics: assignment, additive state, watermarks (pure).

Faust's windowed tables close windows by wall clock, which is wrong for touchpoints
that arrive late or are replayed. These windows are keyed by event time and close
when a **low watermark**, less a lateness bound, passes their end.

Why a *low* watermark: a touchpoint crosses two re-partitionings before its journey
sees it, and each hop interleaves its input partitions a batch at a time, so a journey
partition can see events days apart in event time side by side (measured: a 20-minute
shuffle at the source became days at the aggregator, and windows closed with 100 %
on-time deliveries instead of 75 %). The max event time seen is therefore no clock.
Instead every source partition's progress travels through the topology as markers,
each hop forwards the minimum over its inputs (:class:`LowWatermark`), and a window
closes only when every input has moved past it: the scheme of the Dataflow model.

Window state is additive (numerator, denominator, samples), so each journey partition
keeps partial windows (:class:`OpenWindows`) and one aggregator sums the partials of
all partitions: the value is the same however events were split.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

__all__ = ["WINDOWS", "Contribution", "LowWatermark", "Mark", "OpenWindows", "WindowSpec",
           "WindowState", "spec_named"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class WindowSpec:
    """Windows of ``size`` starting every ``hop`` (tumbling when hop == size)."""

    name: str
    size: timedelta
    hop: timedelta

    def windows_for(self, at: datetime) -> list[tuple[datetime, datetime]]:
        """Every window [start, end) that contains ``at``, oldest first (epoch-aligned)."""
        hop = self.hop.total_seconds()
        latest = _EPOCH + timedelta(seconds=(at - _EPOCH).total_seconds() // hop * hop)
        out = []
        start = latest
        while start + self.size > at:
            out.append((start, start + self.size))
            start -= self.hop
        return out[::-1]


#: The windows issue 5 asks for: ops (1 min tumbling), hourly and daily hopping, weekly
#: and monthly rolling (moving by a day).
WINDOWS: tuple[WindowSpec, ...] = (
    WindowSpec("1m", timedelta(minutes=1), timedelta(minutes=1)),
    WindowSpec("1h", timedelta(hours=1), timedelta(minutes=5)),
    WindowSpec("24h", timedelta(hours=24), timedelta(hours=1)),
    WindowSpec("7d", timedelta(days=7), timedelta(days=1)),
    WindowSpec("30d", timedelta(days=30), timedelta(days=1)),
)
_BY_NAME = {spec.name: spec for spec in WINDOWS}


def spec_named(name: str) -> WindowSpec:
    return _BY_NAME[name]


class Contribution(msgspec.Struct, frozen=True, array_like=True):
    """One event's part in a ratio metric, under one dimension."""

    metric: str
    dimension: str
    at: datetime
    numerator: float
    denominator: float = 1.0


class WindowState(msgspec.Struct, array_like=True):
    numerator: float = 0.0
    denominator: float = 0.0
    samples: int = 0

    def add(self, c: Contribution) -> None:
        self.numerator += c.numerator
        self.denominator += c.denominator
        self.samples += 1

    def ratio(self, scale: float = 100.0) -> float | None:
        return scale * self.numerator / self.denominator if self.denominator else None


#: A window of one metric and dimension: the spec's name and the window's start.
WindowKey = tuple[str, datetime]


class OpenWindows(msgspec.Struct):
    """The open windows of one metric and dimension, as one partition has seen them.

    Closed windows leave the state; the partition's horizon (watermark less lateness)
    tells a contribution that comes too late for a window from one that opens it.
    ``closing`` holds (end, name) of every open window, soonest first (a heap), so that
    closing costs what closes, not what is open.
    """

    windows: dict[str, WindowState] = {}
    closing: list[tuple[int, str]] = []

    @staticmethod
    def _name(key: WindowKey) -> str:
        return f"{key[0]}@{int(key[1].timestamp())}"

    @staticmethod
    def _key(name: str) -> WindowKey:
        spec, _, start = name.partition("@")
        return spec, datetime.fromtimestamp(int(start), UTC)

    def add(self, contributions: Iterable[Contribution], horizon: datetime | None,
            specs: tuple[WindowSpec, ...] = WINDOWS) -> tuple[set[WindowKey], int]:
        """Apply contributions; returns the windows changed and how many came too late.

        A contribution is too late for a window that ends at or before ``horizon``
        (that window's final value was published and never changes); it still counts
        in the longer windows that are open.
        """
        touched: set[WindowKey] = set()
        too_late = 0
        for c in contributions:
            missed = False
            for spec in specs:
                for start, end in spec.windows_for(c.at):
                    if horizon is not None and end <= horizon:
                        missed = True
                        continue
                    key = (spec.name, start)
                    name = self._name(key)
                    state = self.windows.get(name)
                    if state is None:
                        state = self.windows[name] = WindowState()
                        heapq.heappush(self.closing, (int(end.timestamp()), name))
                    state.add(c)
                    touched.add(key)
            too_late += missed
        return touched, too_late

    def get(self, key: WindowKey) -> WindowState:
        return self.windows[self._name(key)]

    @property
    def next_end(self) -> int | None:
        """When the soonest open window ends (Unix seconds), if any is open."""
        return self.closing[0][0] if self.closing else None

    def close(self, horizon: datetime) -> dict[WindowKey, WindowState]:
        """Remove and return every window that ends at or before ``horizon``."""
        closed = {}
        limit = horizon.timestamp()
        while self.closing and self.closing[0][0] <= limit:
            _end, name = heapq.heappop(self.closing)
            closed[self._key(name)] = self.windows.pop(name)
        return closed


class Mark(msgspec.Struct, array_like=True):
    """How far one input has come: the event time it passed, and whether it is idle."""

    at: datetime | None = None
    idle: bool = False


class LowWatermark(msgspec.Struct):
    """The event time that every one of ``channels`` inputs has passed.

    Unknown (None) until each input was heard from. An idle input (a source partition
    with no traffic for a while) does not hold the others back; when all are idle the
    watermark is the furthest any came, since nothing is in flight.
    """

    channels: int
    marks: dict[str, Mark] = {}
    #: The horizon windows were last closed at (watermark less lateness): monotonic.
    horizon: datetime | None = None

    def update(self, channel: str, at: datetime | None, idle: bool) -> None:
        mark = self.marks.get(channel)
        if mark is None:
            self.marks[channel] = Mark(at, idle)
            return
        if at is not None and (mark.at is None or at > mark.at):
            mark.at = at
        mark.idle = idle

    @property
    def value(self) -> datetime | None:
        if len(self.marks) < self.channels:
            return None
        busy = [m.at for m in self.marks.values() if not m.idle]
        if busy:
            return None if any(at is None for at in busy) else min(busy)  # type: ignore[type-var]
        seen = [m.at for m in self.marks.values() if m.at is not None]
        return max(seen) if seen else None

    @property
    def idle(self) -> bool:
        return len(self.marks) >= self.channels and all(m.idle for m in self.marks.values())

    def advance(self, lateness: timedelta) -> datetime | None:
        """Move the horizon to watermark less lateness; returns it when it moved."""
        value = self.value
        if value is None:
            return None
        horizon = value - lateness
        if self.horizon is not None and horizon <= self.horizon:
            return None
        self.horizon = horizon
        return horizon
