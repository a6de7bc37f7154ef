"""ClickHouse schema, as ordered migrations rendered for the server they run on.

Two renderings of the same tables: ``legacy`` for the ClickHouse 18.16 that Debian
ships (what the tests run against: no DateTime64, TTL or stable LowCardinality) and
``modern`` for production's 23.8+ (millisecond timestamps, LowCardinality, TTL).
Column names and meanings are identical, so analyst SQL runs on both.

Idempotency comes from the table design, not from insert tokens (18.16 has none):
every table is a ReplacingMergeTree whose sorting key identifies a fact, so a
redelivered batch collapses into the rows it repeats; read with ``FINAL``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ADD_COLUMN", "LEGACY", "LOCAL_SUFFIX", "MIGRATIONS", "MODERN", "RETENTION_COLUMNS",
           "SHARDING", "Dialect", "Migration", "clustered", "deletion", "dialect_for_version",
           "local_table", "render_all", "retention"]


@dataclass(frozen=True)
class Dialect:
    name: str
    modern: bool

    @property
    def time(self) -> str:
        return "DateTime64(3, 'UTC')" if self.modern else "DateTime('UTC')"

    def lc(self, inner: str = "String") -> str:
        return f"LowCardinality({inner})" if self.modern else inner

    def ttl(self, expression: str) -> str:
        return f"\nTTL {expression}" if self.modern else ""


LEGACY = Dialect("legacy", modern=False)
MODERN = Dialect("modern", modern=True)


def dialect_for_version(version: str) -> Dialect:
    """Pick the rendering from ``SELECT version()``; 20.1 brought DateTime64 and TTL."""
    major = int(version.split(".", 1)[0])
    return MODERN if major >= 20 else LEGACY


@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    statements: Callable[[Dialect, str], list[str]]


def _touchpoints(d: Dialect, db: str) -> list[str]:
    # Sorting key without the customer: an anonymous event is written again, with the
    # resolved customer and a higher row_version, once its device is identified.
    return [f"""CREATE TABLE IF NOT EXISTS {db}.touchpoints
