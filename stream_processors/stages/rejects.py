"""The collector's rejects, from the dead-letter topic into the ``dead_letters`` table.

The collector refuses an event with its reason and keeps it on the dead-letter topic;
it has no ClickHouse connection of its own, so the worker files those letters where an
analyst looks for them, beside its own (the worker writes its own letters' rows itself
and marks them with the topic they were read from, so they are skipped here).

Each row is keyed by the letter's number, which the collector draws for it, in the
``offset`` column: the collector's producer is not idempotent (Tansu refuses
InitProducerId), so a retried send can put one letter on the topic twice, and both
records, like a replay, rewrite the same row. A letter without a number (from an older
collector) is keyed by its place in the topic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from stream_processors.clickhouse.rows import dead_letter_row
from stream_processors.effects import Message, Output

__all__ = ["CollectorRejects"]

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(dict[str, Any])


class CollectorRejects:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def record(self, batch: Sequence[Message], now: datetime) -> Output:
        """``batch``: raw records of the dead-letter topic."""
        out = Output(self.partitions)
        for message in batch:
            try:
                letter = _decoder.decode(message.value)
            except msgspec.DecodeError:
                log.warning("dead-letter record %d@%d is not a letter; left out",
                            message.partition, message.offset)
                continue
            if "topic" in letter:  # the worker's own: its row is written already
                continue
            out.rows["dead_letters"].append(dead_letter_row(
                _time(letter.get("received_at"), now), f"collector:{letter.get('source', '?')}",
                message.partition, _number(letter.get("letter"), message.offset),
                str(letter.get("reason", "")),
                str(letter.get("field", "")), str(letter.get("error", "")),
                str(letter.get("payload", "")).encode()))
        return out


def _number(value: Any, default: int) -> int:
    return value if isinstance(value, int) and 0 <= value < 2 ** 63 else default


def _time(text: Any, default: datetime) -> datetime:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else default
    except ValueError:
        return default
