"""The Python SDK apps embed to emit touchpoints.

- Events are validated at the call site: a bad event raises
  :class:`schemas.SchemaError` where it was made, naming the field.
- ``track()`` never waits on the network. It hands the encoded event to a bounded
  queue; a background thread sends it with kafka-python (batched, compressed, keyed by
  customer so a customer's events stay in order on one partition).
- When the broker is unreachable, events go to a bounded on-disk spool
  (:class:`producers.spool.DiskSpool`) and are sent, in order, when it answers again,
  also by a later process using the same spool directory. Nothing is dropped; the only
  time the app hears of trouble is when even the spool is full.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
from kafka import KafkaProducer
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.partitioner.default import DefaultPartitioner

from producers.spool import DiskSpool, SpoolFull
from schemas import Touchpoint, encode_touchpoint, new_event_id, utcnow, validate
from schemas.partitioning import key_hash
from schemas.privacy import Redaction
from schemas.properties import SCHEMAS, Properties
from schemas.settings import Settings

__all__ = ["JourneyClient", "PublishError", "default_spool_dir"]

log = logging.getLogger(__name__)

_Record = tuple[bytes | None, bytes]
_MODEL_KEYS = {model: key for key, model in SCHEMAS.items()}


class PublishError(RuntimeError):
    """Events could not be accepted (spool full) or not delivered in time (flush)."""


def default_spool_dir(bootstrap_servers: str | list[str], topic: str) -> Path:
    """``~/.cache/journey-sdk/<broker>/<topic>``: keyed by broker as well as topic, so
    events kept for one broker are never sent to another that has a topic of the same
    name (a test cluster and production, say)."""
    servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else bootstrap_servers
    broker = ",".join(sorted(s.strip() for s in servers))
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", broker)[:60]
    digest = hashlib.blake2b(broker.encode(), digest_size=4).hexdigest()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "journey-sdk" / f"{readable}-{digest}" / topic


def kafka_config(bootstrap_servers: str | list[str], *, linger_ms: int = 20,
                 batch_size: int = 256 * 1024, compression_type: str | None = "gzip",
                 delivery_timeout_ms: int = 15_000) -> dict[str, Any]:
    """The SDK's kafka-python producer settings (the benchmark's bare loop uses them too)."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "linger_ms": linger_ms,
        "batch_size": batch_size,
        "compression_type": compression_type,
        "acks": "all",
        # One request in flight keeps a key's order through retries without the
        # idempotent producer (kafka-python 3 enables it by default): after a broker
        # restart that lost producer state (Tansu in memory), InitProducerId fails for
        # good and nothing would be sent again. Duplicates from retries are absorbed
        # downstream by event_id.
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": 1,
        "delivery_timeout_ms": delivery_timeout_ms,
        # kafka-python requires delivery > linger + request timeout.
        "request_timeout_ms": max(500, min(10_000, delivery_timeout_ms - linger_ms - 500)),
        "max_block_ms": 5_000,
        # kafka-python waits up to 30 s for a first broker inside KafkaProducer(); the
        # sender then says nothing and spools nothing meanwhile (measured: 30 s of
        # silence with a wrong port). After 3 s it says so and keeps events on disk.
        "bootstrap_timeout_ms": 3_000,
    }


