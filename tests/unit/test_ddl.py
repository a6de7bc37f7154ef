"""Golden DDL: a schema change shows up as a diff of tests/golden/*.sql in review.

Regenerate after an intended change with: UPDATE_GOLDEN=1 pytest tests/unit/test_ddl.py
"""

import os
import re
from pathlib import Path

import pytest

from stream_processors.clickhouse.ddl import (
    LEGACY,
    MIGRATIONS,
    MODERN,
    Dialect,
    dialect_for_version,
    render_all,
)
from stream_processors.clickhouse.rows import COLUMNS

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


@pytest.mark.parametrize("dialect", [LEGACY, MODERN], ids=lambda d: d.name)
def test_rendering_matches_golden_file(dialect: Dialect) -> None:
    path = GOLDEN / f"ddl_{dialect.name}.sql"
    rendered = render_all(dialect, "journey")
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert rendered == path.read_text()


def test_legacy_rendering_avoids_what_18_16_lacks() -> None:
    legacy = render_all(LEGACY)
    for feature in ("DateTime64", "LowCardinality", "TTL", "Map(", "CODEC"):
        assert feature not in legacy


def test_modern_rendering_uses_millisecond_time_and_low_cardinality() -> None:
    modern = render_all(MODERN)
    assert "DateTime64(3, 'UTC')" in modern
    assert "type LowCardinality(String)" in modern
    assert "TTL toDateTime(received_at) + INTERVAL 90 DAY" in modern


@pytest.mark.parametrize(("version", "expected"), [
    ("18.16.1", LEGACY), ("19.17.4.11", LEGACY), ("23.8.2.7", MODERN), ("26.9.2.1", MODERN)])
def test_dialect_follows_server_version(version: str, expected: Dialect) -> None:
    assert dialect_for_version(version) == expected


def _columns_after_every_migration() -> dict[str, list[str]]:
    """Each table's columns, in order, once every CREATE and ADD COLUMN ran."""
    tables: dict[str, list[str]] = {}
    for migration in MIGRATIONS:
        for ddl in migration.statements(MODERN, "db"):
            if ddl.startswith("CREATE TABLE"):
                body = ddl.split("(", 1)[1].split("\n)\n", 1)[0]
                tables[migration.name] = re.findall(r"^\s{4}(\w+) ", body, flags=re.M)
                continue
            table, column, after = re.match(
                r"ALTER TABLE db\.(\w+) ADD COLUMN (\w+) .* AFTER (\w+)$", ddl).groups()
            columns = tables[table]
            columns.insert(columns.index(after) + 1, column)
    return tables


@pytest.mark.parametrize("table", list(COLUMNS))
def test_insert_columns_match_the_table(table: str) -> None:
    assert tuple(_columns_after_every_migration()[table]) == COLUMNS[table]


def test_migration_ids_are_unique_and_ordered() -> None:
    ids = [m.id for m in MIGRATIONS]
    assert ids == sorted(set(ids))


def test_cluster_rendering_replicates_every_table_behind_a_distributed_one() -> None:
    from stream_processors.clickhouse.ddl import MIGRATIONS, SHARDING, clustered

    for dialect in (LEGACY, MODERN):
        script = render_all(dialect, "shop", cluster="main")
        statements = script.rstrip(";\n").split(";\n\n")
        tables = ["schema_migrations", *(m.name for m in MIGRATIONS
                                         if m.statements(dialect, "x")[0].startswith("CREATE"))]
        assert set(SHARDING) == set(tables)
        assert statements[0] == "CREATE DATABASE IF NOT EXISTS shop ON CLUSTER main"
        for table in tables:
            local = next(s for s in statements
                         if s.startswith(f"CREATE TABLE IF NOT EXISTS shop.{table}_local "))
            assert local.startswith(f"CREATE TABLE IF NOT EXISTS shop.{table}_local ON CLUSTER "
                                    "main\n")
            assert "ENGINE = Replicated" in local
            assert f"('/clickhouse/tables/{{shard}}/shop/{table}', '{{replica}}'" in local
            assert (f"CREATE TABLE IF NOT EXISTS shop.{table} ON CLUSTER main AS "
                    f"shop.{table}_local\nENGINE = Distributed(main, shop, {table}_local, "
                    f"{SHARDING[table]})") in statements
        # The same columns, order and TTL as on one server: only names and engines differ.
        single = render_all(dialect, "shop").split(";\n\n")
        added = sum(1 for s in single if s.startswith("ALTER TABLE"))
        assert len(statements) == 2 * len(single) - 1 + added
        # A column is added to the replicated tables, and the Distributed one made again.
        at = statements.index("ALTER TABLE shop.cx_metrics_local ON CLUSTER main ADD COLUMN "
                              "revision UInt32 DEFAULT 0 AFTER final")
        assert statements[at + 1] == "DROP TABLE IF EXISTS shop.cx_metrics ON CLUSTER main"
        assert statements[at + 2].startswith("CREATE TABLE IF NOT EXISTS shop.cx_metrics ON "
                                             "CLUSTER main AS shop.cx_metrics_local\n")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/shop/cx_metrics', " \
           "'{replica}', version)" in render_all(LEGACY, "shop", cluster="main")
    with pytest.raises(ValueError):
        clustered(["DROP TABLE x"], "main")
