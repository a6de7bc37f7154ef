"""The ClickHouse sink: batched inserts, off the event loop, retried until they land.

The agent hands one batch per table at the end of each ``take_events`` batch and
awaits it; only then does Faust ack the batch's offsets. So a row is in ClickHouse
before its offset is committed (at-least-once), and a redelivery after a crash is
absorbed by the ReplacingMergeTree tables. While ClickHouse is down the agent
waits here, which is the backpressure: nothing is acked, nothing is lost.

Two kinds of failure, told apart (:func:`is_data_error`):

- **the infrastructure** (connection refused or lost, timeouts, a server too busy or
  read-only): nothing is wrong with the rows, so the same insert is retried with
  backoff, for as long as it takes. Once the worker is told to stop (SIGTERM), the
  next failure ends the retries with a ``ConnectionError``: the batch runner then exits
  before Faust acknowledges the batch, to replay it after the restart (Faust's own stop
  waited for the batch to finish, that is, for ClickHouse: measured, a worker with
  ClickHouse down ignored SIGTERM for over a minute);
- **the data** (a value the column cannot hold: a 1900 date in a ``DateTime``, an
  amount past ``Decimal(18, 2)``, more months than one insert may touch): retrying
  would stall the partition for good (measured: one 1900 timestamp did). The batch is
  split in halves until each refused row is alone; those go to the ``dead_letters``
  table (reason ``sink_rejected``, with the table, ClickHouse's error and the row), and
  every other row lands. The ingress bounds (schemas/bounds.py, the property models)
  keep such rows out; this is the net under them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import msgspec
from clickhouse_driver import Client
from clickhouse_driver.errors import ErrorCodes, ServerException, TypeMismatchError

from stream_processors.clickhouse.client import connect
from stream_processors.clickhouse.rows import COLUMNS, dead_letter_row
from stream_processors.clickhouse.timestamps import Converter, convert_columns, converters_for
from stream_processors.metrics import WorkerMetrics

__all__ = ["ClickHouseSink", "is_data_error"]

log = logging.getLogger(__name__)

#: Server errors about the rows themselves (ClickHouse's error codes).
_DATA_CODES = frozenset(getattr(ErrorCodes, name) for name in (
    "CANNOT_PARSE_TEXT", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "TYPE_MISMATCH",
    "ARGUMENT_OUT_OF_BOUND", "CANNOT_CONVERT_TYPE", "TOO_LARGE_STRING_SIZE",
    "TOO_LARGE_ARRAY_SIZE", "INCORRECT_DATA", "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    "DECIMAL_OVERFLOW", "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE") if hasattr(ErrorCodes, name))


#: Most rows one insert takes; a table's rows of a batch beyond that go in several, in
#: order. Why: an insert holds its rows a second time as columns (and the driver a third,
#: as its block), and a batch where the watermark passes many windows at once (a
#: backlog's end) has the final rows of all of them. Each insert is idempotent like the
#: whole (the tables keep the row of the highest version), so a crash between two
#: replays them all.
INSERT_ROWS = 20_000

#: Rows that say the batch's other rows are in (a partition's answer to ``journey
#: forget``, stream_processors/suppression.py): inserted after them, never beside them.
ACKNOWLEDGING = ("privacy_acks",)


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the rows cannot be stored (else: try the same insert again)."""
    if isinstance(exc, ServerException):
        if exc.code == ErrorCodes.TOO_MANY_PARTS:  # one code, two causes: tell by the text
            return "partitions for single INSERT block" in str(exc)
        return exc.code in _DATA_CODES
    # Raised by clickhouse-driver while it packs a value into its column type: the
    # value does not fit ('I' format requires 0 <= number <= 4294967295, ...).
    return isinstance(exc, struct.error | TypeMismatchError | TypeError | ValueError |
                      OverflowError | UnicodeError | ArithmeticError)


