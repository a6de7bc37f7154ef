"""Forgotten ids, as each partition of a stage holds them: hashed, and in order.

``journey forget`` (stream_processors/privacy.py) sends a ``Forget`` to every partition
of the by-device and journey topics. Each partition stores the hashes it names in a
table of its own, keyed ``<partition>|<hash>``, and from that message on drops whatever
names one of them. Being a message among the partition's others is the point: every
touchpoint behind it is dropped, every one before it was written and is then deleted
from ClickHouse, with no moment in between when a worker could miss the list (a list
read from elsewhere, polled, could not promise that). Each partition acknowledges with
a ``privacy_acks`` row in the same batch, after the rows of every touchpoint before it.

The hashes of each partition are also kept in memory, read from the table once per
partition held: a touchpoint costs a set lookup (nothing at all while nobody was
forgotten), not a hash and a table read per id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from schemas.privacy import id_hash
from stream_processors.commands import Forget, Unsuppress
from stream_processors.effects import Output, Store, keys_with
from stream_processors.stages.per_partition import PerPartition

__all__ = ["Suppression"]


class Suppression:
    def __init__(self, key: str, stage: str) -> None:
        self.key = key  # JOURNEY_PRIVACY_KEY: ids hash as journey forget hashed them
        self.stage = stage
        #: Per partition, its hashes (None: not read from the table yet). Dropped on
        #: revocation and after a failed batch (``clear``), and read again.
        self.known: PerPartition[set[str] | None] = PerPartition(lambda _partition: None)

    def holds(self, store: Store, partition: int, ids: Iterable[str | None]) -> bool:
        """Whether one of ``ids`` is suppressed in ``partition``."""
        hashes = self._hashes(store, partition)
        return bool(hashes) and any(id_hash(i, self.key) in hashes for i in ids if i)

    def apply(self, store: Store, partition: int, command: Forget | Unsuppress) -> None:
        hashes = self._hashes(store, partition)
        for hashed in command.hashes:
            if isinstance(command, Forget):
                store[_key(partition, hashed)] = b"1"
                hashes.add(hashed)
            else:
                if store.get(_key(partition, hashed)) is not None:
                    del store[_key(partition, hashed)]
                hashes.discard(hashed)

    def ack(self, out: Output, command: Forget | Unsuppress, partition: int, erased: int,
            now: datetime) -> None:
        """The partition's answer: ``erased`` keys gone (a count, never an id)."""
        out.rows["privacy_acks"].append((command.request, self.stage, partition, erased, now))

    def _hashes(self, store: Store, partition: int) -> set[str]:
        hashes = self.known[partition]
        if hashes is None:
            prefix = f"{partition}|".encode()
            hashes = {key[len(prefix):].decode() for key in keys_with(store, prefix)}
            self.known[partition] = hashes
        return hashes


def _key(partition: int, hashed: str) -> bytes:
    return f"{partition}|{hashed}".encode()
