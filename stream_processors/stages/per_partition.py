"""What a stage keeps in memory for each partition it holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["PerPartition", "Unpublished"]

T = TypeVar("T")


class PerPartition(Generic[T]):
    """One ``T`` per partition: made on first use (or on assignment), dropped on
    revocation, so nothing outlives the worker's hold on a partition, and a partition
    that comes back starts from its table, not from what this process knew before."""

    def __init__(self, factory: Callable[[int], T]) -> None:
        self._factory = factory
        self._items: dict[int, T] = {}

    def __getitem__(self, partition: int) -> T:
        item = self._items.get(partition)
        if item is None:
            item = self._items[partition] = self._factory(partition)
        return item

    def __setitem__(self, partition: int, item: T) -> None:
        self._items[partition] = item

    def __contains__(self, partition: int) -> bool:
        return partition in self._items

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._items))

    def assign(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self[partition]

    def revoke(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._items.pop(partition, None)

    def clear(self) -> None:
        """Forget every partition (each starts again from its table on next use): what a
        failed batch may have changed here is not known."""
        self._items.clear()


class Unpublished:
    """The windows changed since they were last published, and when that was: a window
    that many batches change is published once per interval, not once per batch."""

    def __init__(self) -> None:
        self.windows: set[tuple[bytes, Any]] = set()
        self.published_at: float | None = None

    @property
    def never_published(self) -> bool:
        """Nothing published yet since this process took the partition: the receiver's
        view is unknown, so every open window is to be sent once."""
        return self.published_at is None

    def due(self, now: float, every: float) -> bool:
        return self.published_at is None or now - self.published_at >= every

    def take(self, now: float) -> set[tuple[bytes, Any]]:
        """The changed windows, to publish now; starts afresh."""
        taken, self.windows = self.windows, set()
        self.published_at = now
        return taken
