"""Migrations on the real 18.16 server, the modern rendering on a current engine (chdb),
and the shipped analyst queries giving the same answers on both."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from deploy.queries import load_queries
from producers.simulator import simulate
from schemas import utcnow
from stream_processors.clickhouse.client import connect, migrate
from stream_processors.clickhouse.ddl import LEGACY, MIGRATIONS, MODERN, render_all
from stream_processors.clickhouse.rows import COLUMNS
from tests.truth import true_rows


def _tables(client, db: str) -> dict[str, str]:
    names = [r[0] for r in client.execute(f"SHOW TABLES FROM {db}")]
    return {n: client.execute(f"SHOW CREATE TABLE {db}.{n}")[0][0] for n in names}


def test_migrating_twice_changes_nothing(settings) -> None:
    db = settings.clickhouse_database
    client = connect(settings.clickhouse_url)
    try:
        assert migrate(client, db) == [m.name for m in MIGRATIONS]
        before = _tables(client, db)
        assert migrate(client, db) == []
        assert _tables(client, db) == before
        assert client.execute(f"SELECT count() FROM {db}.schema_migrations")[0][0] \
            == len(MIGRATIONS)
        assert set(before) == {"schema_migrations", *(
            m.name for m in MIGRATIONS if m.statements(MODERN, db)[0].startswith("CREATE"))}
        for table, columns in COLUMNS.items():
            live = tuple(r[0] for r in client.execute(f"DESCRIBE TABLE {db}.{table}"))
            assert live == columns
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


def test_an_older_schema_gets_the_revision_columns_and_keeps_its_rows(settings) -> None:
    """A database migrated before cx_revisions existed: its rows read as revision 0."""
    db = settings.clickhouse_database
    client = connect(settings.clickhouse_url)
    older = [m for m in MIGRATIONS if m.name != "cx_revisions"]
    try:
        client.execute(f"CREATE DATABASE {db}")
        client.execute(f"CREATE TABLE {db}.schema_migrations (id UInt32, name String, "
                       "applied_at DateTime('UTC')) ENGINE = ReplacingMergeTree() ORDER BY id")
        for m in older:
            for statement in m.statements(LEGACY, db):
                client.execute(statement)
        client.execute(f"INSERT INTO {db}.schema_migrations VALUES",
                       [(m.id, m.name, utcnow().replace(microsecond=0)) for m in older])
        start = datetime(2026, 5, 1, tzinfo=UTC)
        client.execute(f"INSERT INTO {db}.cx_metrics VALUES", [(
            "nps", "all", "1h", start, start + timedelta(hours=1), 50.0, 1.0, 2.0, 2, 1, 7,
            start)])
        assert migrate(client, db) == ["cx_revisions"]
        assert client.execute(f"SELECT samples, final, revision, late_samples FROM {db}."
                              "cx_metrics") == [(2, 1, 0, 0)]
        live = tuple(r[0] for r in client.execute(f"DESCRIBE TABLE {db}.cx_metrics"))
        assert live == COLUMNS["cx_metrics"]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


def _chdb():
    try:
        from chdb import session
    except ImportError:
        pytest.fail("chdb is not installed: pip install -e '.[dev]' (or `make setup`)")
    return session.Session()


def _run_script(sess, script: str) -> None:
    for statement in script.split(";\n\n"):
        statement = statement.strip().rstrip(";")
        if statement:
            sess.query(statement)


def test_modern_rendering_runs_on_a_current_clickhouse() -> None:
    sess = _chdb()
    _run_script(sess, render_all(MODERN, "journey"))
    types = dict(csv.reader(io.StringIO(str(sess.query(
        "SELECT name, type FROM system.columns WHERE database = 'journey' "
        "AND table = 'touchpoints'", "CSV")))))
    assert types["occurred_at"] == "DateTime64(3, 'UTC')"
    assert types["type"] == "LowCardinality(String)"
    engine = str(sess.query("SELECT engine_full FROM system.tables WHERE database = 'journey' "
                            "AND name = 'dead_letters'", "CSV"))
    assert "TTL toDateTime(received_at) + toIntervalDay(90)" in engine


def _simulated_rows() -> dict[str, list[tuple]]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return true_rows(simulate(250, seed=99, prefix="q-"), now)


def _json_value(value: object) -> object:
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Decimal):
        return str(value)
    return value


def _normalise(text: str) -> list[list[str]]:
    rows = []
    for row in csv.reader(io.StringIO(text)):
        cells = []
        for cell in row:
            try:
                cells.append(f"{float(cell):.2f}")
            except ValueError:
                cells.append(cell)
        rows.append(cells)
    return rows


def _window_rows() -> dict[str, list[tuple]]:
    """A revised window, a window lacking a sample, and one only missed data would make."""
    start = datetime(2025, 12, 1, tzinfo=UTC)
    t = start + timedelta(minutes=30, seconds=5)
    day = timedelta(days=1)
    return {
        "cx_metrics": [
            ("nps", "all", "24h", start, start + day, 50.0, 1.0, 2.0, 2, 1, 0, 0, 7, t),
            ("nps", "all", "24h", start, start + day, 0.0, 0.0, 3.0, 3, 1, 1, 1, 9, t),
            ("nps", "all", "24h", start + day, start + 2 * day, -100.0, -1.0, 1.0, 1, 1, 0, 0,
             8, t)],
        "cx_missed": [("nps", "all", t + day, 1.0, 1.0, 1, start + 2 * day, 3, 17, t),
                      ("nps", "all", t + day, 1.0, 1.0, 1, start + 2 * day, 3, 17, t)],
    }


def test_analyst_queries_agree_on_18_16_and_current(settings, clickhouse) -> None:
    rows = {**_simulated_rows(), **_window_rows()}
    db = settings.clickhouse_database
    sess = _chdb()
    _run_script(sess, render_all(MODERN, db))
    for table, table_rows in rows.items():
        columns = ", ".join(COLUMNS[table])
        clickhouse.execute(f"INSERT INTO {table} ({columns}) VALUES", table_rows)
        lines = "\n".join(json.dumps(dict(zip(COLUMNS[table], map(_json_value, r), strict=True)))
                          for r in table_rows)
        sess.query(f"INSERT INTO {db}.{table} FORMAT JSONEachRow\n{lines}")
    sess.query(f"USE {db}")
    queries = load_queries()
    assert {"stage_funnel_conversion", "time_to_first_order", "top_paths_before_order",
            "campaign_attribution", "service_recovery_rate"} <= set(queries)
    for name, (_title, sql) in queries.items():
        legacy = _http_query(settings, sql + "\nFORMAT CSV")
        modern = str(sess.query(sql, "CSV"))
        assert _normalise(legacy) == _normalise(modern), name
        cells = [c for row in _normalise(legacy) for c in row]
        assert any(c not in ("0.00", "") for c in cells), f"{name} returned nothing to compare"
    # The windows' view: the latest revision, and the one sample (sent twice) each
    # window ending by 2 December lacks.
    start = datetime(2025, 12, 1, tzinfo=UTC)
    latest = {(w, s.replace(tzinfo=UTC)): (v, n, r, late, missing)
              for _m, _d, w, s, _e, v, n, r, late, missing
              in clickhouse.execute(queries["cx_windows_latest"][1])}
    assert latest[("24h", start)] == (0.0, 3, 1, 1, 0)
    assert latest[("24h", start + timedelta(days=1))] == (-100.0, 1, 0, 0, 1)
    assert latest[("1m", start + timedelta(days=1, minutes=30))] == (None, 0, 0, 0, 1)
    # Windows holding 2 Dec 00:30:05 that end by 3 Dec 00:00: a minute, twelve hours
    # (every 5 min), 24 days (every hour), and one week and one month (ending 3 Dec).
    assert sum(row[4] for row in latest.values()) == 1 + 12 + 24 + 1 + 1


def _http_query(settings, sql: str) -> str:
    host, _ = settings.clickhouse_host_port
    url = (f"http://{host}:{settings.clickhouse_http_port}/?"
           + urllib.parse.urlencode({"database": settings.clickhouse_database}))
    with urllib.request.urlopen(url, data=sql.encode(), timeout=30) as r:
        return r.read().decode()


def test_retention_deletes_only_rows_past_it_on_18_16(settings, clickhouse) -> None:
    from stream_processors.clickhouse.client import enforce_retention

    now = utcnow().replace(microsecond=0)
    ages = {"old": 400, "kept": 300, "new": 0}  # days; touchpoints keep 395
    clickhouse.execute(f"INSERT INTO touchpoints ({', '.join(COLUMNS['touchpoints'])}) VALUES", [
        (name, "page_view", 1, now - timedelta(days=days), now, now, "c", "c", "", "", "web",
         "", "awareness", "{}", "{}", 1) for name, days in ages.items()])
    clickhouse.execute(f"INSERT INTO dead_letters ({', '.join(COLUMNS['dead_letters'])}) VALUES",
                       [(now - timedelta(days=days), "t", 0, i, "r", "", "", "{}")
                        for i, days in enumerate((31, 29, 0))])
    db = settings.clickhouse_database
    days = {"touchpoints": 395.0, "dead_letters": 30.0}
    assert enforce_retention(clickhouse, db, days) == {"touchpoints": 1, "dead_letters": 1}

    def left() -> tuple:
        return (sorted(r[0] for r in clickhouse.execute("SELECT event_id FROM touchpoints")),
                sorted(r[0] for r in clickhouse.execute("SELECT offset FROM dead_letters")))

    for _ in range(100):  # a mutation runs in the background
        if left() == (["kept", "new"], [1, 2]):
            break
        time.sleep(0.1)
    assert left() == (["kept", "new"], [1, 2])
    assert enforce_retention(clickhouse, db, days) == {}  # nothing past it: no mutation


def test_modern_retention_and_forget_deletes_run_on_a_current_clickhouse() -> None:
    from stream_processors.clickhouse.ddl import deletion, retention
    from stream_processors.privacy import _conditions

    sess = _chdb()
    _run_script(sess, render_all(MODERN, "journey"))
    for _table, statement, _ in retention(MODERN, "journey",
                                          {"touchpoints": 395, "dead_letters": 30}):
        sess.query(statement)
    for table, column, seconds in (("touchpoints", "occurred_at", 395 * 86400),
                                   ("dead_letters", "received_at", 30 * 86400)):
        engine = str(sess.query("SELECT engine_full FROM system.tables WHERE database = "
                                f"'journey' AND name = '{table}'", "CSV"))
        assert f"TTL toDateTime({column}) + toIntervalSecond({seconds})" in engine, engine
    # journey forget's deletion, as a lightweight DELETE on 23.8+.
    rows = [{"event_id": e, "type": "page_view", "occurred_at": "2026-01-01 00:00:00",
             "received_at": "2026-01-01 00:00:00", "ingested_at": "2026-01-01 00:00:00",
             "journey_key": key, "customer_id": customer, "anonymous_id": device}
            for e, key, customer, device in (("1", "c-1", "c-1", ""), ("2", "anon:d-1", "", "d-1"),
                                             ("3", "c-2", "c-2", "d-1"), ("4", "c-2", "c-2", ""))]
    sess.query("INSERT INTO journey.touchpoints FORMAT JSONEachRow\n"
               + "\n".join(json.dumps(r) for r in rows))
    condition = _conditions("c-1", ["d-1"])["touchpoints"]
    sess.query(deletion(MODERN, "journey", "touchpoints", condition))
    assert str(sess.query("SELECT event_id FROM journey.touchpoints", "CSV")).split() == ['"4"']
