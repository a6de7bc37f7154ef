"""The one error type every producer and processor raises for bad touchpoint data."""

from __future__ import annotations


class SchemaError(ValueError):
    """A touchpoint does not match its schema.

    ``field`` is a JSON path such as ``$.occurred_at`` so that a rejected event can be
    fixed at the source without guessing; ``reason`` is a short machine-friendly code
    used as a metric label and in dead-letter records.
    """

    def __init__(self, message: str, *, field: str = "$", reason: str = "invalid") -> None:
        super().__init__(f"{message} (at {field})")
        self.field = field
        self.reason = reason
        self.detail = message
