"""journey import's reading and mapping of rows (no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from producers.importer import guess_format, parse_pairs, read_rows
from schemas.settings import Settings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SETTINGS = Settings.from_env({})


def rows(path: Path, fmt: str, **kwargs) -> list:
    return list(read_rows(path, fmt, SETTINGS, now=NOW, **kwargs))


def test_formats_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "b.jsonl").write_text('\n{"type": "track", "event": "x", "userId": "u"}\n')
    (tmp_path / "c.jsonl").write_text('{"event_id": "e", "type": "page_view"}\n')
    assert [guess_format(tmp_path / n) for n in ("a.csv", "b.jsonl", "c.jsonl")] == [
        "csv", "segment", "touchpoint"]


def test_rows_without_ids_get_the_same_id_every_time_and_distinct_rows_differ(
        tmp_path: Path) -> None:
    at = (NOW - timedelta(days=3)).isoformat()
    path = tmp_path / "s.jsonl"
    messages = [{"type": "page", "anonymousId": "d", "timestamp": at},
                {"type": "page", "anonymousId": "d", "timestamp": at, "name": "Other"}]
    path.write_text("".join(json.dumps(m) + "\n" for m in messages))
    once = [r.touchpoint.event_id for r in rows(path, "segment")]
    later = [r.touchpoint.event_id for r in read_rows(path, "segment", SETTINGS,
                                                      now=NOW + timedelta(hours=5))]
    assert once == later and len(set(once)) == 2


def test_csv_columns_map_to_fields_and_numbers_stay_numbers(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    at = (NOW - timedelta(days=1)).isoformat()
    path.write_text(f"when,who,score,ticket\n{at},c-1,4,t-9\n{at},c-2,,t-8\n")
    got = rows(path, "csv", mapping={"when": "occurred_at", "who": "customer_id",
                                     "score": "properties.score",
                                     "ticket": "properties.ticket_id"},
               constants={"type": "survey_response", "properties.survey": "csat"})
    assert got[0].touchpoint.properties == {"survey": "csat", "score": 4, "ticket_id": "t-9"}
    assert got[0].touchpoint.customer_id == "c-1" and got[0].line == 2
    assert got[1].error is not None and got[1].line == 3  # a survey answer needs its score
    missing = rows(path, "csv", mapping={"nope": "customer_id"})
    assert missing[0].error.reason == "missing_column"


def test_bad_rows_say_why_and_history_needs_its_time(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"type": "page", "anonymousId": "d"}\n[1]\n{oops\n'
                    '{"type": "page", "anonymousId": "d", "timestamp": "2019-01-01T00:00:00Z"}\n')
    assert [(r.line, r.error.reason) for r in rows(path, "segment")] == [
        (1, "missing_time"), (2, "invalid_field"), (3, "invalid_json"), (4, "out_of_bounds")]


def test_personal_data_is_redacted_on_import(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"type": "identify", "userId": "c", "traits": {
        "email": "A@B.com"}, "context": {"ip": "192.0.2.44"},
        "timestamp": (NOW - timedelta(days=1)).isoformat()}) + "\n")
    [row] = rows(path, "segment")
    assert row.touchpoint.context == {"ip": "192.0.2.0"}
    assert row.touchpoint.properties["traits"]["email"].startswith("hmac:")


def test_option_pairs_are_checked() -> None:
    assert parse_pairs(["a=b", " c = d "], "--map") == {"a": "b", "c": "d"}
    for bad in (["a"], ["=b"], ["a="]):
        with pytest.raises(ValueError, match="expected NAME=VALUE"):
            parse_pairs(bad, "--set")
