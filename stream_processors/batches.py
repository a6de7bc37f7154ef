"""How an agent applies a stage to a batch without losing the batch when something fails.

Faust acknowledges a ``take_events`` batch in a ``finally`` clause: if the agent's body
raises, the batch's offsets are still committed and its messages are lost, never
processed (faust-streaming/faust#315 and #527; measured here as touchpoints and whole
anonymous journeys missing after a fault run). So no exception may leave the body:

- a failure in the broker or the network (the producer gave up, a flush timed out) says
  nothing about the data: the process exits at once, before Faust acknowledges
  anything, and its supervisor (``journey up``, compose, Kubernetes) starts it again,
  to replay the batch from the last commit;
- anything else is taken to be about the data: the batch is applied again one message
  at a time, and a message that still fails goes to the dead letters with the stage and
  the error, so one bad message neither stalls its partition nor takes its batch along.

Applying a message again is safe because a stage's output is applied in the crash-safe
order (stream_processors/effects.py): whatever a failed attempt did is redone
idempotently. What the stage keeps in memory is another matter (a window marked as
published, a closing taken off a heap, by the attempt that failed), so ``forget`` drops
it before each new attempt, and the stage rebuilds it from its tables. ClickHouse being
down is not an error here: the sink waits and retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import msgspec
from aiokafka.errors import KafkaError

from schemas import utcnow
from stream_processors.effects import Committer, Message, Output
from stream_processors.metrics import WorkerMetrics

__all__ = ["TRANSIENT", "BatchRunner", "parts"]

log = logging.getLogger(__name__)

#: Errors of the infrastructure, not of the data: the worker restarts and replays.
TRANSIENT = (KafkaError, OSError, asyncio.TimeoutError)
#: The exit status of a worker that stopped to replay (EX_TEMPFAIL: try again).
EXIT_TO_REPLAY = 75


R = TypeVar("R")


def parts(records: Sequence[R], open_: Callable[[Sequence[R]], list[Message]], most: int,
          ) -> Iterator[tuple[list[R], list[Message]]]:
    """``records`` in runs of whole records holding at most ``most`` messages each, with
    their messages (``open_``: bundles opened); a record that alone holds more is a run
    by itself.

    Why: a bundle holds up to hundreds of messages, so a batch of 2,000 records was
    measured at up to 100,000 messages: seconds of one stage holding the event loop, and
    hundreds of MB in memory at once. Each run is a batch Faust could have delivered
    (whole records, in order), applied and committed before the next; the records'
    offsets are committed after the last, as before.
    """
    run: list[R] = []
    messages: list[Message] = []
    for record in records:
        opened = open_([record])
        if run and len(messages) + len(opened) > most:
            yield run, messages
            run, messages = [], []
        run.append(record)
        messages += opened
    if run:
        yield run, messages


class BatchRunner:
    def __init__(self, committer: Committer, metrics: WorkerMetrics, partitions: int,
                 exit: Callable[[int], object] = os._exit) -> None:
        self.committer = committer
        self.metrics = metrics
        self.partitions = partitions
        self._exit = exit

    async def run(self, stage: str, topic: str, batch: Sequence[Message],
                  apply: Callable[[Sequence[Message]], Output],
                  forget: Callable[[], object] = lambda: None) -> None:
        """Apply ``apply`` (a stage, bound to fresh staged tables on every call) to
        ``batch`` and commit its output; never raises. ``forget``: drop the stage's
        in-memory state, after an attempt that failed."""
        self.metrics.stage_batch_messages.labels(stage).observe(len(batch))
        try:
            started = time.perf_counter()
            out = apply(batch)
            applied = time.perf_counter()
            seconds = self.metrics.stage_batch_seconds
            await self.committer.commit(
                out, lambda step, took: seconds.labels(stage, step).observe(took))
            seconds.labels(stage, "apply").observe(applied - started)
            seconds.labels(stage, "commit").observe(time.perf_counter() - applied)
            return
        except TRANSIENT as exc:
            self._stop(stage, exc)
        except Exception:
            log.exception("%s failed on a batch of %d messages; applying them one by one",
                          stage, len(batch))
        forget()
        for message in batch:
            try:
                await self.committer.commit(apply([message]))
            except TRANSIENT as exc:
                self._stop(stage, exc)
            except Exception as exc:
                log.exception("%s failed on %s[%d]@%d; sent to the dead letters", stage, topic,
                              message.partition, message.offset)
                forget()
                await self.dead_letter(stage, topic, message, exc)

    async def dead_letter(self, stage: str, topic: str, message: Message,
                          exc: BaseException) -> None:
        """Send ``message`` to the dead letters, reason ``processing_error``."""
        self.metrics.dead_letters.labels("processing_error").inc()
        value = message.value
        payload = value if isinstance(value, bytes) else msgspec.json.encode(value)
        error = f"{stage}: {type(exc).__name__}: {exc}"[:2000]
        out = Output(self.partitions)
        out.dead_letter(topic, message, "processing_error", stage, error, payload, utcnow())
        try:
            await self.committer.commit(out)
        except TRANSIENT as transient:
            self._stop(stage, transient)

    def _stop(self, stage: str, exc: BaseException) -> None:
        log.critical("%s could not deliver its output (%s: %s); the worker stops before "
                     "Faust acknowledges the batch, and replays it once restarted", stage,
                     type(exc).__name__, exc)
        logging.shutdown()
        self._exit(EXIT_TO_REPLAY)
