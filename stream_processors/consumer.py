"""What Faust's consumer knows about a partition that it does not readily say.

Used by the topology's timers: whether a source partition is caught up (for idle
watermarks) and how far each partition lags (for ops). These read aiokafka's and
Faust's internals, in one place, so an upgrade that moves them breaks here only.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import TopicPartition

__all__ = ["caught_up", "fetched_within", "lag"]


def caught_up(app: Any, tp: TopicPartition, done: int, fresh_seconds: float) -> bool:
    """Whether the worker has processed ``tp`` up to its highwater (``done``: the offset
    after the last record whose outputs are acknowledged).

    Only by a highwater that is fresh: while a rebalance or a pause stops fetching, the
    last one stays equal to the position, and every partition looked idle at once; the
    watermark then jumped to the furthest event seen (measured: five weeks of CX windows
    closed early, their touchpoints all too late). And processed, not fetched: the fetch
    position runs ahead by whatever Faust holds in its buffers (measured: a restarted
    worker's partitions looked idle while the records it had just fetched still waited).
    """
    if app.rebalancing or not fetched_within(app, tp, fresh_seconds):
        return False
    consumer = app.consumer
    try:
        highwater = consumer.highwater(tp)
    except Exception:  # just revoked
        return False
    committed = consumer._committed_offset.get(tp) or 0
    return highwater is not None and max(done, committed) >= highwater


def fetched_within(app: Any, tp: TopicPartition, seconds: float) -> bool:
    """Whether the consumer heard from the broker about ``tp`` in the last ``seconds``."""
    try:
        # aiokafka knows when each partition's last fetch response came; Faust does not say.
        aio = app.consumer._thread._ensure_consumer()
        stamp = aio.last_poll_timestamp(tp)
    except Exception:  # not assigned (any more), or no fetch yet
        return False
    return stamp is not None and time.time() * 1000 - stamp <= seconds * 1000


async def lag(app: Any) -> list[tuple[str, int, int]]:
    """(topic, partition, records behind the highwater) of each assigned partition."""
    consumer = app.consumer
    out = []
    for tp in consumer.assignment():
        try:
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
        except Exception:  # not fetched yet, or just revoked
            continue
        if position is not None and highwater is not None:
            out.append((tp.topic, tp.partition, max(0, highwater - position)))
    return out
