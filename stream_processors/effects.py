"""What one batch does to the world, and the one order in which it is safe to do it.

The invariant every agent of the topology holds, so that a crash at any instant loses
nothing and counts nothing twice:

    **state that marks work as done is saved only after the effects it guards are
    durable**: rows inserted into ClickHouse, messages acknowledged by the broker.

A batch therefore never writes a table while it runs. It reads tables through
:class:`Staged` (which shows the batch its own pending writes) and collects rows,
messages and table writes in an :class:`Effects`; :meth:`Effects.commit` then applies
them in order:

1. rows into ClickHouse (the sink returns once they are inserted);
2. messages, in the order they were queued, each acknowledged by the broker;
3. table writes, one group of tables after another, each group's changelog records
   acknowledged before the next group starts (a group that guards another comes later).

A crash before step 3 ends leaves some state unsaved: the batch's offsets are not
committed either (Faust commits only after flushing its producer), so the replay does
steps 1 and 2 again, and both are idempotent (ReplacingMergeTree rows, messages whose
consumers keep the latest or deduplicate). A crash after step 3 and before the offset
commit replays a batch whose state says it is done: it finds nothing new to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from faust.streams import _current_event
from faust.types import EventT

from schemas.partitioning import partition_for
from stream_processors.commands import BUNDLE_KEY, decode_bundle, encode_bundle

__all__ = ["Effects", "Outbox", "Staged", "unbundle", "writing_for"]


@contextlib.contextmanager
def writing_for(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event for a table write.

    A batch is committed after its events were iterated, but Faust's RocksDB store picks
    the partition's database from the current event (the memory store does not care).
    The event given is the one that carried the key, so the partition is the key's.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class Staged:
    """A table as one batch sees it: reads see the batch's own writes, which reach the
    table (and its changelog) only when :meth:`Effects.commit` applies them."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.writes: dict[bytes, tuple[bytes | None, EventT]] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key][0]
        return self.table.get(key)

    def set(self, key: bytes, value: bytes, carrier: EventT) -> None:
        """Stage a write; ``carrier`` is an event of the key's partition."""
        self.writes[key] = (value, carrier)

    def delete(self, key: bytes, carrier: EventT) -> None:
        self.writes[key] = (None, carrier)

    def keys_with(self, prefix: bytes) -> set[bytes]:
        """Keys starting with ``prefix``, as the batch sees them."""
        keys = {k for k in self.table if k.startswith(prefix)}
        for key, (value, _) in self.writes.items():
            if key.startswith(prefix):
                if value is None:
                    keys.discard(key)
                else:
                    keys.add(key)
        return keys

    def apply(self) -> None:
        for key, (value, carrier) in self.writes.items():
            with writing_for(carrier):
                if value is not None:
                    self.table[key] = value
                elif key in self.table:
                    del self.table[key]
        self.writes.clear()


class Outbox:
    """Messages for one topic, sent as one bundle per partition (in chunks).

    The partition is the one Kafka's default partitioner gives the key, as if each
    message had been sent alone: tables stay co-partitioned with their topics, and a
    key's messages keep their order. A bundle stays well under Kafka's 1 MB default
    message size (a merge carries a whole journey).
    """

    CHUNK_BYTES = 256 * 1024

    def __init__(self, topic: Any, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.items: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)

    def add(self, key: bytes, value: bytes, partition_key: bytes | None = None) -> None:
        """Queue a message; ``partition_key`` (default: the key) chooses its partition."""
        self.items[partition_for(partition_key or key, self.partitions)].append((key, value))

    async def send(self) -> list[Awaitable[Any]]:
        """Hand the bundles to the producer; returns their delivery futures."""
        futures = []
        for partition, items in self.items.items():
            chunk: list[tuple[bytes, bytes]] = []
            size = 0
            for item in items:
                if chunk and size + len(item[1]) > self.CHUNK_BYTES:
                    futures.append(await self._send(partition, chunk))
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item[0]) + len(item[1]) + 8
            if chunk:
                futures.append(await self._send(partition, chunk))
        self.items.clear()
        return futures

    async def _send(self, partition: int, chunk: list[tuple[bytes, bytes]]) -> Awaitable[Any]:
        return await self.topic.send(key=BUNDLE_KEY, value=encode_bundle(chunk),
                                     partition=partition)


def unbundle(event: EventT) -> list[tuple[bytes, bytes]]:
    """A bundle's (key, value) messages, or the event's own (a message sent alone)."""
    if event.key == BUNDLE_KEY:
        return decode_bundle(event.value)
    return [(event.key, event.value)]


class _Message:
    def __init__(self, topic: Any, key: bytes, value: bytes, partition: int | None) -> None:
        self.topic, self.key, self.value, self.partition = topic, key, value, partition

    async def send(self) -> list[Awaitable[Any]]:
        return [await self.topic.send(key=self.key, value=self.value, partition=self.partition)]


class Effects:
    """One batch's rows, messages and table writes; :meth:`commit` applies them in the
    order the module doc gives."""

    def __init__(self, write_rows: Callable[[Mapping[str, Sequence[tuple]]], Awaitable[None]],
                 flush: Callable[[], Awaitable[None]]) -> None:
        self._write_rows = write_rows
        self._flush = flush
        self.rows: dict[str, list[tuple]] = defaultdict(list)
        self._messages: list[Outbox | _Message] = []
        self._groups: list[list[Staged]] = []

    def outbox(self, topic: Any, partitions: int) -> Outbox:
        """A new outbox, sent after everything queued before it."""
        box = Outbox(topic, partitions)
        self._messages.append(box)
        return box

    def send(self, topic: Any, key: bytes, value: bytes, partition: int | None = None) -> None:
        """Queue one message, sent after everything queued before it."""
        self._messages.append(_Message(topic, key, value, partition))

    def save(self, *tables: Staged) -> None:
        """Apply these tables' writes after the effects, and after earlier groups."""
        self._groups.append(list(tables))

    async def commit(self) -> None:
        if any(self.rows.values()):
            await self._write_rows(self.rows)
        futures: list[Awaitable[Any]] = []
        for message in self._messages:
            futures += await message.send()
        if futures:
            await asyncio.gather(*futures)
        for i, group in enumerate(self._groups):
            if i and any(t.writes for t in group):
                await self._flush()  # the previous group's changelog records are acked
            for table in group:
                table.apply()