class ClickHouseSink:
    def __init__(self, url: str, database: str, metrics: WorkerMetrics, *,
                 max_retry_seconds: float = 30.0,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self._url = url
        self._stopping = stopping
        self._database = database
        self._metrics = metrics
        self._max_retry = max_retry_seconds
        # A thread and a connection per table (clickhouse-driver clients are not
        # thread-safe): a batch's tables are inserted side by side, and one stage's big
        # insert (the aggregator's cx_metrics) does not hold up another's touchpoints.
        # Measured with one shared thread: inserts queued behind each other, and the
        # journey stage waited the sum of its five tables' inserts every batch.
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._clients: dict[str, Client] = {}
        self._converters: dict[str, list[tuple[int, Converter]]] = {}

    async def write(self, batches: Mapping[str, Sequence[tuple]]) -> None:
        """Insert every table's rows; returns once each row is in ClickHouse, or, if
        ClickHouse refuses it as data, in the dead_letters table instead."""
        inserts = [self._insert_all(table, rows) for table, rows in batches.items()
                   if rows and table not in ACKNOWLEDGING]
        refused = [row for letters in await asyncio.gather(*inserts) for row in letters]
        for table in ACKNOWLEDGING:  # once the rows they acknowledge are in
            if batches.get(table):
                refused += await self._insert_all(table, batches[table])
        if refused:
            letters = await self._insert_all("dead_letters", refused)
            for row in letters:  # not even as a dead letter: say so, loudly, and go on
                log.error("a dead letter ClickHouse refused too was dropped: %r", row[:7])

    async def _insert_all(self, table: str, rows: Sequence[tuple]) -> list[tuple]:
        """Insert ``rows``; returns a dead-letter row for each row refused as data."""
        # A stack: the first slice at its end, so the rows go in in their order.
        pending = [list(rows[start:start + INSERT_ROWS])
                   for start in reversed(range(0, len(rows), INSERT_ROWS))]
        refused: list[tuple] = []
        attempt = 0
        while pending:
            chunk = pending.pop()
            try:
                await self._run(table, chunk)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._metrics.sink_failures.labels(table).inc()
                if is_data_error(exc):
                    if len(chunk) > 1:  # bisect: the rows that fit land, the others are found
                        half = len(chunk) // 2
                        pending += [chunk[half:], chunk[:half]]
                        continue
                    self._metrics.sink_rejected_rows.labels(table).inc()
                    self._metrics.dead_letters.labels("sink_rejected").inc()
                    log.warning("ClickHouse refused a row of %s, sent to dead_letters: %s",
                                table, exc)
                    refused.append(_dead_letter(table, chunk[0], exc))
                    continue
                if self._stopping():
                    raise ConnectionError(f"ClickHouse insert into {table} failed while the "
                                          f"worker stops: {_first_line(exc)}") from exc
                attempt += 1
                delay = min(self._max_retry, 0.25 * 2 ** attempt) * random.uniform(0.5, 1.0)
                log.warning("insert of %d rows into %s failed (attempt %d), retrying in "
                            "%.1f s: %s", len(chunk), table, attempt, delay,
                            _first_line(exc))
                pending.append(chunk)
                await self._pause(delay)
        return refused

    async def _pause(self, seconds: float) -> None:
        """Sleep between tries, but not past a request to stop."""
        deadline = time.monotonic() + seconds
        while not self._stopping() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.25))

    async def _run(self, table: str, rows: Sequence[tuple]) -> None:
        executor = self._executors.get(table)
        if executor is None:
            executor = self._executors[table] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"clickhouse-{table}")
        future = asyncio.get_running_loop().run_in_executor(executor, self._insert, table, rows)
        try:
            # Shielded: a shutdown while an insert is in flight waits for it, so
            # the offsets Faust then acks match rows that really landed.
            await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(future, timeout=10)
            raise

    def _insert(self, table: str, rows: Sequence[tuple]) -> None:
        client = self._clients.get(table)
        if client is None:
            client = self._clients[table] = connect(self._url, database=self._database)
        started = time.perf_counter()
        columns = ", ".join(COLUMNS[table])
        try:
            converters = self._converters.get(table)
            if converters is None:
                types = dict(client.execute(
                    "SELECT name, type FROM system.columns WHERE database = %(db)s "
                    "AND table = %(table)s", {"db": self._database, "table": table}))
                converters = self._converters[table] = converters_for(COLUMNS[table], types)
            # Into a Distributed table (a cluster), the insert returns once every shard
            # has its rows, not once they are queued on this server: the batch's offsets
            # are committed after this.
            client.execute(f"INSERT INTO {self._database}.{table} ({columns}) VALUES",
                           convert_columns(rows, converters, len(COLUMNS[table])),
                           columnar=True, settings={"insert_distributed_sync": 1})
        except Exception:
            # A fresh connection next time: the old one may be half-way through a packet.
            client.disconnect()
            raise
        self._metrics.sink_insert_seconds.labels(table).observe(time.perf_counter() - started)
        self._metrics.sink_batch_rows.labels(table).observe(len(rows))
        self._metrics.sink_rows.labels(table).inc(len(rows))


def _dead_letter(table: str, row: tuple, exc: BaseException) -> tuple:
    """A ``dead_letters`` row for a refused row: topic ``sink:<table>``, and as offset a
    digest of the row, so that the same row refused again (a replay) is one letter."""
    payload = msgspec.json.encode(dict(zip(COLUMNS[table], row, strict=False)),
                                  enc_hook=_plain)
    digest = int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "big")
    return dead_letter_row(datetime.now(UTC), f"sink:{table}", 0, digest, "sink_rejected",
                           table, _first_line(exc)[:2000], payload)


def _plain(value: Any) -> Any:
    """What JSON cannot hold as such, as text (a row's dates, decimals, bytes)."""
    if isinstance(value, datetime | date | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.split("\n", 1)[0]
