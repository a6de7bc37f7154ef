"""The SDK and the worker must place every key where Kafka's default partitioner does:
the worker's tables are co-partitioned with the touchpoints topic by that hash."""

import random

from aiokafka.partitioner import DefaultPartitioner as AiokafkaPartitioner
from kafka.partitioner.default import DefaultPartitioner, murmur2

from producers.sdk import KeyHashPartitioner
from schemas.partitioning import key_hash, partition_for

_rng = random.Random(5)
#: Ids as producers send them, the empty key, and random bytes of every length up to 70
#: (murmur2 takes 4 bytes at a time and treats a tail of 1, 2 or 3 apart).
KEYS = ([f"customer-{n}".encode() for n in range(300)] + [b"", b"\xff" * 37]
        + [_rng.randbytes(_rng.randrange(71)) for _ in range(2000)])


class Cluster:
    """The two questions a partitioner asks of kafka-python's cluster metadata."""

    def __init__(self, partitions: int) -> None:
        self.partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions


def test_same_partition_as_kafkas_default_for_every_key_and_count() -> None:
    ours, default = KeyHashPartitioner(), DefaultPartitioner()
    for partitions in (1, 3, 8, 12):
        cluster = Cluster(partitions)
        for key in KEYS:
            assert (ours.partition("t", key, key, None, None, cluster)
                    == default.partition("t", key, key, None, None, cluster)), key


def test_the_workers_partitions_are_aiokafkas_too() -> None:
    for partitions in (1, 3, 8, 12):
        every = list(range(partitions))
        for key in KEYS:
            assert partition_for(key, partitions) == AiokafkaPartitioner()(key, every, every)


def test_the_native_hash_is_kafka_pythons_murmur2() -> None:
    assert [key_hash(key) for key in KEYS] == [murmur2(key) & 0x7FFFFFFF for key in KEYS]
