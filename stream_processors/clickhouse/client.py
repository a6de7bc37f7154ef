"""Connecting to ClickHouse and applying the migrations."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError
from clickhouse_driver.errors import ServerException

from schemas import utcnow
from stream_processors.clickhouse.ddl import (
    ADD_COLUMN,
    MIGRATIONS,
    Dialect,
    bookkeeping,
    clustered,
    dialect_for_version,
    retention,
)

__all__ = ["ClickHouseUnavailable", "connect", "enforce_retention", "migrate", "server_dialect",
           "wait_until_ready"]

log = logging.getLogger(__name__)
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse could not be reached in time."""


def connect(url: str, *, database: str | None = "default") -> Client:
    """A client on ``url``; by default on the ``default`` database, which always exists."""
    if database is not None:
        url = re.sub(r"(//[^/]*)(/[^?]*)?", lambda m: f"{m.group(1)}/{database}", url, count=1)
    return Client.from_url(url)


def server_dialect(client: Client) -> Dialect:
    return dialect_for_version(client.execute("SELECT version()")[0][0])


def wait_until_ready(client: Client, timeout: float = 60.0,
                     on_wait: Callable[[Exception], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.execute("SELECT 1")
            return
        except (ClickHouseError, OSError, EOFError) as exc:
            if time.monotonic() > deadline:
                raise ClickHouseUnavailable(f"ClickHouse did not answer within {timeout:.0f} s: "
                                            f"{exc}") from exc
            if on_wait:
                on_wait(exc)
            time.sleep(0.5)


def _has_column(client: Client, database: str, table: str, column: str) -> bool:
    return bool(client.execute(
        "SELECT count() FROM system.columns WHERE database = %(d)s AND table = %(t)s "
        "AND name = %(c)s", {"d": database, "t": table, "c": column})[0][0])


def migrate(client: Client, database: str, cluster: str | None = None) -> list[str]:
    """Apply the migrations not yet recorded; returns the names of those applied.

    Safe to run from several workers at once: every statement is ``IF NOT EXISTS``
    and the record table collapses repeated rows. With ``cluster``, the tables are
    replicated over it, behind Distributed tables (ddl.clustered), and every server of
    the cluster must answer.
    """
    if not _DB_NAME.match(database):
        raise ValueError(f"database name {database!r} must be letters, digits and underscores")
    dialect = server_dialect(client)

    def rendered(statements: list[str]) -> list[str]:
        return clustered(statements, cluster) if cluster else statements

    for statement in rendered(bookkeeping(database)):
        client.execute(statement)
    done = {row[0] for row in client.execute(f"SELECT id FROM {database}.schema_migrations")}
    applied = []
    for m in MIGRATIONS:
        if m.id in done:
            continue
        for statement in rendered(m.statements(dialect, database)):
            added = ADD_COLUMN.match(statement)
            if added is not None and _has_column(client, *added.groups()):
                continue  # added by an earlier attempt, or by another worker
            try:
                client.execute(statement)
            except ServerException:
                if added is None or not _has_column(client, *added.groups()):
                    raise
        client.execute(f"INSERT INTO {database}.schema_migrations (id, name, applied_at) VALUES",
                       [(m.id, m.name, utcnow().replace(microsecond=0))])
        applied.append(m.name)
        log.info("applied migration %d %s (%s)", m.id, m.name, dialect.name)
    return applied


def enforce_retention(client: Client, database: str, days: dict[str, float],
                      cluster: str | None = None) -> dict[str, int]:
    """Keep each table within its retention (``days``: table → days; ddl.retention).

    23.8+: sets the tables' TTL (ClickHouse deletes from then on); returns no counts.
    18.16: deletes the rows past it now, and only where there are some (a mutation
    rewrites every part it touches); returns the rows deleted per table. The worker
    calls this at start and every hour."""
    deleted: dict[str, int] = {}
    for table, statement, condition in retention(server_dialect(client), database, days,
                                                 cluster):
        if condition is None:
            client.execute(statement)
            continue
        old = client.execute(f"SELECT count() FROM {database}.{table} WHERE {condition}")[0][0]
        if old:
            client.execute(statement)
            deleted[table] = old
            log.info("retention: deleting %d rows of %s (%s)", old, table, condition)
    return deleted
