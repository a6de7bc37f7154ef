"""`journey import FILE`: history into the pipeline, through the same checks as live data.

Three formats, one row a touchpoint:

- ``touchpoint``: JSON lines in our own format (what ``schemas`` describes);
- ``segment``: JSON lines of Segment messages (``track``/``page``/``identify``, as an
  export from Segment or RudderStack gives them), mapped as the collector maps them;
- ``csv``: a helpdesk or survey export, with ``--map COLUMN=FIELD`` naming where each
  column goes (``occurred_at``, ``customer_id``, ``properties.score``, ...) and
  ``--set FIELD=VALUE`` for what every row shares (``type=survey_response``).

Each row is validated like any touchpoint (schemas, time bounds, personal data
redacted), then sent with the SDK's producer at full speed. A row without an event id
gets one derived from its content, so that importing the same file again sends the
same ids, which the pipeline absorbs: re-running an import changes nothing. Rows whose
id ClickHouse already holds are counted as duplicates, and so are repeats in the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from producers.collector.segment import to_touchpoint
from schemas import SchemaError, Touchpoint, decode_touchpoint, utcnow
from schemas.settings import Settings

__all__ = ["FORMATS", "ImportSummary", "Row", "guess_format", "import_file", "parse_pairs",
           "read_rows"]

FORMATS = ("touchpoint", "segment", "csv")
_encoder = msgspec.json.Encoder()


@dataclass
class Row:
    """One line of the file: its number, and its touchpoint or why it has none."""

    line: int
    touchpoint: Touchpoint | None = None
    error: SchemaError | None = None
    raw: str = ""


@dataclass
class ImportSummary:
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0  # repeated in the file, or already in ClickHouse
    rejected: Counter[str] = field(default_factory=Counter)  # reason → rows
    first_line: dict[str, int] = field(default_factory=dict)  # reason → its first line
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = f", {self.rows / self.seconds:,.0f} rows/s" if self.seconds > 0 else ""
        out = [f"{self.rows:,} rows: {self.accepted:,} sent, {self.duplicates:,} duplicates "
               f"(already imported or repeated), {sum(self.rejected.values()):,} rejected "
               f"(in {self.seconds:.1f} s{rate})"]
        for reason, n in self.rejected.most_common():
            out.append(f"  rejected {n:,} x {reason} (first at line {self.first_line[reason]})")
        return out


def guess_format(path: Path) -> str:
    """csv by its suffix; for JSON lines, segment when the first row looks like a
    Segment message (``type`` track/page/identify, ``userId`` or ``anonymousId``)."""
    if path.suffix.lower() == ".csv":
        return "csv"
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    return "touchpoint"  # its rows are then rejected with the reason
                segmentish = isinstance(first, dict) and (
                    first.get("type") in ("track", "page", "identify")
                    or "userId" in first or "anonymousId" in first)
                return "segment" if segmentish else "touchpoint"
    return "touchpoint"


def read_rows(path: Path, fmt: str, settings: Settings, *, source: str = "import",
              mapping: dict[str, str] | None = None, constants: dict[str, str] | None = None,
              now: datetime | None = None) -> Iterator[Row]:
    """Every row of the file, checked: a touchpoint, or the error that rejects it."""
    received_at = now or utcnow()
    make = _maker(fmt, source, received_at, mapping or {}, constants or {})
    redaction = settings.redaction
    bounds = settings.time_bounds
    for line, raw, record in _records(path, fmt):
        try:
            candidate = make(record)
            tp = bounds.check(decode_touchpoint(_encoder.encode(candidate)), received_at)
            yield Row(line, redaction.apply(tp), raw=raw)
        except SchemaError as exc:
            yield Row(line, error=exc, raw=raw)


def _records(path: Path, fmt: str) -> Iterator[tuple[int, str, Any]]:
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        if fmt == "csv":
            reader = csv.DictReader(f)
            for record in reader:
                yield reader.line_num, "", record
            return
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield line, text, json.loads(text)
            except ValueError as exc:
                yield line, text, SchemaError(f"not JSON: {exc}", reason="invalid_json")


def _maker(fmt: str, source: str, received_at: datetime, mapping: dict[str, str],
           constants: dict[str, str]) -> Callable[[Any], dict[str, Any]]:
    def checked(record: Any) -> dict[str, Any]:
        if isinstance(record, SchemaError):
            raise record
        if not isinstance(record, dict):
            raise SchemaError("a row must be a JSON object", reason="invalid_field")
        return record

    def touchpoint(record: Any) -> dict[str, Any]:
        out = dict(checked(record))
        out.setdefault("source", source)
        out.setdefault("received_at", received_at.isoformat())
        if not out.get("event_id"):
            out["event_id"] = _derived_id(out)
        return out

    def segment(record: Any) -> dict[str, Any]:
        message = checked(record)
        if not (message.get("timestamp") or message.get("originalTimestamp")):
            raise SchemaError("a row of history needs its timestamp", field="$.timestamp",
                              reason="missing_time")
        return to_touchpoint(message, received_at=received_at, source=source)

    def row(record: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"source": source, "received_at": received_at.isoformat()}
        for target, value in constants.items():
            _put(out, target, value)
        for column, target in mapping.items():
            if column not in record:
                raise SchemaError(f"the file has no column {column!r} (--map)",
                                  field=f"$.{column}", reason="missing_column")
            value = record[column]
            if value not in ("", None):
                _put(out, target, value)
        if not out.get("event_id"):
            out["event_id"] = _derived_id(out)
        return out

    return {"touchpoint": touchpoint, "segment": segment, "csv": row}[fmt]


def _put(out: dict[str, Any], target: str, value: Any) -> None:
    """Set a dotted field; a CSV cell that reads as a number is one in properties."""
    parts = target.split(".")
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if parts[0] in ("properties", "context") and isinstance(value, str):
        value = _number(value)
    node[parts[-1]] = value


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _derived_id(record: dict[str, Any]) -> str:
    """An id from the row's content (received_at and source left out): the same row
    imported again gets the same id."""
    content = {k: v for k, v in record.items() if k not in ("received_at", "source")}
    digest = hashlib.blake2b(_encoder.encode(_sorted(content)), digest_size=16)
    return "imp-" + digest.hexdigest()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return value


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, str]:
    """``A=B`` options as a dict; a malformed one is a clear error."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{what} {pair!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


