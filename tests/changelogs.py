"""A table's state as its changelog holds it, for the tests and the bench to read back."""

from __future__ import annotations

import time


def changelog_state(bootstrap_servers: str, topic: str, timeout: float = 120.0,
                    ) -> dict[bytes, bytes]:
    """The latest value per key of ``topic``, read from its start to the end offsets it
    had when the read began; deleted keys (a None value) left out, and ``{}`` for a
    topic that does not exist (a table never written).

    Why the latest per key: Tansu does not compact, so every write is there and the last
    one per key counts, as a store restored from it would hold."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest",
                             max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    try:
        if topic not in consumer.topics():
            return {}
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        latest: dict[bytes, bytes | None] = {}
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end offsets {ends} in "
                                   f"{timeout:.0f} s")
            for records in consumer.poll(timeout_ms=1000, max_records=20_000).values():
                for record in records:
                    latest[record.key] = record.value
        return {k: v for k, v in latest.items() if v is not None}
    finally:
        consumer.close()
