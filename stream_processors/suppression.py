"""Forgotten ids, as each partition of a stage holds them: hashed, and in order.

``journey forget`` (stream_processors/privacy.py) sends a ``Forget`` to every partition
of the by-device and journey topics. Each partition stores the hashes it names in a
table of its own, keyed ``<partition>|<hash>``, and from that message on drops whatever
names one of them. Being a message among the partition's others is the point: every
touchpoint behind it is dropped, every one before it was written and is then deleted
from ClickHouse, with no moment in between when a worker could miss the list (a list
read from elsewhere, polled, could not promise that). Each partition acknowledges with
a ``privacy_acks`` row in the same batch, after the rows of every touchpoint before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from schemas.privacy import id_hash
from stream_processors.commands import Forget, Unsuppress
from stream_processors.effects import Output, Store

__all__ = ["Suppression"]


class Suppression:
    def __init__(self, key: str, stage: str) -> None:
        self.key = key  # JOURNEY_PRIVACY_KEY: ids hash as journey forget hashed them
        self.stage = stage

    def holds(self, store: Store, partition: int, ids: Iterable[str | None]) -> bool:
        """Whether one of ``ids`` is suppressed in ``partition``."""
        return any(store.get(_key(partition, id_hash(i, self.key))) is not None
                   for i in ids if i)

    def apply(self, store: Store, partition: int, command: Forget | Unsuppress) -> None:
        for hashed in command.hashes:
            if isinstance(command, Forget):
                store[_key(partition, hashed)] = b"1"
            elif store.get(_key(partition, hashed)) is not None:
                del store[_key(partition, hashed)]

    def ack(self, out: Output, command: Forget | Unsuppress, partition: int, erased: int,
            now: datetime) -> None:
        """The partition's answer: ``erased`` keys gone (a count, never an id)."""
        out.rows["privacy_acks"].append((command.request, self.stage, partition, erased, now))


def _key(partition: int, hashed: str) -> bytes:
    return f"{partition}|{hashed}".encode()
