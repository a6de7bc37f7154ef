"""`journey worker`: prepare ClickHouse and the topics, then run the Faust worker."""

from __future__ import annotations

import gc
import logging
import sys
import time

from schemas.settings import Settings
from stream_processors.clickhouse.client import (
    connect,
    enforce_retention,
    migrate,
    wait_until_ready,
)
from stream_processors.malloc import tune_malloc
from stream_processors.topics import ensure_topics

__all__ = ["prepare", "run_worker", "tune_gc"]

log = logging.getLogger(__name__)


def prepare(settings: Settings, timeout: float = 60.0) -> None:
    """Migrations and topics, idempotent; run by every worker before it consumes.

    While ClickHouse does not answer, one line every 10 s names it and the setting,
    with the time left; clickhouse-driver's own warning, a traceback per attempt
    (measured: about 30 in 15 s), is turned off."""
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
    client = connect(settings.clickhouse_url)
    host, port = settings.clickhouse_host_port
    started, said = time.monotonic(), [-10.0]

    def waiting(exc: Exception) -> None:
        now = time.monotonic()
        if now - said[0] >= 10:
            said[0] = now
            log.warning("ClickHouse at %s:%d (JOURNEY_CLICKHOUSE_URL) does not answer: %s; "
                        "waiting %.0f s more", host, port, str(exc).splitlines()[0],
                        max(0.0, timeout - (now - started)))

    try:
        wait_until_ready(client, timeout, on_wait=waiting)
        applied = migrate(client, settings.clickhouse_database,
                          settings.clickhouse_cluster or None)
        if applied:
            log.info("applied ClickHouse migrations: %s", ", ".join(applied))
        enforce_retention(client, settings.clickhouse_database, settings.retention_days,
                          settings.clickhouse_cluster or None)
    finally:
        client.disconnect()
    ensure_topics(settings, timeout)


def tune_gc(threshold: int) -> None:
    """Everything built so far lives as long as the process: out of the collector's
    scans. A batch allocates tens of thousands of short-lived containers (decoded
    commands, rows, window states) and almost no reference cycles, so a young
    generation of 700 objects (CPython's default) ran a collection every few hundred
    (measured: README, "Benchmarks"). Called once the topology is built."""
    gc.freeze()
    gc.set_threshold(threshold, 20, 20)


def run_worker(settings: Settings) -> None:
    """Blocks until the worker stops (SIGTERM or Ctrl-C)."""
    logging.basicConfig(level=settings.python_log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not tune_malloc(settings.malloc_mmap_threshold) and settings.malloc_mmap_threshold:
        log.info("JOURNEY_MALLOC_MMAP_THRESHOLD: not glibc, left as it is")
    prepare(settings)
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    # Imported late: building the topology reads the settings from the environment.
    from stream_processors.topology import app

    tune_gc(settings.gc_threshold)

    # Faust's command line spells two levels its own way.
    faust_level = {"CRITICAL": "crit", "WARNING": "warn"}.get(settings.python_log_level,
                                                              settings.python_log_level.lower())
    sys.argv = ["journey worker", "worker", "--loglevel", faust_level,
                "--web-port", str(settings.worker_web_port), "--web-host", settings.worker_web_host,
                # Faust binds every interface unless told: --web-host only names the URL.
                "--web-bind", settings.worker_web_host]
    app.main()
