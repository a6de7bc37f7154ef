"""Creating the service's topics with deliberate partition counts.

Brokers that auto-create topics (Tansu does, with 4 partitions) would otherwise pick
the partition count for us on the first produce.
"""

from __future__ import annotations

import contextlib
import logging
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.settings import Settings

__all__ = ["BrokerUnavailable", "ensure_topics"]

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The Kafka broker could not be reached in time."""


def ensure_topics(settings: Settings, timeout: float = 60.0) -> list[str]:
    """Create the service's topics when missing; returns those created.

    The internal topics are created here too, with the same partition count as the
    touchpoints, so that re-keyed streams and table changelogs stay co-partitioned.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                     client_id=f"{settings.app_id}-admin")
            break
        except (KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker at {settings.broker_url} after {timeout:.0f} s ({exc}); "
                    "start one with `journey up` or set JOURNEY_BROKER_URL") from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication)
            for name in (settings.touchpoints_topic, settings.dead_letter_topic,
                         settings.by_device_topic, settings.journey_events_topic,
                         settings.alerts_topic, settings.cx_partials_topic)
        ]
        # Small, read whole by every collector (stream_processors/privacy.py); compacted
        # on Apache Kafka so that it keeps each id's latest state, forever.
        wanted.append(NewTopic(settings.suppressions_topic, 1, settings.topic_replication,
                               topic_configs={"cleanup.policy": "compact"}))
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                admin.create_topics(missing)
        for t in missing:
            log.info("created topic %s with %d partitions", t.name, t.num_partitions)
        return [t.name for t in missing]
    finally:
        admin.close()