class JourneyClient:
    """Publishes touchpoints to ``<prefix>.touchpoints``; thread-safe, one per process."""

    def __init__(
        self,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        topic: str = "journey.touchpoints",
        *,
        source: str = "",
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        max_queue: int = 100_000,
        block_timeout: float = 0.5,
        linger_ms: int = 20,
        batch_size: int = 256 * 1024,
        compression_type: str | None = "gzip",
        delivery_timeout_ms: int = 15_000,
        producer_config: Mapping[str, Any] | None = None,
        redaction: Redaction | None = None,
    ) -> None:
        self.topic = topic
        #: Personal data hashed, dropped or truncated before it leaves the process
        #: (default: JOURNEY_PII_* and JOURNEY_PRIVACY_KEY from the environment).
        self.redaction = Settings.from_env().redaction if redaction is None else redaction
        self.source = source
        self.block_timeout = block_timeout
        self._config = kafka_config(bootstrap_servers, linger_ms=linger_ms,
                                    batch_size=batch_size, compression_type=compression_type,
                                    delivery_timeout_ms=delivery_timeout_ms)
        self._config.update(producer_config or {})
        if self._config["delivery_timeout_ms"] <= (self._config["linger_ms"]
                                                   + self._config["request_timeout_ms"]):
            raise ValueError("delivery_timeout_ms must exceed linger_ms + request_timeout_ms")
        self._fatal: Exception | None = None
        #: Set by any delivery failure: drain the spool only through a new producer.
        self._reconnect = False
        self._queue: queue.Queue[_Record] = queue.Queue(max_queue)
        self._spool = DiskSpool(spool_dir or default_spool_dir(bootstrap_servers, topic),
                                spool_max_bytes)
        self._broker = bootstrap_servers
        self._warned = False  # the first outage is said on stderr at once
        self._producer: KafkaProducer | None = None
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._closed = threading.Event()  # wakes the sender from its backoff at close()
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="journey-sdk-sender", daemon=True)
        self._thread.start()

    # ── the app's side ───────────────────────────────────────────────────────
    def track(
        self,
        type: str,
        *,
        customer_id: str | None = None,
        anonymous_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        channel: str = "web",
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        session_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        version: int = 1,
    ) -> Touchpoint:
        """Validate and enqueue one touchpoint; returns it (with its ``event_id``)."""
        now = utcnow()
        tp = Touchpoint(
            event_id=event_id or new_event_id(), type=type, version=version,
            occurred_at=occurred_at or now, received_at=now, customer_id=customer_id,
            anonymous_id=anonymous_id, session_id=session_id,
            channel=channel,  # type: ignore[arg-type]  # validated in send()
            source=self.source, context=dict(context or {}), properties=dict(properties or {}))
        return self.send(tp)

    def emit(self, properties: Properties, *, customer_id: str | None = None,
             anonymous_id: str | None = None, **kwargs: Any) -> Touchpoint:
        """Send a touchpoint from its typed properties model; type and version follow.

            client.emit(DeliveryUpdated(order_id="o-1", status="late"), customer_id="c-1")

        Every type of the taxonomy has its model in :mod:`schemas.properties`, so editors
        and type checkers see each touchpoint's fields.
        """
        type_, version = _MODEL_KEYS[type(properties)]
        return self.track(type_, customer_id=customer_id, anonymous_id=anonymous_id,
                          properties=msgspec.to_builtins(properties), version=version,
                          **kwargs)

    def identify(self, customer_id: str, anonymous_id: str | None = None,
                 traits: Mapping[str, Any] | None = None, **kwargs: Any) -> Touchpoint:
        """Link a device's anonymous id to the customer it belongs to."""
        return self.track("identify", customer_id=customer_id, anonymous_id=anonymous_id,
                          properties={"traits": dict(traits or {})}, **kwargs)

    def send(self, tp: Touchpoint) -> Touchpoint:
        """Validate and enqueue a touchpoint built elsewhere (the simulator, a replay)."""
        tp = self.redaction.apply(validate(tp))
        record = (tp.key.encode(), encode_touchpoint(tp))
        if self._closing:
            raise PublishError("the client is closed")
        if self._fatal is not None:
            raise PublishError(f"the client cannot send: {self._fatal}")
        try:
            self._queue.put(record, timeout=self.block_timeout)
        except queue.Full:
            # The sender is far behind (broker down for long): straight to disk.
            try:
                self._spool.append(*record)
            except SpoolFull as exc:
                raise PublishError(f"event {tp.event_id} not accepted: {exc}") from exc
        return tp

    @property
    def pending(self) -> int:
        """Events accepted but not yet acknowledged by the broker (queued, in flight, spooled)."""
        return self._queue.qsize() + self._in_flight + len(self._spool)

    @property
    def spooled(self) -> int:
        return len(self._spool)

    @property
    def failures(self) -> int:
        """Deliveries that failed and were moved to the spool for another try."""
        return self._failures

    def stats(self) -> dict[str, float]:
        """kafka-python's producer metrics (batching: ``records-per-request-avg``)."""
        producer = self._producer
        if producer is None:
            return {}
        return dict(producer.metrics().get("producer-metrics", {}))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until every accepted event is acknowledged by the broker.

        Raises :class:`PublishError` after ``timeout`` seconds; the events stay queued
        or spooled and are still sent later.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self.pending:
                if self._fatal is not None:
                    raise PublishError(f"the client cannot send: {self._fatal}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PublishError(f"{self.pending} events not yet delivered after "
                                       f"{timeout:.0f} s ({self.spooled} spooled on disk in "
                                       f"{self._spool.directory}); they are kept and retried")
                self._cond.wait(min(0.2, remaining) if remaining is not None else 0.2)

    def close(self, timeout: float | None = 30.0) -> int:
        """Flush (up to ``timeout``) and stop the sender. Returns how many events could
        not be delivered: they are kept in the spool, said on the log, and sent by the
        next client on the same broker and topic (or ``spool_dir``). Raises
        :class:`PublishError` only for events it could not keep (the spool is full)."""
        with contextlib.suppress(PublishError):  # what is undelivered is spooled below
            self.flush(timeout)
        self._closing = True
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=10)
        if self._producer is not None:
            self._producer.close(timeout=5)  # failed sends land in the spool (errback)
        lost = 0
        try:  # a sender still waiting for a broker leaves its queue: keep it here
            self._drain_queue_to_spool()
        except SpoolFull:
            lost = self._queue.qsize() + 1
        kept = len(self._spool)
        self._spool.close()
        if lost:
            raise PublishError(f"{lost} events were lost: the spool in "
                               f"{self._spool.directory} is full")
        if kept:
            log.warning("journey SDK: %d events not delivered to %s are kept in %s; the next "
                        "client for this broker and topic sends them", kept, self._broker,
                        self._spool.directory)
        return kept

    def __enter__(self) -> JourneyClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ── the sender thread ────────────────────────────────────────────────────
    def _run(self) -> None:
        backoff = 0.25
        while not (self._closing and not self._queue.qsize()):
            try:
                if self._producer is None:
                    self._producer = KafkaProducer(
                        **{"partitioner": KeyHashPartitioner(), **self._config})
                    self._reconnect = False
                if len(self._spool):
                    self._drain_queue_to_spool()
                    if self._send_spooled():
                        backoff = 0.25
                    else:
                        self._closed.wait(backoff)
                        backoff = min(backoff * 2, 10.0)
                    continue
                try:
                    record = self._queue.get(timeout=0.1)
                except queue.Empty:
                    self._notify()
                    continue
                self._send(record)
            except KafkaConfigurationError as exc:
                log.error("journey SDK misconfigured, not sending: %s", exc)
                self._fatal = exc
                self._drain_queue_to_spool()
                return
            except KafkaError as exc:
                self._reconnect = True
                # No broker yet (bootstrap) or no metadata: keep events on disk meanwhile.
                self._drain_queue_to_spool()
                self._say_unreachable(exc)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:  # never let the sender die: the app would block forever
                log.exception("unexpected error in the journey SDK sender")
                self._closed.wait(backoff)

    def _say_unreachable(self, exc: BaseException) -> None:
        """Once per outage as a warning (on stderr if the app set up no logging), then
        at info level."""
        message = (f"journey SDK: cannot reach the broker at {self._broker} ({exc}); "
                   f"{len(self._spool)} events are kept in {self._spool.directory} and "
                   "sent once it answers")
        if self._warned:
            log.info(message)
            return
        self._warned = True
        if logging.getLogger().hasHandlers() or log.hasHandlers():
            log.warning(message)
        else:  # the app set up no logging: still say it, once
            print(message, file=sys.stderr, flush=True)

    def _send(self, record: _Record) -> None:
        assert self._producer is not None
        with self._cond:
            self._in_flight += 1
        try:
            future = self._producer.send(self.topic, key=record[0], value=record[1])
        except Exception:
            with self._cond:
                self._in_flight -= 1
            self._spool.append(*record)
            raise
        future.add_callback(self._delivered)
        future.add_errback(self._undelivered, record)

    def _delivered(self, _metadata: object) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def _undelivered(self, record: _Record, exc: BaseException) -> None:
        # kafka-python calls errback(*args, exception): the record comes first.
        self._failures += 1
        self._reconnect = True
        try:
            self._spool.append(*record)
        except SpoolFull:
            log.error("spool full: an event could not be kept after %s", exc)
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def _drain_queue_to_spool(self) -> None:
        """Keep order: while the spool holds events, newer ones queue up behind them."""
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                return
            self._spool.append(*record)

    def _send_spooled(self, chunk: int = 5000) -> bool:
        """Send the oldest spooled records; commit those acknowledged. True on success."""
        assert self._producer is not None
        if self._reconnect:
            # After an outage the broker may be a new one that lost its topics, and
            # Tansu 0.6 then acknowledges sends made with the old metadata and keeps
            # nothing. A new producer asks for the topic's metadata before its first send.
            self._producer.close(timeout=1)
            self._producer = None
            return True
        records = self._spool.peek(chunk)
        futures = [self._producer.send(self.topic, key=k, value=v) for k, v in records]
        self._producer.flush(timeout=self._config["delivery_timeout_ms"] / 1000 + 5)
        delivered = 0
        for future in futures:
            if not future.is_done or future.failed():
                break
            delivered += 1
        self._spool.commit(delivered)
        self._notify()
        if delivered < len(records):
            self._say_unreachable("no acknowledgement")
            return False
        log.info("sent %d spooled events", delivered)
        self._warned = False  # the next outage is said again
        return True

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()


class KeyHashPartitioner(DefaultPartitioner):
    """Kafka's default partitioner, hashing in native code (``key_hash``)."""

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return super().partition(topic, key, serialized_key, value, serialized_value,
                                     cluster)
        return sorted(partitions)[key_hash(serialized_key) % len(partitions)]
