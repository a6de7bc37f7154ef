"""Builds the Faust application from the settings; nothing else lives here.

Faust settings chosen for the broker (measured on Tansu 0.6.0, see the README):
- ``broker_session_timeout`` 6 s: Tansu holds a group join for half the session
  timeout, so Faust's 60 s default made every start and rebalance wait 30 s.
- ``broker_max_poll_interval`` left at Faust's default: a 5 s value was seen to
  leave a worker idle after a rebalance.
- ``processing_guarantee`` at-least-once: Tansu has no EndTxn, so no exactly-once;
  duplicates are absorbed downstream (event ids, ReplacingMergeTree).
"""

from __future__ import annotations

import faust

from schemas.settings import Settings

__all__ = ["app", "create_app", "settings"]


def create_app(settings: Settings) -> faust.App:
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
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_in_thread=False,
        autodiscover=False,
    )


settings = Settings.from_env()
app = create_app(settings)
