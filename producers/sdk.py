"""The Python SDK apps embed to emit touchpoints.

Events are validated at the call site (a bad event raises :class:`schemas.SchemaError`
where it was made, not somewhere downstream), keyed by customer so that one
customer's events stay in order on one partition, and batched and compressed by
kafka-python's background sender so that ``track()`` does not wait for the network.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas import Touchpoint, encode_touchpoint, new_event_id, utcnow, validate

__all__ = ["JourneyClient", "PublishError"]

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """Events could not be handed to the broker within the configured time."""


class JourneyClient:
    """Publishes touchpoints to the ``<prefix>.touchpoints`` topic.

    Thread-safe: kafka-python's producer may be shared by threads, and so may this.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        topic: str = "journey.touchpoints",
        *,
        source: str = "",
        linger_ms: int = 20,
        batch_size: int = 256 * 1024,
        compression_type: str | None = "gzip",
        max_block_ms: int = 10_000,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.source = source
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "compression_type": compression_type,
            # Retries keep the per-key order only with the idempotent producer.
            "enable_idempotence": True,
            "acks": "all",
            "max_block_ms": max_block_ms,
        }
        config.update(producer_config or {})
        self._producer = KafkaProducer(**config)
        self._failures = 0

    @property
    def failures(self) -> int:
        """Events the broker finally refused after retries (logged with their event id)."""
        return self._failures

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
            event_id=event_id or new_event_id(),
            type=type,
            version=version,
            occurred_at=occurred_at or now,
            received_at=now,
            customer_id=customer_id,
            anonymous_id=anonymous_id,
            session_id=session_id,
            channel=channel,  # type: ignore[arg-type]  # validated just below
            source=self.source,
            context=dict(context or {}),
            properties=dict(properties or {}),
        )
        return self.send(tp)

    def send(self, tp: Touchpoint) -> Touchpoint:
        """Validate and enqueue a touchpoint built elsewhere (the simulator, a replay)."""
        tp = validate(tp)
        try:
            future = self._producer.send(
                self.topic, key=tp.key.encode(), value=encode_touchpoint(tp))
        except KafkaError as exc:
            raise PublishError(f"could not enqueue event {tp.event_id}: {exc}") from exc
        future.add_errback(self._on_error, tp.event_id)
        return tp

    def _on_error(self, exc: BaseException, event_id: str) -> None:
        self._failures += 1
        log.error("touchpoint %s was not delivered: %s", event_id, exc)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until every enqueued event is acknowledged by the broker."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(f"flush did not complete: {exc}") from exc

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then release the connection."""
        try:
            self.flush(timeout)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> JourneyClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
