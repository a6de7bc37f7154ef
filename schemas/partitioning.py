"""The partition Kafka's default partitioner gives a key.

This is the contract that keeps the worker's tables co-partitioned with the topics the
producers write, so the SDK and the worker's internal hops share one definition.
murmur2 is pure Python in kafka-python and aiokafka alike (measured: 8 % of the SDK's
time), and keys repeat (a customer's touchpoints come in bursts), so the hashes of the
65,536 keys used last are remembered: about 13 MB at most, instead of growing with the
customers up to a million keys (about 200 MB).
"""

from __future__ import annotations

import functools

from kafka.partitioner.default import murmur2

__all__ = ["key_hash", "partition_for"]


@functools.lru_cache(maxsize=1 << 16)
def key_hash(key: bytes) -> int:
    """murmur2 of ``key`` made positive, as Kafka's default partitioner uses it."""
    return murmur2(key) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` numbered from 0."""
    return key_hash(key) % partitions