#: Rows checked against ClickHouse (and sent) at a time.
CHUNK = 5000


def import_file(settings: Settings, path: Path, fmt: str, *, source: str = "import",
                mapping: dict[str, str] | None = None, constants: dict[str, str] | None = None,
                check_clickhouse: bool = True, progress: bool = True,
                ) -> tuple[ImportSummary, Path | None]:
    """Send the file's valid rows; returns the summary, and where the rejected rows were
    written (None when there were none)."""
    from tqdm import tqdm

    from producers.sdk import JourneyClient

    summary = ImportSummary()
    started = time.monotonic()
    seen: set[str] = set()
    known = _KnownIds(settings) if check_clickhouse else None
    rejects_path = path.with_name(path.name + ".rejected.jsonl")
    rejects = None
    total = _count_rows(path, fmt)
    bar = tqdm(total=total, unit="rows", disable=not progress, dynamic_ncols=True,
               desc="import")
    client = JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                           source=source, redaction=settings.redaction,
                           spool_dir=settings.data_dir / "import-spool")
    try:
        chunk: list[Touchpoint] = []

        def flush() -> None:
            held = known.held([tp.event_id for tp in chunk]) if known else set()
            for tp in chunk:
                if tp.event_id in held:
                    summary.duplicates += 1
                else:
                    client.send(tp)
                    summary.accepted += 1
            chunk.clear()

        for row in read_rows(path, fmt, settings, source=source, mapping=mapping,
                             constants=constants):
            summary.rows += 1
            bar.update(1)
            if row.error is not None:
                reason = row.error.reason
                summary.rejected[reason] += 1
                summary.first_line.setdefault(reason, row.line)
                if rejects is None:
                    rejects = rejects_path.open("w", encoding="utf-8")
                rejects.write(json.dumps({"line": row.line, "reason": reason,
                                          "field": row.error.field, "error": row.error.detail,
                                          "row": row.raw.rstrip("\n")}) + "\n")
                continue
            assert row.touchpoint is not None
            if row.touchpoint.event_id in seen:
                summary.duplicates += 1
                continue
            seen.add(row.touchpoint.event_id)
            chunk.append(row.touchpoint)
            if len(chunk) >= CHUNK:
                flush()
        flush()
        client.flush()
        summary.seconds = time.monotonic() - started
    finally:
        client.close()
        bar.close()
        if rejects is not None:
            rejects.close()
        if known is not None:
            known.close()
    return summary, rejects_path if rejects is not None else None


def _count_rows(path: Path, fmt: str) -> int:
    """For the progress bar: lines, less the header of a CSV (a quick pass)."""
    with path.open("rb") as f:
        lines = sum(1 for line in f if line.strip())
    return max(0, lines - 1) if fmt == "csv" else lines


class _KnownIds:
    """Which event ids ClickHouse holds already; if it cannot be asked, none (the
    pipeline absorbs repeats anyway), said once."""

    def __init__(self, settings: Settings) -> None:
        from stream_processors.clickhouse.client import connect

        self.db = settings.clickhouse_database
        self.client: Any = connect(settings.clickhouse_url, database=self.db)
        self.failed = False

    def held(self, ids: list[str]) -> set[str]:
        if self.failed or not ids:
            return set()
        try:
            rows = self.client.execute(
                f"SELECT DISTINCT event_id FROM {self.db}.touchpoints WHERE event_id IN %(ids)s",
                {"ids": tuple(ids)})
        except Exception as exc:
            self.failed = True
            print(f"journey import: cannot ask ClickHouse which rows it holds ({exc}); "
                  "sending every row (repeats are absorbed downstream)", file=sys.stderr)
            return set()
        return {row[0] for row in rows}

    def close(self) -> None:
        self.client.disconnect()
