"""Standard CX definitions on hand-computed cases."""

import random

import pytest

from stream_processors.cx_metrics import (
    DurationSketch,
    Ratio,
    TicketOutcome,
    ces,
    checkout_abandonment,
    contact_rate,
    csat,
    damaged_rate,
    first_contact_resolution,
    nps,
    nps_category,
    on_time_rate,
    reopen_rate,
    repeat_purchase_rate,
    retention,
    visitor_conversion,
)


def test_nps_by_hand() -> None:
    # 4 promoters (9, 10, 10, 9), 2 passives (7, 8), 4 detractors (0, 6, 3, 5): 40 % - 40 %.
    assert nps([9, 10, 10, 9, 7, 8, 0, 6, 3, 5]).value == 0.0
    # 3 promoters, 1 passive, 1 detractor of 5: 60 % - 20 % = 40.
    assert nps([10, 9, 9, 7, 2]).value == pytest.approx(40.0)
    assert nps([0, 1]).value == -100.0
    assert nps([]).value is None
    assert [nps_category(s) for s in (6, 7, 8, 9)] == ["detractor", "passive", "passive",
                                                       "promoter"]


def test_nps_adds_up_across_windows_unlike_percentages() -> None:
    a, b = nps([10, 10, 10, 10]), nps([0])  # 100 and -100
    assert (a + b).value == pytest.approx(60.0)  # 4 - 1 over 5, not (100 - 100) / 2


def test_csat_and_ces_by_hand() -> None:
    assert csat([5, 4, 3, 2, 5]).value == pytest.approx(60.0)
    assert ces([1, 2, 7, 6]).value == pytest.approx(4.0)
    assert csat([]).value is None


def test_support_rates_by_hand() -> None:
    tickets = [TicketOutcome(True, 0, 1), TicketOutcome(True, 0, 3), TicketOutcome(True, 1, 1),
               TicketOutcome(False, 0, 0)]
    assert first_contact_resolution(tickets).value == pytest.approx(100 / 3)
    assert reopen_rate(tickets).value == pytest.approx(100 / 3)
    assert contact_rate(tickets=7, orders=350).value == pytest.approx(2.0)


def test_delivery_and_journey_rates_by_hand() -> None:
    statuses = ["on_time"] * 8 + ["late", "damaged", "failed"]
    assert on_time_rate(statuses).value == pytest.approx(80.0)
    assert damaged_rate(statuses).value == pytest.approx(10.0)
    assert visitor_conversion(visitors=200, ordering=30).value == pytest.approx(15.0)
    assert checkout_abandonment(checkouts=40, orders_after_checkout=30).value == 25.0
    assert repeat_purchase_rate(50, 10).value == 20.0
    # 100 at start, 110 at end of whom 20 new: 90 % retained.
    assert retention(100, 110, 20).value == pytest.approx(90.0)
    assert Ratio(1, 0).value is None


def test_sketch_quantiles_within_one_percent_and_mergeable() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(1 / 3600) for _ in range(20_000)]
    left, right, whole = DurationSketch(), DurationSketch(), DurationSketch()
    for i, v in enumerate(values):
        (left if i % 2 else right).add(v)
        whole.add(v)
    left.merge(right)
    exact = sorted(values)
    for q in (0.5, 0.9, 0.99):
        true = exact[int(q * (len(exact) - 1))]
        assert left.quantile(q) == pytest.approx(true, rel=0.02)
        assert left.quantile(q) == pytest.approx(whole.quantile(q), rel=1e-9)
    assert left.count == 20_000
    assert DurationSketch().quantile(0.5) is None
