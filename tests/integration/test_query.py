"""`journey query NAME`: an analyst query on the real ClickHouse, readable or as CSV."""

from __future__ import annotations

import csv
import io

import pytest

from deploy.cli import main


def test_a_named_query_prints_a_table_with_its_header(settings, clickhouse, monkeypatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    clickhouse.execute(
        "INSERT INTO customer_journeys (journey_key, customer_id, stage, orders, revenue, "
        "version) VALUES", [("c-1", "c-1", "purchase", 2, 59.8, 1),
                            ("anon:a-1", "", "awareness", 0, 0, 1)])
    monkeypatch.setenv("JOURNEY_CLICKHOUSE_URL", settings.clickhouse_url)
    assert main(["query", "journeys_by_stage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("-- Journeys by their current stage")
    assert lines[1].split() == ["stage", "journeys", "identified", "orders", "revenue"]
    assert lines[3].split() == ["awareness", "1", "0", "0", "0.00"]
    assert lines[4].split() == ["purchase", "1", "1", "2", "59.80"]
    assert lines[-1] == "(2 rows)"
    assert main(["query", "journeys_by_stage", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["stage", "journeys", "identified", "orders", "revenue"],  # raw values
                    ["awareness", "1", "0", "0", "0"], ["purchase", "1", "1", "2", "59.8"]]
