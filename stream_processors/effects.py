"""What one batch does to the world, and the one order in which it is safe to do it.

The invariant every stage of the topology holds, so that a crash at any instant loses
nothing and counts nothing twice:

    **state that marks work as done is saved only after the effects it guards are
    durable**: rows inserted into ClickHouse, messages acknowledged by the broker.

A stage therefore never writes a table while it runs. It reads and writes its tables
through :class:`Staged` (which keeps the batch's writes aside, and shows them to the
batch's own reads) and returns an :class:`Output`: rows, messages, and the order in
which its tables are to be saved. :meth:`Committer.commit` then applies it, one step
after another:

1. rows into ClickHouse (the sink returns once they are inserted);
2. messages, in the order they were queued per topic, each acknowledged by the broker;
3. table writes, one group of tables after another, each group's changelog records
   acknowledged by the broker before the next group starts (a group that guards
   another comes later) and before the batch is done;
4. the stage's in-memory bookkeeping (``Output.then``), which may now say "done".

Only then does the agent let Faust acknowledge the batch, so its offsets are committed
after its changelog records are in the broker. Faust itself does not promise that: a
table write only queues its changelog record, and the producer flush Faust runs before
a commit gives up on that queue after 0.1 s without a send (``ProducerBuffer.
flush_atmost``). Measured in the fault suite: a worker killed after such a commit lost
an aggregator partition's whole state while its input was committed, and a week of CX
windows never got a row.

A crash before step 3 ends leaves some state unsaved: the batch's offsets are not
committed either, so the replay does steps 1 and 2 again, and both are idempotent
(ReplacingMergeTree rows, messages whose consumers keep the latest or deduplicate). A
crash after step 3 and before the offset commit replays a batch whose state says it is
done: it finds nothing new to do.

Stages name topics by role (``BY_DEVICE`` ...), so they are tested with plain dicts
for tables and no broker; the topology maps the roles to Faust topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import defaultdict
from collections.abc import (
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
from faust.streams import _current_event
from faust.types import EventT

from schemas.partitioning import partition_for
from stream_processors.clickhouse.rows import dead_letter_row
from stream_processors.commands import (
    BUNDLE_KEY,
    WATERMARK_KEY,
    Marks,
    Watermark,
    decode_bundle,
    decode_command,
    encode_bundle,
    encode_command,
)

__all__ = ["ALERTS", "BY_DEVICE", "CX_PARTIALS", "DEAD_LETTERS", "JOURNEY_EVENTS", "Committer",
           "Message", "Output", "Staged", "Store", "decode_batch", "keys_with",
           "named_partition", "unbundle", "writing_for"]

#: Topic roles: the internal and output topics a stage may send to.
BY_DEVICE = "by-device"
JOURNEY_EVENTS = "journey-events"
CX_PARTIALS = "cx-partials"
ALERTS = "alerts"
DEAD_LETTERS = "dead-letters"

#: What a stage reads and writes a table through: a plain dict in unit tests, a
#: :class:`Staged` Faust table in the worker. Keys and values are bytes.
Store = MutableMapping[bytes, bytes]


class Message(NamedTuple):
    """One input message as a stage sees it: unbundled, its value decoded by the topology."""

    partition: int
    offset: int
    key: bytes
    value: Any


def keys_with(store: Store, prefix: bytes) -> set[bytes]:
    """The store's keys that start with ``prefix``."""
    return {key for key in store if key.startswith(prefix)}


def named_partition(key: bytes) -> int:
    """The partition a table key ``<partition>|...`` belongs to (the CX and suppression
    tables' layout)."""
    return int(key.split(b"|", 1)[0])


