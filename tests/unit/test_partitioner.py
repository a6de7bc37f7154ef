"""The SDK's partitioner must place every key where Kafka's default partitioner does:
the worker's tables are co-partitioned with the touchpoints topic by that hash."""

from kafka.partitioner.default import DefaultPartitioner

from producers.sdk import KeyHashPartitioner


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
    ours, default = KeyHashPartitioner(remember=50), DefaultPartitioner()
    keys = [f"customer-{n}".encode() for n in range(300)] + [b"", b"\xff" * 37]
    for partitions in (1, 3, 8, 12):
        cluster = Cluster(partitions)
        for key in keys * 2:  # the second time from what it remembers (or forgot)
            assert (ours.partition("t", key, key, None, None, cluster)
                    == default.partition("t", key, key, None, None, cluster)), key


def test_remembers_at_most_its_bound() -> None:
    ours = KeyHashPartitioner(remember=10)
    for n in range(25):
        ours.partition("t", None, str(n).encode(), None, None, Cluster(4))
    assert len(ours._hashes) <= 10
