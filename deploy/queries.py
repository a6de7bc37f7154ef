"""The analyst queries shipped in ``deploy/clickhouse/queries/``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["QUERY_DIR", "load_queries"]

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