@contextlib.contextmanager
def writing_for(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event for a table write.

    A batch is committed after its events were iterated, but Faust's RocksDB store picks
    the partition's database from the current event (the memory store does not care).
    The event given is one of the key's partition.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


_DELETED = object()


class Staged(MutableMapping[bytes, bytes]):
    """A Faust table as one batch sees it: reads see the batch's own writes, which reach
    the table (and its changelog) only when :meth:`apply` runs, at commit.

    ``carrier`` gives, for a key, an event of the batch from the key's partition: the
    RocksDB store writes to the database of the current event's partition.
    """

    def __init__(self, table: Any, carrier: Callable[[bytes], EventT]) -> None:
        self.table = table
        self.carrier = carrier
        self.writes: dict[bytes, Any] = {}

    def get(self, key: bytes, default: Any = None) -> Any:
        if key in self.writes:
            value = self.writes[key]
            return default if value is _DELETED else value
        value = self.table.get(key)
        return default if value is None else value

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def __delitem__(self, key: bytes) -> None:
        self.writes[key] = _DELETED

    def __iter__(self) -> Iterator[bytes]:
        seen = set()
        for key in self.table:
            value = self.writes.get(key)
            if value is not _DELETED:
                seen.add(key)
                yield key
        for key, value in self.writes.items():
            if value is not _DELETED and key not in seen:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def apply(self) -> list[Awaitable[Any]]:
        """Write the batch's changes to the table; returns their changelog records'
        deliveries (Faust only queues them)."""
        sent: list[Awaitable[Any]] = []
        send = getattr(self.table, "send_changelog", None)
        if send is not None:  # Faust's tables send through this method; catch what it returns
            def capture(*args: Any, **kwargs: Any) -> Any:
                future = send(*args, **kwargs)
                sent.append(future)
                return future

            self.table.send_changelog = capture
        try:
            for key, value in self.writes.items():
                with writing_for(self.carrier(key)):
                    if value is not _DELETED:
                        self.table[key] = value
                    elif key in self.table:
                        del self.table[key]
        finally:
            if send is not None:
                del self.table.send_changelog
        self.writes.clear()
        return sent


class Outbox:
    """Keyed messages for one topic, sent as one bundle per partition (in chunks).

    The partition is the one Kafka's default partitioner gives the key, as if each
    message had been sent alone: tables stay co-partitioned with their topics, and a
    key's messages keep their order. A bundle stays well under Kafka's 1 MB default
    message size (a merge carries a whole journey).
    """

    CHUNK_BYTES = 256 * 1024

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.items: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)

    def add(self, key: bytes, value: bytes, partition_key: bytes | None = None) -> None:
        self.items[partition_for(partition_key or key, self.partitions)].append((key, value))

    def bundles(self) -> Iterator[tuple[int, list[tuple[bytes, bytes]]]]:
        """(partition, messages) per bundle to send."""
        for partition, items in self.items.items():
            chunk: list[tuple[bytes, bytes]] = []
            size = 0
            for item in items:
                if chunk and size + len(item[1]) > self.CHUNK_BYTES:
                    yield partition, chunk
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item[0]) + len(item[1]) + 8
            if chunk:
                yield partition, chunk


