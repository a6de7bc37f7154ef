"""The ids the collector drops: ``<prefix>.suppressions``, read whole and followed.

``journey forget`` writes one record per hashed id (``{"hash": ..., "active": ...}``,
keyed by the hash; compacted on Apache Kafka). Every collector reads the topic from the
start at boot and follows it, so its set is the latest state of each id. The set holds
keyed hashes (schemas/privacy.py), never an id: the collector hashes what a message
names and looks it up. Dropping here is the first line, not the only one: the worker's
partitions suppress too, in order (stream_processors/suppression.py), which also covers
SDK traffic and a collector that has not caught up yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.privacy import id_hash

__all__ = ["SuppressionList"]

log = logging.getLogger(__name__)


class SuppressionList:
    def __init__(self, bootstrap_servers: list[str], topic: str, key: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.key = key
        self.hashes: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def holds(self, *ids: object) -> bool:
        """Whether any of ``ids`` (strings; anything else is ignored) is suppressed."""
        return bool(self.hashes) and any(
            isinstance(i, str) and i and id_hash(i, self.key) in self.hashes for i in ids)

    def take(self, value: bytes) -> None:
        """One record of the topic."""
        try:
            record = json.loads(value)
            hashed, active = str(record["hash"]), bool(record["active"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed record on %s", self.topic)
            return
        if active:
            self.hashes.add(hashed)
        else:
            self.hashes.discard(hashed)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        """Read the topic from the start, and follow it; reconnect on broker errors."""
        offsets: dict[int, int] = {}
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers,
                                        enable_auto_commit=False, fetch_max_wait_ms=200)
            try:
                await consumer.start()
                await consumer.topics()  # the cluster's metadata, this topic's included
                partitions = consumer.partitions_for_topic(self.topic) or set()
                if not partitions:
                    await asyncio.sleep(2)  # not created yet: look again
                    continue
                tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, offsets.get(tp.partition, 0))
                async for record in consumer:
                    self.take(record.value)
                    offsets[record.partition] = record.offset + 1
            except KafkaError as exc:
                log.warning("reading %s failed (%s); retrying", self.topic, exc)
                await asyncio.sleep(2)
            finally:
                await consumer.stop()
