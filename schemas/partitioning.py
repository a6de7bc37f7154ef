"""The partition Kafka's default partitioner gives a key.

This is the contract that keeps the worker's tables co-partitioned with the topics the
producers write, so the SDK and the worker's internal hops share one definition.

The hash is Kafka's murmur2 (MurmurHash2, 32 bits, seed 0x9747b28c), computed by the
``murmurhash2`` extension: kafka-python's and aiokafka's are pure Python, 3.0 µs a key
against 0.16 µs (measured here). The hashes used to be remembered instead, for the
65,536 keys used last: a cache hit cost as much as the extension does now, and the
cache held about 9 MB of small objects (an entry and a key tuple per key, 64,432 keys
at the end of the 25,000-customer bench) that came and went all run long and left the
interpreter's pools of that size part-empty (there: 451,000 blocks in use, 677,000
free).
"""

from __future__ import annotations

from murmurhash2 import murmurhash2

__all__ = ["key_hash", "partition_for"]

#: The seed of Kafka's murmur2 (Utils.murmur2 in the Java client).
_SEED = 0x9747B28C


def key_hash(key: bytes) -> int:
    """murmur2 of ``key`` made positive, as Kafka's default partitioner uses it."""
    return murmurhash2(key, _SEED) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` numbered from 0."""
    return key_hash(key) % partitions