class _Single(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    partition: int | None


def unbundle(key: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """A bundle's (key, value) messages, or the message itself (sent alone)."""
    if key == BUNDLE_KEY:
        return decode_bundle(value)
    return [(key, value)]


def decode_batch(batch: Sequence[Message], decode: Callable[[bytes], Any]) -> list[Message]:
    """A batch's messages (bundles opened) as a stage takes them: watermarks decoded as
    such (one message each), the rest by ``decode``."""
    out = []
    for partition, offset, key, value in batch:  # Message(), not _replace(): 2.3x faster
        if key != WATERMARK_KEY:
            out.append(Message(partition, offset, key, decode(value)))
            continue
        command = decode_command(value)
        marks = command.marks if isinstance(command, Marks) else [command]
        out += [Message(partition, offset, key, mark) for mark in marks]
    return out


class Output:
    """One batch's rows, messages and table saves, in the order :class:`Committer` keeps.

    Keyed messages (:meth:`add`) are bundled per topic; a message sent alone
    (:meth:`send`) goes after every message queued before it for its topic, and before
    every one queued after it. Watermarks (:meth:`mark`) go last, all of a topic's in
    one message per partition: a marker may always come later than the messages it
    follows, never earlier.
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.rows: dict[str, list[tuple]] = defaultdict(list)
        self.messages: list[Outbox | _Single] = []
        self.marks: dict[str, list[Watermark]] = defaultdict(list)
        self.saves: list[tuple[Store, ...]] = []
        self.callbacks: list[Callable[[], None]] = []
        self._open: dict[str, Outbox] = {}

    def add(self, topic: str, key: bytes, value: bytes, partition_key: bytes | None = None,
            ) -> None:
        """Queue a keyed message; ``partition_key`` (default: the key) picks its partition."""
        box = self._open.get(topic)
        if box is None:
            box = self._open[topic] = Outbox(topic, self.partitions)
            self.messages.append(box)
        box.add(key, value, partition_key)

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        """Queue one message sent alone (to ``partition``, or where Kafka puts its key)."""
        self._open.pop(topic, None)  # keyed messages queued later go after this one
        self.messages.append(_Single(topic, key, value, partition))

    def mark(self, topic: str, mark: Watermark) -> None:
        """Queue a watermark for every partition of ``topic``, after all its messages."""
        self.marks[topic].append(mark)

    def dead_letter(self, topic: str, message: Message, reason: str, field: str, error: str,
                    payload: bytes, now: datetime) -> None:
        """Queue ``message`` (read from ``topic``) for the dead-letter topic and table."""
        self.send(DEAD_LETTERS, message.key, msgspec.json.encode({
            "reason": reason, "field": field, "error": error, "topic": topic,
            "partition": message.partition, "offset": message.offset,
            "payload": payload.decode("utf-8", errors="replace")}))
        self.rows["dead_letters"].append(dead_letter_row(
            now, topic, message.partition, message.offset, reason, field, error, payload))

    def save(self, *stores: Store) -> None:
        """Save these stores' writes after the rows and messages, and after earlier groups."""
        self.saves.append(stores)

    def then(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything else is durable."""
        self.callbacks.append(callback)

    def outgoing(self) -> list[Outbox | _Single]:
        """Everything to send, in order: the messages, then each topic's marks."""
        out = list(self.messages)
        for topic, marks in self.marks.items():
            value = encode_command(Marks(marks))
            out += [_Single(topic, WATERMARK_KEY, value, partition)
                    for partition in range(self.partitions)]
        return out

    def sent(self, topic: str | None = None) -> list[tuple[str, int | None, bytes, bytes]]:
        """Every message as (topic, partition, key, value), unbundled, in sending order."""
        out = []
        for message in self.outgoing():
            if isinstance(message, Outbox):
                out += [(message.topic, partition, key, value)
                        for partition, items in message.items.items() for key, value in items]
            else:
                out.append((message.topic, message.partition, message.key, message.value))
        return [m for m in out if topic is None or m[0] == topic]


class Committer:
    """Applies a stage's :class:`Output` to the world in the order the module doc gives."""

    def __init__(self, write_rows: Callable[[Mapping[str, Sequence[tuple]]], Awaitable[None]],
                 topics: Mapping[str, Any], broker_timeout: float = 60.0,
                 on_sent: Callable[[Sequence[Any]], object] | None = None) -> None:
        self._write_rows = write_rows
        self._topics = topics
        #: Hears the broker's acknowledgements (record metadata: topic, partition,
        #: offset) of each batch's messages.
        self._on_sent = on_sent
        #: How long the broker may take to acknowledge the batch's messages, and then
        #: each group's changelog records; past it, ``asyncio.TimeoutError``: the broker
        #: is in trouble and the worker stops to replay (Faust's own producer waits 20
        #: minutes, silently, before it gives up on a request).
        self.broker_timeout = broker_timeout

    async def commit(self, out: Output,
                     took: Callable[[str, float], object] = lambda step, seconds: None,
                     ) -> None:
        """Apply ``out``. ``took(step, seconds)`` hears how long each step waited:
        ``rows`` (ClickHouse), ``messages``, then ``state`` (the broker's
        acknowledgements): which one holds a stage's batches up, for ops."""
        started = time.perf_counter()
        if any(out.rows.values()):
            await self._write_rows(out.rows)
        inserted = time.perf_counter()
        took("rows", inserted - started)
        await asyncio.wait_for(self._send(out), self.broker_timeout)
        sent = time.perf_counter()
        took("messages", sent - inserted)
        for group in out.saves:
            changelog = [future for store in group if isinstance(store, Staged)
                         for future in store.apply()]
            if changelog:  # acknowledged before the next group, and before the batch is done
                await asyncio.wait_for(asyncio.gather(*changelog), self.broker_timeout)
        took("state", time.perf_counter() - sent)
        for callback in out.callbacks:
            callback()

    async def _send(self, out: Output) -> None:
        """Send the batch's messages in order; returns once the broker has them all."""
        futures: list[Awaitable[Any]] = []
        for message in out.outgoing():
            topic = self._topics[message.topic]
            if isinstance(message, Outbox):
                for partition, chunk in message.bundles():
                    futures.append(await topic.send(key=BUNDLE_KEY, value=encode_bundle(chunk),
                                                    partition=partition))
            else:
                futures.append(await topic.send(key=message.key, value=message.value,
                                                partition=message.partition))
        acknowledged = await asyncio.gather(*futures)
        if self._on_sent is not None:
            self._on_sent(acknowledged)
