"""Second hop, keyed by device: which customer a device belongs to.

A device's link is set by its first ``identify`` (the only touchpoint trusted to tie a
device to a customer, stages/routing.py says why): the router sends it to the
customer's journey and a ``Link`` here. That first link sends ``MergeInto`` to
the device's anonymous journey, so its past joins the customer's; later anonymous
touchpoints from the device go to the customer, through the device's journey (after
the merge: stages/journeys.py says why). Only a touchpoint that names the
customer links: an anonymous one never moves a link. Anonymous touchpoints are not
decoded here: the device is their key.

Watermarks: each by-device partition forwards the minimum over its inputs (every
touchpoint partition), after the touchpoints of the batch that carried them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from schemas.partitioning import partition_for
from stream_processors.commands import (
    Expire,
    Forget,
    Link,
    MergeInto,
    Touch,
    Unsuppress,
    Watermark,
    encode_command,
)
from stream_processors.effects import JOURNEY_EVENTS, Message, Output, Store
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages.per_partition import PerPartition
from stream_processors.suppression import Suppression
from stream_processors.windows import LowWatermark

__all__ = ["IdentityResolver"]


def encode_link(customer: bytes, seen: int) -> bytes:
    """A device's link: its customer, and when it was last used (Unix seconds)."""
    return _encoder.encode((customer.decode(), seen))


def decode_link(value: bytes) -> tuple[bytes, int | None]:
    """(customer, last used); a bare customer id is a link from before retention (no
    valid UTF-8 text starts with the byte that starts a 2-item msgpack array)."""
    if value[:1] == b"\x92":
        customer, seen = _decoder.decode(value)
        return customer.encode(), seen
    return value, None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[str, int])


class IdentityResolver:
    def __init__(self, partitions: int, retention: timedelta | None = None, *,
                 privacy_key: str = "", metrics: WorkerMetrics | None = None) -> None:
        self.partitions = partitions
        self.suppression = Suppression(privacy_key, "by-device")
        self.metrics = metrics
        #: A link unused for longer is forgotten (None: kept).
        self.retention = retention
        #: How stale a link's "last used" may get before it is written again: a day, or
        #: a tenth of the retention if that is shorter (one write per device and day,
        #: not per touchpoint).
        self.refresh_seconds = 86400 if retention is None else min(
            86400, int(retention.total_seconds() / 10))
        #: Per by-device partition, the marks of its inputs (in memory: after a restart
        #: the window clocks wait until every input was heard from again).
        self.inputs: PerPartition[LowWatermark] = PerPartition(
            lambda _partition: LowWatermark(channels=partitions))

    def past_retention(self, value: bytes, now: datetime) -> bool:
        """Whether a stored link is to be sent ``Expire`` (one from before retention is
        too: the command stamps it)."""
        _customer, seen = decode_link(value)
        return self.retention is not None and (
            seen is None or now.timestamp() - seen > self.retention.total_seconds())

    def resolve(self, batch: Sequence[Message], devices: Store, now: datetime,
                suppressed: Store | None = None) -> Output:
        """``batch``: commands keyed by device (``Touch`` of its anonymous touchpoints,
        ``Link`` to a customer, ``Expire``), privacy commands, and watermarks;
        ``suppressed``: the partitions' forgotten ids (stream_processors/suppression.py)."""
        out = Output(self.partitions)
        suppressed = {} if suppressed is None else suppressed
        marked: set[int] = set()
        clock = int(now.timestamp())
        for message in batch:
            command = message.value
            if isinstance(command, Watermark):
                self.inputs[message.partition].update(command.channel, command.at, command.idle)
                marked.add(message.partition)
                continue
            if isinstance(command, Forget | Unsuppress):
                self._privacy(out, devices, suppressed, message.partition, command, now)
                continue
            device: bytes = message.key
            if not isinstance(command, Expire) and self.suppression.holds(
                    suppressed, message.partition,
                    (device.decode(errors="replace"), command.customer_id)):
                if self.metrics is not None:
                    self.metrics.suppressed_touchpoints.labels("by-device").inc(
                        len(command.touchpoints) if isinstance(command, Touch) else 1)
                continue
            stored = devices.get(device)
            linked, seen = decode_link(stored) if stored is not None else (None, None)
            if isinstance(command, Expire):
                if linked is not None and seen is None:  # its clock starts now
                    devices[device] = encode_link(linked, clock)
                elif linked is not None and self.past_retention(stored, now):
                    del devices[device]
                continue
            if isinstance(command, Link) or command.customer_id:
                customer = command.customer_id.encode()
                if linked is None:  # first identification: the past comes along
                    out.add(JOURNEY_EVENTS, b"anon:" + device,
                            encode_command(MergeInto(command.customer_id)))
                if linked != customer:  # later anonymous visits follow the login
                    linked, seen = customer, None
                if isinstance(command, Link):
                    self._used(devices, device, linked, seen, clock)
                    continue
            assert isinstance(command, Touch)
            if linked is None:
                out.add(JOURNEY_EVENTS, b"anon:" + device, encode_command(command))
            else:  # through the device's journey, after the merge its link sent there
                self._used(devices, device, linked, seen, clock)
                out.add(JOURNEY_EVENTS, b"anon:" + device,
                        encode_command(Touch(linked.decode(), command.touchpoints)))
        for partition in sorted(marked):  # after this batch's touchpoints
            low = self.inputs[partition]
            out.mark(JOURNEY_EVENTS, Watermark(f"d{partition}", low.value, low.idle))
        out.save(suppressed, devices)  # a link is saved once its MergeInto is acknowledged
        return out

    def _privacy(self, out: Output, devices: Store, suppressed: Store, partition: int,
                 command: Forget | Unsuppress, now: datetime) -> None:
        """Suppress (or allow again) the command's ids in this partition; a ``Forget``
        also erases the partition's links of its devices, and every link to one of its
        customers (a scan of the partition: forgets are rare, and a link made just
        before the forget reached here is known nowhere else)."""
        self.suppression.apply(suppressed, partition, command)
        erased = 0
        if isinstance(command, Forget):
            doomed = {d.encode() for d in command.devices}
            customers = {c.encode() for c in command.customers}
            for device in list(devices):
                if partition_for(device, self.partitions) != partition:
                    continue
                stored = devices.get(device)
                if stored is not None and (device in doomed
                                           or decode_link(stored)[0] in customers):
                    del devices[device]
                    erased += 1
        self.suppression.ack(out, command, partition, erased, now)

    def _used(self, devices: Store, device: bytes, customer: bytes, seen: int | None,
              clock: int) -> None:
        if seen is None or clock - seen >= self.refresh_seconds:
            devices[device] = encode_link(customer, clock)
