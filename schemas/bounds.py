"""When a touchpoint may have happened: bounds checked where it enters (pure).

A client's clock can be anything: a phone set to 1900, a test left at year 3000, a
timezone bug. Such a time is not late or early data, it is wrong data, and it did harm
downstream: 1900 does not fit ClickHouse's ``DateTime`` and stalled a partition's
inserts for good; a far-future time pushed event-time progress ahead and closed every CX
window early. So ``occurred_at`` must fall within bounds around the time the service
received the event (``received_at``, or now when a producer did not say), and anything
outside is rejected with its reason, like any other invalid field.

The defaults a shop would expect: up to a year in the past (imports of last year's
orders, surveys and helpdesk history, apps that were offline for weeks) and up to an
hour ahead (phones whose clocks run fast; Segment's SDKs also send ``sentAt``, with
which the collector corrects the skew before this check).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from schemas.errors import SchemaError
from schemas.touchpoint import Touchpoint

__all__ = ["EARLIEST", "LATEST_TIME", "TimeBounds"]

#: Whatever the settings say, no time outside ClickHouse's ``DateTime`` (seconds since
#: 1970 in 32 bits, up to 2106) is accepted.
EARLIEST: Final = datetime(1970, 1, 2, tzinfo=UTC)
LATEST_TIME: Final = datetime(2106, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """``occurred_at`` within [reference - max_age, reference + max_ahead]."""

    max_age: timedelta = timedelta(days=365)
    max_ahead: timedelta = timedelta(hours=1)

    def check(self, tp: Touchpoint, now: datetime) -> Touchpoint:
        """``tp`` if its time is within bounds, else :class:`SchemaError` (reason
        ``out_of_bounds``). The reference is ``tp.received_at``, else ``now``."""
        reference = tp.received_at or now
        at = tp.occurred_at
        earliest = max(EARLIEST, reference - self.max_age)
        latest = min(LATEST_TIME, reference + self.max_ahead)
        if at < earliest:
            raise SchemaError(
                f"occurred_at {at.isoformat()} is more than {_span(self.max_age)} before it "
                f"was received ({reference.isoformat()}); older history is not accepted "
                "(JOURNEY_MAX_EVENT_AGE_DAYS)", field="$.occurred_at", reason="out_of_bounds")
        if at > latest:
            raise SchemaError(
                f"occurred_at {at.isoformat()} is more than {_span(self.max_ahead)} after it "
                f"was received ({reference.isoformat()}): the sender's clock is wrong; send "
                "sentAt so the skew can be corrected (JOURNEY_MAX_EVENT_AHEAD_SECONDS)",
                field="$.occurred_at", reason="out_of_bounds")
        return tp


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"
