"""The ClickHouse sink: batched inserts, off the event loop, retried until they land.

The agent hands one batch per table at the end of each ``take_events`` batch and
awaits it; only then does Faust ack the batch's offsets. So a row is in ClickHouse
before its offset is committed (at-least-once), and a redelivery after a crash is
absorbed by the ReplacingMergeTree tables. While ClickHouse is down the agent
waits here, which is the backpressure: nothing is acked, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from clickhouse_driver import Client

from stream_processors.clickhouse.client import connect
from stream_processors.clickhouse.rows import COLUMNS
from stream_processors.clickhouse.timestamps import Converter, convert_rows, converters_for
from stream_processors.metrics import WorkerMetrics

__all__ = ["ClickHouseSink"]

log = logging.getLogger(__name__)


class ClickHouseSink:
    def __init__(self, url: str, database: str, metrics: WorkerMetrics, *,
                 max_retry_seconds: float = 30.0) -> None:
        self._url = url
        self._database = database
        self._metrics = metrics
        self._max_retry = max_retry_seconds
        # One thread: clickhouse-driver clients are not thread-safe, and inserts of one
        # worker are serial anyway (one batch at a time).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-sink")
        self._client: Client | None = None
        self._converters: dict[str, list[tuple[int, Converter]]] = {}

    async def write(self, batches: Mapping[str, Sequence[tuple]]) -> None:
        """Insert every table's rows; returns only once all of them are in ClickHouse."""
        loop = asyncio.get_running_loop()
        for table, rows in batches.items():
            if not rows:
                continue
            attempt = 0
            while True:
                future = loop.run_in_executor(self._executor, self._insert, table, rows)
                try:
                    # Shielded: a shutdown while an insert is in flight waits for it, so
                    # the offsets Faust then acks match rows that really landed.
                    await asyncio.shield(future)
                    break
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(future, timeout=10)
                    raise
                except Exception as exc:
                    attempt += 1
                    self._metrics.sink_failures.labels(table).inc()
                    delay = min(self._max_retry, 0.25 * 2 ** attempt) * random.uniform(0.5, 1.0)
                    log.warning("insert of %d rows into %s failed (attempt %d), retrying in "
                                "%.1f s: %s", len(rows), table, attempt, delay, exc)
                    await asyncio.sleep(delay)

    def _insert(self, table: str, rows: Sequence[tuple]) -> None:
        if self._client is None:
            self._client = connect(self._url, database=self._database)
        started = time.perf_counter()
        columns = ", ".join(COLUMNS[table])
        try:
            converters = self._converters.get(table)
            if converters is None:
                types = dict(self._client.execute(
                    "SELECT name, type FROM system.columns WHERE database = %(db)s "
                    "AND table = %(table)s", {"db": self._database, "table": table}))
                converters = self._converters[table] = converters_for(COLUMNS[table], types)
            self._client.execute(f"INSERT INTO {self._database}.{table} ({columns}) VALUES",
                                 convert_rows(rows, converters))
        except Exception:
            # A fresh connection next time: the old one may be half-way through a packet.
            self._client.disconnect()
            raise
        self._metrics.sink_insert_seconds.labels(table).observe(time.perf_counter() - started)
        self._metrics.sink_batch_rows.labels(table).observe(len(rows))
        self._metrics.sink_rows.labels(table).inc(len(rows))
