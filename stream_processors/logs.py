"""One line per outage, not one per retry: the worker's log while the broker is away.

aiokafka and Faust log every failed connection attempt and every failed request, each
retry again. A broker that is down for a minute buried the worker's log in repeats that
never named the setting to check. :class:`RepeatFilter` lets each kind of warning
through once per window, says how many like it it held back, and adds which setting
names the broker to connection failures.
"""

from __future__ import annotations

import logging
import re

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

__all__ = ["RepeatFilter", "quiet_outages"]

#: Loggers whose warnings repeat on every retry while the broker is away.
NOISY = ("aiokafka", "kafka", "faust.transport", "faust.tables", "faust.app")
_CONNECTION = re.compile(r"connect|unavailable|not available|NodeNotReady|broker|"
                         r"KafkaConnectionError|RequestTimedOut|timed out", re.I)


class RepeatFilter(logging.Filter):
    """Each (logger, message template) at WARNING or above from ``loggers`` at most once
    per ``every`` seconds (a fixed window of the ``limits`` library, as the collector's
    refusals); the next one that passes says how many were held back."""

    def __init__(self, loggers: tuple[str, ...], every: float = 10.0, hint: str = "") -> None:
        super().__init__()
        self.loggers, self.hint = loggers, hint
        self._limit = RateLimitItemPerSecond(1, max(1, round(every)))
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.loggers):
            return True
        key = (record.name, str(record.msg))
        if not self._limiter.hit(self._limit, *key):
            self._held[key] = self._held.get(key, 0) + 1
            return False
        notes = []
        if held := self._held.pop(key, 0):
            notes.append(f"{held} more like it not logged")
        if self.hint and _CONNECTION.search(record.getMessage()):
            notes.append(self.hint)
        if notes:  # with arguments the message is %-formatted later: escape the notes
            suffix = f" [{'; '.join(notes)}]"
            record.msg = f"{record.msg}{suffix.replace('%', '%%') if record.args else suffix}"
        return True


def quiet_outages(bootstrap_servers: list[str], every: float = 10.0) -> RepeatFilter:
    """Install a :class:`RepeatFilter` on every handler of the root logger (where
    Faust's logging setup put them); filters on a parent logger would not see records
    that only propagate through it."""
    repeat = RepeatFilter(NOISY, every, hint=f"the broker is {','.join(bootstrap_servers)} "
                                            "(JOURNEY_BROKER_URL); retrying")
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeat)
    return repeat