(
    event_id String,
    type {d.lc()},
    schema_version UInt16,
    occurred_at {d.time},
    received_at {d.time},
    ingested_at {d.time},
    journey_key String,
    customer_id String,
    anonymous_id String,
    session_id String,
    channel {d.lc()},
    source {d.lc()},
    stage {d.lc()},
    context String,
    properties String,
    row_version UInt64
)
ENGINE = ReplacingMergeTree(row_version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (type, occurred_at, event_id)"""]


def _customer_journeys(d: Dialect, db: str) -> list[str]:
    return [f"""CREATE TABLE IF NOT EXISTS {db}.customer_journeys
(
    journey_key String,
    customer_id String,
    anonymous_ids Array(String),
    merged_into String,
    first_seen {d.time},
    last_seen {d.time},
    relationship_days Float64,
    stage {d.lc()},
    stage_names Array(String),
    stage_entered_at Array(DateTime('UTC')),
    touchpoints UInt64,
    type_names Array(String),
    type_counts Array(UInt64),
    channel_names Array(String),
    channel_counts Array(UInt64),
    orders UInt32,
    revenue Decimal(18, 2),
    first_order_at Nullable(DateTime('UTC')),
    deliveries_on_time UInt32,
    deliveries_late UInt32,
    deliveries_damaged UInt32,
    deliveries_failed UInt32,
    deliveries_returned UInt32,
    tickets UInt32,
    open_tickets UInt32,
    nps Nullable(UInt8),
    nps_category {d.lc()},
    csat Nullable(UInt8),
    ces Nullable(UInt8),
    churned UInt8,
    churn_reason {d.lc()},
    recovery {d.lc()},
    churn_risk UInt8,
    churn_risk_reasons Array(String),
    version UInt64,
    updated_at {d.time}
)
ENGINE = ReplacingMergeTree(version)
ORDER BY journey_key"""]


def _journey_transitions(d: Dialect, db: str) -> list[str]:
    # One row per stage change; seq numbers a journey's changes in event time. A later
    # event can shorten the list: the rows past its end come back with is_deleted = 1.
    return [f"""CREATE TABLE IF NOT EXISTS {db}.journey_transitions
(
    journey_key String,
    customer_id String,
    seq UInt32,
    from_stage {d.lc()},
    to_stage {d.lc()},
    at {d.time},
    event_id String,
    reason {d.lc()},
    is_deleted UInt8,
    row_version UInt64
)
ENGINE = ReplacingMergeTree(row_version)
ORDER BY (journey_key, seq)"""]


def _support_tickets(d: Dialect, db: str) -> list[str]:
    return [f"""CREATE TABLE IF NOT EXISTS {db}.support_tickets
(
    ticket_id String,
    journey_key String,
    customer_id String,
    channel {d.lc()},
    order_id String,
    opened_at {d.time},
    first_response_at Nullable(DateTime('UTC')),
    resolved_at Nullable(DateTime('UTC')),
    first_response_seconds Nullable(Float64),
    resolution_seconds Nullable(Float64),
    reopened UInt16,
    messages UInt32,
    status {d.lc()},
    row_version UInt64
)
ENGINE = ReplacingMergeTree(row_version)
ORDER BY ticket_id"""]


def _dead_letters(d: Dialect, db: str) -> list[str]:
    return [f"""CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    received_at {d.time},
    topic String,
    partition UInt32,
    offset UInt64,
    reason {d.lc()},
    field String,
    error String,
    payload String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(received_at)
ORDER BY (topic, partition, offset){d.ttl("toDateTime(received_at) + INTERVAL 90 DAY")}"""]


def _journey_alerts(d: Dialect, db: str) -> list[str]:
    return [f"""CREATE TABLE IF NOT EXISTS {db}.journey_alerts
(
    alert_id String,
    kind {d.lc()},
    journey_key String,
    customer_id String,
    reason String,
    touchpoints Array(String),
    at {d.time},
    raised_at {d.time}
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY alert_id"""]


def _cx_metrics(d: Dialect, db: str) -> list[str]:
    # One row per metric, dimension and event-time window: rewritten as the window fills
    # (final = 0), and once more when it closes (final = 1). The latest row wins, and a
    # final row's version is above any open row's, so a replayed update cannot undo it.
    return [f"""CREATE TABLE IF NOT EXISTS {db}.cx_metrics
(
    metric {d.lc()},
    dimension {d.lc()},
    window {d.lc()},
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    value Nullable(Float64),
    numerator Float64,
    denominator Float64,
    samples UInt64,
    final UInt8,
    version UInt64,
    updated_at {d.time}
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (metric, dimension, window, window_start)"""]


def _privacy_acks(d: Dialect, db: str) -> list[str]:
    # Each partition's answer to a `journey forget` step: counts only, never an id.
    return [f"""CREATE TABLE IF NOT EXISTS {db}.privacy_acks
(
    request String,
    stage {d.lc()},
    partition UInt32,
    erased UInt64,
    acked_at {d.time}
)
ENGINE = ReplacingMergeTree()
ORDER BY (request, stage, partition){d.ttl("toDateTime(acked_at) + INTERVAL 30 DAY")}"""]


def _privacy_audit(d: Dialect, db: str) -> list[str]:
    # Every forget and unsuppress request, twice: when it started, and how it ended.
    # Append-only (no row replaces another) and no raw id: its keyed hash.
    return [f"""CREATE TABLE IF NOT EXISTS {db}.privacy_audit
(
    request String,
    action {d.lc()},
    id_hash String,
    hashes Array(String),
    requested_at {d.time},
    requested_by String,
    outcome {d.lc()},
    erased String,
    finished_at {d.time}
)
ENGINE = MergeTree()
ORDER BY (requested_at, request)"""]


def _cx_revisions(d: Dialect, db: str) -> list[str]:
    # A closed window revised by late contributions: its rows after the first final one
    # count up `revision`, and `late_samples` says how many samples came after that one
    # (less those late data took back: an earlier copy of an order takes a later one's).
    # 18.16 has no ADD COLUMN IF NOT EXISTS: the runner skips a column already there.
    return [f"ALTER TABLE {db}.cx_metrics ADD COLUMN revision UInt32 DEFAULT 0 AFTER final",
            f"ALTER TABLE {db}.cx_metrics ADD COLUMN late_samples Int64 DEFAULT 0 "
            "AFTER revision"]


def _cx_missed(d: Dialect, db: str) -> list[str]:
    # Contributions that came later than the revision horizon for some of their windows:
    # what each would have added, and through which window end the windows lack it
    # (deploy/clickhouse/queries/cx_windows_latest.sql adds them up per window). One row
    # per input message, metric, dimension and time: a replay rewrites it.
    return [f"""CREATE TABLE IF NOT EXISTS {db}.cx_missed
(
    metric {d.lc()},
    dimension {d.lc()},
    occurred_at {d.time},
    numerator Float64,
    denominator Float64,
    samples Int64,
    lacking_through DateTime('UTC'),
    partition UInt16,
    offset UInt64,
    recorded_at {d.time}
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (metric, dimension, partition, offset, occurred_at)"""]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "touchpoints", _touchpoints),
    Migration(2, "customer_journeys", _customer_journeys),
    Migration(3, "dead_letters", _dead_letters),
    Migration(4, "journey_transitions", _journey_transitions),
    Migration(5, "support_tickets", _support_tickets),
    Migration(6, "journey_alerts", _journey_alerts),
    Migration(7, "cx_metrics", _cx_metrics),
    Migration(8, "privacy_acks", _privacy_acks),
    Migration(9, "privacy_audit", _privacy_audit),
    Migration(10, "cx_revisions", _cx_revisions),
    Migration(11, "cx_missed", _cx_missed),
)

#: Tables with a retention, and the column their age is read from.
RETENTION_COLUMNS = {"touchpoints": "occurred_at", "dead_letters": "received_at"}


def retention(d: Dialect, db: str, days: dict[str, float], cluster: str | None = None,
              ) -> list[tuple[str, str, str | None]]:
    """What keeps each table within its retention (``days``: table → days, 0 keeps all),
    as (table, statement, condition).

    23.8+: a TTL (condition None), set again on every run so that a changed setting
    takes effect. 18.16 has no TTL: the deletion the worker runs every hour, and the
    condition of the rows it deletes (the caller runs it only when such rows exist, as
    18.16 rewrites every part a mutation touches)."""
    out: list[tuple[str, str, str | None]] = []
    for table, column in RETENTION_COLUMNS.items():
        keep = days.get(table, 0)
        if d.modern:
            out.append((table, f"ALTER TABLE {_target(db, table, cluster)} " + (
                f"MODIFY TTL toDateTime({column}) + INTERVAL {int(keep * 86400)} SECOND"
                if keep > 0 else "REMOVE TTL"), None))
        elif keep > 0:
            condition = f"{column} < now() - INTERVAL {int(keep * 86400)} SECOND"
            out.append((table, deletion(d, db, table, condition, cluster), condition))
    return out


def deletion(d: Dialect, db: str, table: str, condition: str, cluster: str | None = None,
             ) -> str:
    """Deleting a table's rows: a lightweight ``DELETE`` on 23.8+, a mutation on 18.16;
    on a cluster, from the replicated ``_local`` tables of every shard."""
    target = _target(db, table, cluster)
    return (f"DELETE FROM {target} WHERE {condition}" if d.modern
            else f"ALTER TABLE {target} DELETE WHERE {condition}")


def _target(db: str, table: str, cluster: str | None) -> str:
    """Where a statement that changes a table's rows goes."""
    return f"{db}.{local_table(table, cluster)}" + (f" ON CLUSTER {cluster}" if cluster else "")


def bookkeeping(db: str) -> list[str]:
    """The database and the table that records which migrations ran."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    id UInt32,
    name String,
    applied_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
ORDER BY id""",
    ]


#: On a cluster, each table's rows live in ``<table>_local`` (replicated), and
#: ``<table>`` is the Distributed table over them: what the worker writes to and analysts
#: query, so that their SQL is the same on one server and on a cluster.
LOCAL_SUFFIX = "_local"
#: How a Distributed table spreads rows over shards: by what identifies the fact, so that
#: every version of a row lands on the shard where ReplacingMergeTree collapses them.
SHARDING = {
    "schema_migrations": "id",
    "touchpoints": "cityHash64(event_id)",
    "customer_journeys": "cityHash64(journey_key)",
    "journey_transitions": "cityHash64(journey_key)",
    "support_tickets": "cityHash64(ticket_id)",
    "dead_letters": "cityHash64(topic, partition, offset)",
    "journey_alerts": "cityHash64(alert_id)",
    "cx_metrics": "cityHash64(metric, dimension, window, window_start)",
    "privacy_acks": "cityHash64(request, stage, partition)",
    "privacy_audit": "cityHash64(request)",
    "cx_missed": "cityHash64(partition, offset)",
}
_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\n")
#: A column a migration adds: (database, table, column).
ADD_COLUMN = re.compile(r"^ALTER TABLE (\w+)\.(\w+) ADD COLUMN (\w+) ")
_ENGINE = re.compile(r"^ENGINE = (\w*MergeTree)\((.*)\)$", re.M)


def local_table(table: str, cluster: str | None) -> str:
    """Where a table's rows are stored (what ALTER ... DELETE and system.mutations name)."""
    return table + LOCAL_SUFFIX if cluster else table


def clustered(statements: list[str], cluster: str) -> list[str]:
    """The same schema over the ClickHouse cluster ``cluster`` (its remote_servers name):
    every table becomes ``Replicated*MergeTree`` named ``<table>_local``, replicated under
    ZooKeeper path ``/clickhouse/tables/{shard}/<db>/<table>`` per ``{replica}`` (each
    server's macros), behind a Distributed table of the table's own name; all DDL runs
    ``ON CLUSTER``, and stays idempotent (``IF NOT EXISTS``)."""
    out = []
    for statement in statements:
        if statement.startswith("CREATE DATABASE"):
            out.append(f"{statement} ON CLUSTER {cluster}")
            continue
        added = ADD_COLUMN.match(statement)
        if added is not None:
            # To the replicated tables; the Distributed one is made again over them (an
            # ALTER of it ON CLUSTER is refused: "isn't replicated, but shard #1 is"). It
            # holds no rows, and the sink's inserts are synchronous.
            db, table, _column = added.groups()
            rest = statement[len(f"ALTER TABLE {db}.{table}"):]
            out.append(f"ALTER TABLE {db}.{table}{LOCAL_SUFFIX} ON CLUSTER {cluster}{rest}")
            out.append(f"DROP TABLE IF EXISTS {db}.{table} ON CLUSTER {cluster}")
            out.append(_distributed(db, table, cluster))
            continue
        create = _CREATE.match(statement)
        if create is None:
            raise ValueError(f"cannot render for a cluster: {statement.splitlines()[0]}")
        db, table = create.groups()
        local = f"{db}.{table}{LOCAL_SUFFIX}"
        engine = _ENGINE.search(statement)
        assert engine is not None, table
        args = ", ".join(a for a in (f"'/clickhouse/tables/{{shard}}/{db}/{table}'",
                                     "'{replica}'", engine.group(2)) if a)
        body = _CREATE.sub(f"CREATE TABLE IF NOT EXISTS {local} ON CLUSTER {cluster}\n",
                           statement)
        out.append(_ENGINE.sub(f"ENGINE = Replicated{engine.group(1)}({args})", body))
        out.append(_distributed(db, table, cluster))
    return out


def _distributed(db: str, table: str, cluster: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER {cluster} AS "
            f"{db}.{table}{LOCAL_SUFFIX}\nENGINE = Distributed({cluster}, {db}, "
            f"{table}{LOCAL_SUFFIX}, {SHARDING[table]})")


def render_all(dialect: Dialect, db: str = "journey", cluster: str | None = None) -> str:
    """Every statement, as a script: ``journey migrate --print`` and the golden files."""
    statements = bookkeeping(db)
    for m in MIGRATIONS:
        statements += m.statements(dialect, db)
    if cluster:
        statements = clustered(statements, cluster)
    return ";\n\n".join(statements) + ";\n"
