"""CX metrics with the industry's standard definitions: pure, additive, mergeable.

Every metric is a numerator and a denominator (or a sketch), so that windows, workers
and dimensions add up before the ratio is taken: summing percentages is always wrong,
summing counts is not. Quantiles come from DDSketch, a mergeable sketch with a
relative-error guarantee, never from sorting raw lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ddsketch import DDSketch

__all__ = [
    "DurationSketch", "Ratio", "ces", "checkout_abandonment", "contact_rate", "csat",
    "csat_satisfied",
    "damaged_rate", "first_contact_resolution", "nps", "nps_category", "on_time_rate",
    "reopen_rate", "repeat_purchase_rate", "retention", "visitor_conversion",
]


@dataclass(frozen=True)
class Ratio:
    """``scale * numerator / denominator``; ``value`` is None without a denominator."""

    numerator: float
    denominator: float
    scale: float = 100.0

    @property
    def value(self) -> float | None:
        if not self.denominator:
            return None
        return self.scale * self.numerator / self.denominator

    def __add__(self, other: Ratio) -> Ratio:
        return Ratio(self.numerator + other.numerator, self.denominator + other.denominator,
                     self.scale)


def nps_category(score: int) -> str:
    """Promoters 9 to 10, passives 7 to 8, detractors 0 to 6."""
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def nps(scores: Iterable[int]) -> Ratio:
    """% promoters minus % detractors: promoters minus detractors, over responses."""
    scores = list(scores)
    promoters = sum(1 for s in scores if s >= 9)
    detractors = sum(1 for s in scores if s <= 6)
    return Ratio(promoters - detractors, len(scores))


def csat_satisfied(score: int) -> bool:
    """A 4 or a 5 on the 1 to 5 scale."""
    return score >= 4


def csat(scores: Iterable[int]) -> Ratio:
    """Share of satisfied answers (4 and 5) on the 1 to 5 scale."""
    scores = list(scores)
    return Ratio(sum(1 for s in scores if csat_satisfied(s)), len(scores))


def ces(scores: Iterable[int]) -> Ratio:
    """Mean effort on the 1 to 7 scale (a Ratio with scale 1: sum over count)."""
    scores = list(scores)
    return Ratio(sum(scores), len(scores), scale=1.0)


@dataclass(frozen=True)
class TicketOutcome:
    resolved: bool
    reopened: int
    agent_responses: int


def first_contact_resolution(tickets: Iterable[TicketOutcome]) -> Ratio:
    """Resolved tickets that needed one agent response and were never reopened."""
    resolved = [t for t in tickets if t.resolved]
    return Ratio(sum(1 for t in resolved if not t.reopened and t.agent_responses <= 1),
                 len(resolved))


def reopen_rate(tickets: Iterable[TicketOutcome]) -> Ratio:
    """Resolved tickets that were reopened at least once."""
    resolved = [t for t in tickets if t.resolved]
    return Ratio(sum(1 for t in resolved if t.reopened), len(resolved))


def contact_rate(tickets: int, orders: int) -> Ratio:
    """Support tickets per 100 orders."""
    return Ratio(tickets, orders)


def on_time_rate(statuses: Iterable[str]) -> Ratio:
    """Of delivered parcels (on time, late, damaged), the share on time."""
    delivered = [s for s in statuses if s in ("on_time", "late", "damaged")]
    return Ratio(sum(1 for s in delivered if s == "on_time"), len(delivered))


def damaged_rate(statuses: Iterable[str]) -> Ratio:
    delivered = [s for s in statuses if s in ("on_time", "late", "damaged")]
    return Ratio(sum(1 for s in delivered if s == "damaged"), len(delivered))


def visitor_conversion(visitors: int, ordering: int) -> Ratio:
    """Journeys with an order, over journeys with a visit."""
    return Ratio(ordering, visitors)


def checkout_abandonment(checkouts: int, orders_after_checkout: int) -> Ratio:
    """Started checkouts that did not end in an order."""
    return Ratio(checkouts - orders_after_checkout, checkouts)


def repeat_purchase_rate(customers_with_orders: int, customers_with_two_or_more: int) -> Ratio:
    return Ratio(customers_with_two_or_more, customers_with_orders)


def retention(customers_at_start: int, customers_at_end: int, new_customers: int) -> Ratio:
    """(customers at end - new customers) / customers at start."""
    return Ratio(customers_at_end - new_customers, customers_at_start)


@dataclass
class DurationSketch:
    """Durations in seconds; mergeable across windows and workers, 1 % relative error."""

    relative_accuracy: float = 0.01
    _sketch: DDSketch = field(init=False)

    def __post_init__(self) -> None:
        self._sketch = DDSketch(relative_accuracy=self.relative_accuracy)

    def add(self, seconds: float) -> None:
        self._sketch.add(max(seconds, 0.0))

    def merge(self, other: DurationSketch) -> None:
        self._sketch.merge(other._sketch)

    @property
    def count(self) -> float:
        return self._sketch.count

    def quantile(self, q: float) -> float | None:
        return self._sketch.get_quantile_value(q) if self._sketch.count else None
