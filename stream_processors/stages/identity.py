"""Second hop, keyed by device: which customer a device belongs to.

A device's link is set by the first touchpoint that carries both its anonymous id and
a customer id (an ``identify``, or any identified call from it). That first link sends
``MergeInto`` to the device's anonymous journey, so its past joins the customer's;
later anonymous touchpoints from the device go straight to the customer. Only a
touchpoint that names the customer links: an anonymous one never moves a link.

Watermarks: each by-device partition forwards the minimum over its inputs (every
touchpoint partition), after the touchpoints of the batch that carried them.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas import decode_trusted
from stream_processors.commands import (
    WATERMARK_KEY,
    MergeInto,
    Touch,
    Watermark,
    encode_command,
)
from stream_processors.effects import JOURNEY_EVENTS, Message, Output, Store
from stream_processors.stages.per_partition import PerPartition
from stream_processors.windows import LowWatermark

__all__ = ["IdentityResolver"]


class IdentityResolver:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        #: Per by-device partition, the marks of its inputs (in memory: after a restart
        #: the window clocks wait until every input was heard from again).
        self.inputs: PerPartition[LowWatermark] = PerPartition(
            lambda _partition: LowWatermark(channels=partitions))

    def resolve(self, batch: Sequence[Message], devices: Store) -> Output:
        """``batch``: touchpoints keyed by device (raw, validated), and watermarks."""
        out = Output(self.partitions)
        marked: set[int] = set()
        for message in batch:
            if isinstance(message.value, Watermark):
                mark = message.value
                self.inputs[message.partition].update(mark.channel, mark.at, mark.idle)
                marked.add(message.partition)
                continue
            device, raw = message.key, message.value
            tp = decode_trusted(raw)
            linked = devices.get(device)
            customer = tp.customer_id
            if customer:
                if linked is None:  # first identification: the past comes along
                    out.add(JOURNEY_EVENTS, f"anon:{tp.anonymous_id}".encode(),
                            encode_command(MergeInto(customer)))
                if linked != customer.encode():  # later anonymous visits follow the login
                    devices[device] = customer.encode()
            elif linked is not None:
                customer = linked.decode()
            key = customer or f"anon:{tp.anonymous_id}"
            out.add(JOURNEY_EVENTS, key.encode(), encode_command(Touch(customer, [raw])))
        for partition in sorted(marked):  # after this batch's touchpoints
            clock = self.inputs[partition]
            out.broadcast(JOURNEY_EVENTS, WATERMARK_KEY,
                          encode_command(Watermark(f"d{partition}", clock.value, clock.idle)))
        out.save(devices)  # a link is saved once its MergeInto is acknowledged
        return out
