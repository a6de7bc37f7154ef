"""Table recovery that heals itself: a partition whose local state disagrees with its
changelog is thrown away and rebuilt from the changelog, as Kafka Streams does with a
corrupted task, instead of stopping the worker.

Two things made a restarted worker die in recovery (``ConsistencyError: The persisted
offset ... is higher than the last offset in that topic``), measured on Tansu 0.6:

- **Tansu's ListOffsets(latest) is wrong.** It answers the first offset of the
  partition's last record batch plus one, not the log end: after a batch of 5 records
  at offsets 5..9 it says 6, where Kafka says 10 (a fetch response's high watermark is
  right). Faust takes ``end - 1`` as the last offset, so the offset of the last
  changelog record this worker wrote (what RocksDB persists) looked "above the
  highwater", and recovery could also have stopped before a batch's last records.
  :func:`probe_highwaters` corrects the answer with one fetch per partition; on Kafka
  the fetch agrees with ListOffsets and changes nothing.
- **Local state can really be ahead of, or unreadable beside, the changelog**: records
  acknowledged by a broker that then lost them, a RocksDB directory left corrupt by a
  SIGKILL or a full disk. Then only a rebuild is right. :class:`HealingRecovery` does it
  per partition, and :class:`HealingRocksDBStore` for a database that does not open.

Rebuilding is always safe here because the topology saves state that marks work as done
only after the effects it guards are durable (see topology.py): state lost with a
discarded partition makes a replay redo effects that are idempotent, never skip them.
"""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.stores import STORES
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["HealingRecovery", "HealingRocksDBStore", "HealingTableManager", "install",
           "on_rebuild", "probe_highwaters"]

log = logging.getLogger(__name__)

#: Called as (table, partition, reason) whenever a partition's local state is discarded;
#: the topology counts it (journey_state_rebuilds_total).
_observers: list[Callable[[str, int, str], None]] = []


def on_rebuild(observer: Callable[[str, int, str], None]) -> None:
    """Register ``observer(table, partition, reason)`` for every rebuild."""
    _observers.append(observer)


def _rebuilt(table: str, partition: int, reason: str) -> None:
    for observer in _observers:
        observer(table, partition, reason)


async def probe_highwaters(bootstrap_servers: list[str] | str,
                           listed: Mapping[Any, int | None]) -> dict[Any, int | None]:
    """The log end of each partition: ListOffsets' answer, raised to what a fetch from
    just below it reports (see the module doc for why ListOffsets alone is not enough).
    """
    out = dict(listed)
    probe = [tp for tp, end in listed.items() if end]
    if not probe:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                fetch_max_wait_ms=50, max_partition_fetch_bytes=1 << 20)
    await consumer.start()
    try:
        tps = {TopicPartition(tp.topic, tp.partition): tp for tp in probe}
        consumer.assign(list(tps))
        for ktp, tp in tps.items():
            consumer.seek(ktp, max(0, (listed[tp] or 1) - 1))
        pending = set(tps)
        for _ in range(20):  # a fetch round each; they answer after fetch_max_wait_ms
            await consumer.getmany(*pending, timeout_ms=100, max_records=1)
            done = {ktp for ktp in pending if consumer.highwater(ktp) is not None}
            for ktp in done:
                out[tps[ktp]] = max(listed[tps[ktp]] or 0, consumer.highwater(ktp))
            pending -= done
            if not pending:
                break
    finally:
        await consumer.stop()
    return out


def _install_highwater_probe() -> None:
    """Make Faust's consumer use :func:`probe_highwaters` wherever it asks for log ends."""
    cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls, "_journey_original_highwaters", cls._highwaters)

    async def highwaters(self: Any, partitions: list[TP]) -> Mapping[TP, int]:
        listed = await original(self, partitions)
        if self.consumer.in_transaction:
            return listed
        servers = [f"{url.host}:{url.port or 9092}" for url in self.app.conf.broker]
        return await probe_highwaters(servers, listed)

    cls._journey_original_highwaters = original
    cls._highwaters = highwaters


class HealingRecovery(Recovery):
    """Faust's recovery, except that a partition whose persisted offset lies beyond its
    changelog's end is discarded locally and read again from the start."""

    async def _build_offsets(self, consumer: Any, tps: set[TP], destination: Any,
                             title: str) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        suspect = [tp for tp in tps if destination.get(tp) not in (None, -1)]
        if not suspect:
            return
        ends = await consumer.highwaters(*suspect)
        earliest = await consumer.earliest_offsets(*suspect)
        for tp in suspect:
            end = ends.get(tp)
            last = -1 if end is None else end - 1
            if destination[tp] <= last:
                continue
            table = self.tp_to_table[tp]
            log.warning("%s partition %d: local state is at changelog offset %d but the "
                        "changelog ends at %d; discarding the local state and rebuilding it "
                        "from the changelog", table.name, tp.partition, destination[tp], last)
            discard_partition(table.data, tp.partition)
            first = earliest.get(tp)
            destination[tp] = -1 if not first else first - 1
            _rebuilt(table.name, tp.partition, "ahead_of_changelog")


class HealingTableManager(TableManager):
    """The table manager, with :class:`HealingRecovery` as its recovery service."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = HealingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


def discard_partition(store: Any, partition: int) -> None:
    """Forget every local key of ``partition`` (memory or RocksDB store)."""
    if isinstance(store, faust_rocksdb.Store):
        db = store._dbs.pop(partition, None)
        del db
        gc.collect()  # rocksdict closes a database when its last reference goes
        _remove_files(store, partition)
        return
    keys = [k for k, p in getattr(store, "_key_partition", {}).items() if p == partition]
    for key in keys:
        store.data.pop(key, None)
        store._key_partition.pop(key, None)


def _remove_files(store: faust_rocksdb.Store, partition: int) -> None:
    """Delete a closed RocksDB partition's files and forget which keys it held."""
    for key in [k for k, p in store._key_index.items() if p == partition]:
        del store._key_index[key]
    shutil.rmtree(store.partition_path(partition), ignore_errors=True)


class HealingRocksDBStore(faust_rocksdb.Store):
    """Faust's RocksDB store, except that a partition database that no longer opens
    (corrupt after a SIGKILL or a full disk) is removed and started afresh: its state
    then comes back from the changelog. A held lock is still waited for, as Faust does.
    """

    def _open_for_partition(self, partition: int) -> Any:
        try:
            return super()._open_for_partition(partition)
        except faust_rocksdb.ERRORS_ROCKS_IO_ERROR as exc:
            if "lock" in repr(exc).lower():
                raise
            log.warning("%s partition %d: RocksDB at %s does not open (%s); removing it and "
                        "rebuilding the partition from the changelog", self.table.name,
                        partition, self.partition_path(partition), exc)
            _remove_files(self, partition)
            _rebuilt(self.table.name, partition, "unreadable_store")
            return super()._open_for_partition(partition)


def install() -> None:
    """Wire the healing parts into Faust; the app passes ``TableManager`` itself."""
    _install_highwater_probe()
    STORES.aliases["rocksdb"] = f"{__name__}:HealingRocksDBStore"
