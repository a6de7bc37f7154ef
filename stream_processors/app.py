"""Builds the Faust application from the settings; nothing else lives here.

Faust settings chosen for the broker (measured on Tansu 0.6.0, see the README):
- ``broker_session_timeout`` 6 s: Tansu holds a group join for half the session
  timeout, so Faust's 60 s default made every start and rebalance wait 30 s.
- ``broker_max_poll_interval`` left at Faust's default: a 5 s value was seen to
  leave a worker idle after a rebalance.
- the consumer's fetch wait: Faust hardcodes 1.5 s, and Tansu answers a fetch only when
  that wait ends even if data arrived meanwhile (measured: a message produced to an
  idle topic reached a waiting consumer after up to the whole wait; 10 ms with a
  0.1 s wait). Each internal hop paid it; ``JOURNEY_BROKER_FETCH_WAIT_SECONDS`` sets it.
- table recovery: Tansu's ListOffsets answers the wrong log end, so Faust's recovery
  found "persisted offset above the highwater" after every restart of a RocksDB worker;
  ``stream_processors.recovery`` corrects it and rebuilds inconsistent partitions.
- offset commits: Faust may commit past a record it never processed (a stale
  acknowledgement after a rebalance, or one missing record at the head of its run);
  ``stream_processors.consumer`` guards both, see the README's broker notes.
- the producer lingers 5 ms and batches up to 256 KB per partition (Faust: no linger,
  16 KB), so that a batch's changelog records share produce requests. Measured on 25k
  customers, one run each: 2,300 ev/s and p99 0.86 s with it, 1,784 ev/s and 1.07 s
  without (runs vary by about 15 %); socket writes stayed about 4 % of the worker's time.
- no progress spinner (``QuietWorker``): at a log level of warn or above, Faust's worker
  shows a terminal spinner, and to spin it on every log record it sets the root logger to
  DEBUG. Every debug line of Faust and aiokafka was then built and handled: a third of
  the consumer thread's busy time (py-spy, the bench's latency run at warn).
- no cap on Faust's buffer of changelog records waiting to be sent
  (``_uncap_changelog_buffer``): past 100, Faust's conductor stopped handing out
  messages until the buffer drained, and logged a warning and an info line each time.
  Our stages write a batch's state at once and wait for every record's
  acknowledgement before the next batch (stream_processors/effects.py), so the buffer
  is already bounded by the batch sizes; the cap only stalled the worker (21 times,
  15 ms each, in the 2,500 touchpoints of the truth test) and flooded its log.
- ``processing_guarantee`` at-least-once: Tansu has no EndTxn, so no exactly-once;
  duplicates are absorbed downstream (event ids, ReplacingMergeTree).
"""

from __future__ import annotations

import sys

import faust

from schemas.settings import Settings
from stream_processors import consumer, recovery

__all__ = ["app", "create_app", "settings"]


def _set_fetch_wait(seconds: float) -> None:
    """Make Faust's worker consumer long-poll for ``seconds`` instead of its fixed 1.5 s."""
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = getattr(cls, "_journey_original_create", cls._create_worker_consumer)

    def create(self: object, transport: object) -> object:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = int(seconds * 1000)  # read by start(), into its fetcher
        return consumer

    cls._journey_original_create = original
    cls._create_worker_consumer = create


def _uncap_changelog_buffer() -> None:
    """Let Faust's conductor deliver messages whatever the number of changelog records
    waiting to be sent (see above for why that is bounded anyway)."""
    from faust.transport.producer import ProducerBuffer

    ProducerBuffer.max_messages = sys.maxsize


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner, whatever the log level (see above)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None


def create_app(settings: Settings) -> faust.App:
    _set_fetch_wait(settings.broker_fetch_wait_seconds)
    _uncap_changelog_buffer()
    consumer.guard_commits()
    consumer.seek_uncommitted_to_start()
    recovery.install()
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        store=settings.store,
        datadir=str(settings.data_dir / "worker"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_commit_interval=settings.broker_commit_interval,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        broker_max_poll_records=settings.broker_max_poll_records or None,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_in_thread=False,
        autodiscover=False,
        # Recovery that rebuilds a partition whose local state disagrees with its
        # changelog, instead of stopping the worker (stream_processors/recovery.py).
        TableManager=recovery.HealingTableManager,
        Worker=QuietWorker,
    )


settings = Settings.from_env()
app = create_app(settings)
