"""The analyst queries shipped in ``deploy/clickhouse/queries/``."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

__all__ = ["QUERY_DIR", "format_table", "load_queries"]

QUERY_DIR = Path(__file__).parent / "clickhouse" / "queries"


def load_queries() -> dict[str, tuple[str, str]]:
    """name → (first comment line, SQL) for every ``.sql`` file."""
    queries = {}
    for path in sorted(QUERY_DIR.glob("*.sql")):
        text = path.read_text()
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("--")),
                     path.stem)
        queries[path.stem] = (title, text.strip().rstrip(";"))
    return queries


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows under their column names, aligned (numbers right, grouped by thousands)."""
    cells = [list(header)] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths,
             strict=True))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def _fmt(value: object) -> str:
    if isinstance(value, float | Decimal):
        return f"{value:,.2f}" if isinstance(value, Decimal) else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) if value != "" else "(none)"
