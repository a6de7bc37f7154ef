"""Journey rules, hand-checked: stages, tickets, surveys, recovery, churn risk, merging."""

import random
from datetime import UTC, datetime, timedelta

from stream_processors.journey import (
    JourneyEvent,
    JourneyLog,
    add_events,
    decode_log,
    encode_log,
    fold,
    merge_logs,
)

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
_seq = iter(range(1_000_000))


def ev(type_: str, hours: float, *, anon: str | None = None, via: str = "web",
       **props: object) -> JourneyEvent:
    return JourneyEvent(at=T0 + timedelta(hours=hours), event_id=f"e{next(_seq):05d}",
                        type=type_, channel=via, anonymous_id=anon, properties=props)


def journey_of(*events: JourneyEvent, key: str = "c-1", **kwargs):
    log = JourneyLog(key=key, customer_id=key)
    add_events(log, list(events))
    return fold(log, **kwargs)


def shop(*extra: JourneyEvent) -> list[JourneyEvent]:
    return [ev("ad_click", 0, via="ad"), ev("page_view", 1), ev("checkout_started", 2),
            ev("order_placed", 3, order_id="o-1", revenue=50.0), *extra]


def test_the_funnel_in_event_time_with_stage_times() -> None:
    j = journey_of(*shop(ev("order_shipped", 20, order_id="o-1"),
                         ev("delivery_updated", 40, order_id="o-1", status="on_time")))
    assert [t.to_stage for t in j.transitions] == list(
        ("awareness", "consideration", "purchase", "fulfilment", "post_purchase"))
    assert j.stage == "post_purchase"
    assert j.stage_entered_at["purchase"] == T0 + timedelta(hours=3)
    assert (j.orders, j.revenue, j.touchpoints) == (1, 50.0, 6)
    assert j.relationship_days == 40 / 24
    assert j.deliveries == {"on_time": 1}


def test_arrival_order_and_duplicates_change_nothing() -> None:
    events = shop(ev("order_shipped", 20, order_id="o-1"),
                  ev("support_ticket_opened", 21, ticket_id="t", channel="chat"),
                  ev("support_message", 22, ticket_id="t", author="agent"),
                  ev("survey_response", 30, survey="nps", score=3))
    expected = journey_of(*events)
    for seed in range(5):
        shuffled = events + events[:3]
        random.Random(seed).shuffle(shuffled)
        log = JourneyLog(key="c-1", customer_id="c-1")
        for e in shuffled:
            add_events(log, [e])
        assert fold(log) == expected


def test_a_later_page_view_does_not_undo_a_purchase() -> None:
    j = journey_of(*shop(ev("page_view", 5)))
    assert j.stage == "purchase"
    assert j.stage_at_event[j.transitions[-1].event_id] == "purchase"


def test_repeat_purchase_and_promoters_are_loyal() -> None:
    assert journey_of(*shop(ev("order_placed", 100, revenue=5))).stage == "loyal"
    promoter = journey_of(*shop(ev("survey_response", 50, survey="nps", score=9)))
    assert (promoter.stage, promoter.transitions[-1].reason) == ("loyal", "promoter")
    assert promoter.nps_category == "promoter"
    no_order = journey_of(ev("page_view", 0), ev("survey_response", 1, survey="nps", score=10))
    assert no_order.stage == "consideration"


def test_ticket_clocks() -> None:
    j = journey_of(*shop(
        ev("support_ticket_opened", 10, ticket_id="t1", channel="email", order_id="o-1"),
        ev("support_message", 11, ticket_id="t1", author="customer"),
        ev("support_message", 12, ticket_id="t1", author="agent"),
        ev("support_ticket_resolved", 15, ticket_id="t1"),
        ev("support_ticket_reopened", 16, ticket_id="t1"),
        ev("support_ticket_resolved", 19, ticket_id="t1"),
        ev("support_ticket_opened", 30, ticket_id="t2", channel="chat")))
    t1, t2 = j.tickets["t1"], j.tickets["t2"]
    assert (t1.first_response_seconds, t1.resolution_seconds) == (2 * 3600, 9 * 3600)
    assert (t1.reopened, t1.status, t1.messages, t1.channel) == (1, "resolved", 2, "email")
    assert (t2.status, t2.first_response_seconds, t2.resolution_seconds) == ("open", None, None)
    assert j.open_tickets == 1
    assert "open_ticket" in j.churn_risk_reasons and "reopened_ticket" in j.churn_risk_reasons


def test_latest_survey_scores_by_event_time() -> None:
    j = journey_of(ev("survey_response", 5, survey="nps", score=10),
                   ev("survey_response", 1, survey="nps", score=2),
                   ev("survey_response", 3, survey="csat", score=2),
                   ev("survey_response", 4, survey="ces", score=6))
    assert (j.nps, j.csat, j.ces, j.nps_category) == (10, 2, 6, "promoter")
    assert set(j.churn_risk_reasons) == {"low_csat", "high_effort"}
    assert j.churn_risk == 25


def test_service_recovery_recovered_by_a_later_order() -> None:
    j = journey_of(*shop(ev("delivery_updated", 40, order_id="o-1", status="late"),
                         ev("support_ticket_opened", 41, ticket_id="t", channel="phone"),
                         ev("order_placed", 200, order_id="o-2", revenue=10.0)))
    assert j.recovery == "recovered"


def test_service_recovery_lost_to_a_cancellation() -> None:
    j = journey_of(*shop(ev("delivery_updated", 40, order_id="o-1", status="damaged"),
                         ev("support_ticket_opened", 41, ticket_id="t", channel="chat"),
                         ev("subscription_cancelled", 60)))
    assert (j.recovery, j.stage, j.churned, j.churn_reason) == (
        "lost", "churned", True, "cancelled")
    assert j.churn_risk == 100


def test_a_bad_delivery_nobody_addressed_raises_risk() -> None:
    j = journey_of(*shop(ev("delivery_updated", 40, order_id="o-1", status="late")))
    assert j.recovery == "unaddressed"
    assert j.churn_risk_reasons == ["bad_delivery_unaddressed"]


def test_inactivity_churns_and_a_later_order_wins_back() -> None:
    events = shop()
    now = T0 + timedelta(days=100)
    j = journey_of(*events, inactive_after=timedelta(days=90), now=now)
    assert (j.stage, j.churn_reason) == ("churned", "inactive")
    assert j.transitions[-1].at == T0 + timedelta(hours=3) + timedelta(days=90)
    assert journey_of(*events, inactive_after=timedelta(days=90),
                      now=T0 + timedelta(days=10)).stage == "purchase"
    back = journey_of(*shop(ev("subscription_cancelled", 10),
                            ev("order_placed", 500, order_id="o-9", revenue=1.0)))
    assert (back.stage, back.churned, back.transitions[-1].reason) == (
        "purchase", False, "win_back")


def test_merging_a_device_into_the_customer() -> None:
    device = JourneyLog(key="anon:a-1")
    add_events(device, [ev("ad_click", 0, anon="a-1", via="ad"),
                        ev("page_view", 1, anon="a-1")])
    customer = JourneyLog(key="c-1", customer_id="c-1")
    add_events(customer, [ev("order_placed", 5, anon="a-2", revenue=20.0)])
    assert merge_logs(customer, device)
    j = fold(customer)
    assert j.anonymous_ids == ["a-2", "a-1"]
    assert [t.to_stage for t in j.transitions] == ["awareness", "consideration", "purchase"]
    assert j.first_seen == T0
    assert not merge_logs(customer, device)  # twice changes nothing


def test_versions_grow_only_on_change_and_the_codec_round_trips() -> None:
    log = JourneyLog(key="c-1")
    e = ev("page_view", 0)
    assert add_events(log, [e], customer_id="c-1") and log.version == 1
    assert not add_events(log, [e]) and log.version == 1
    assert decode_log(encode_log(log)) == log


# ── alerts ───────────────────────────────────────────────────────────────────
SLA = timedelta(hours=4)


def alerts(*events: JourneyEvent, now_hours: float = 1000, key: str = "c-1"):
    from stream_processors.journey import alerts_for

    log = JourneyLog(key=key, customer_id=None if key.startswith("anon:") else key)
    add_events(log, list(events))
    return alerts_for(log, fold(log), now=T0 + timedelta(hours=now_hours),
                      first_response_sla=SLA, churn_risk_threshold=60)


def test_detractors_and_low_csat_call_for_a_follow_up() -> None:
    got = alerts(ev("survey_response", 1, survey="nps", score=4, rates={"order_id": "o-1"}),
                 ev("survey_response", 2, survey="nps", score=9),
                 ev("survey_response", 3, survey="csat", score=2))
    assert [(a.kind, a.reason) for a in got] == [
        ("detractor_followup", "NPS 4: follow up with the customer (about order o-1)"),
        ("low_csat_followup", "CSAT 2: follow up with the customer")]
    assert got[0].alert_id == f"detractor:{got[0].touchpoints[0]}"


def test_a_bad_delivery_without_contact_calls_for_outreach() -> None:
    late = ev("delivery_updated", 40, order_id="o-1", status="late")
    (alert,) = alerts(*shop(late))
    assert (alert.kind, alert.touchpoints, alert.customer_id) == (
        "proactive_outreach", (late.event_id,), "c-1")
    contacted = alerts(*shop(ev("delivery_updated", 40, order_id="o-1", status="damaged"),
                             ev("support_ticket_opened", 41, ticket_id="t", channel="chat")))
    assert [a.kind for a in contacted] == ["first_response_sla"]  # the ticket waits, though


def test_first_response_sla_is_judged_against_now() -> None:
    opened = ev("support_ticket_opened", 10, ticket_id="t", channel="email")
    assert alerts(opened, now_hours=12) == []
    (alert,) = alerts(opened, now_hours=15)
    assert (alert.kind, alert.at) == ("first_response_sla", T0 + timedelta(hours=14))
    answered = alerts(opened, ev("support_message", 11, ticket_id="t", author="agent"))
    assert answered == []


def test_churn_risk_over_the_threshold_and_nobody_anonymous() -> None:
    got = alerts(*shop(ev("subscription_cancelled", 50)))
    assert [(a.kind, a.reason) for a in got] == [("churn_risk", "churn risk 100: cancelled")]
    assert alerts(ev("survey_response", 1, survey="nps", score=0), key="anon:a-1") == []


def test_a_fact_resent_under_a_fresh_event_id_counts_once() -> None:
    # A shop's server retrying its webhook: new event ids, the same order, ticket and
    # parcel status. Counted by hand: one order of 50.00, one ticket, one late parcel.
    retried = [ev("order_placed", 3.5, order_id="o-1", revenue=50.0),
               ev("delivery_updated", 40, order_id="o-1", status="late"),
               ev("delivery_updated", 40.5, order_id="o-1", status="late"),
               ev("support_ticket_opened", 41, ticket_id="t-1", channel="chat"),
               ev("support_ticket_opened", 41.2, ticket_id="t-1", channel="email")]
    j = journey_of(*shop(*retried))
    assert (j.orders, j.revenue, j.stage) == (1, 50.0, "post_purchase")  # not loyal
    assert j.deliveries == {"late": 1}
    assert list(j.tickets) == ["t-1"] and j.tickets["t-1"].channel == "chat"
    assert j.touchpoints == 9  # every copy is still a touchpoint of its own
    assert j.natural["order:o-1"][1:] == [retried[0].event_id]
    # A second order is a second order.
    j = journey_of(*shop(ev("order_placed", 5, order_id="o-2", revenue=20.0)))
    assert (j.orders, j.revenue, j.stage) == (2, 70.0, "loyal")


def test_the_earliest_copy_of_a_fact_counts_whatever_the_arrival_order() -> None:
    first = ev("order_placed", 3, order_id="o-9", revenue=10.0)
    again = ev("order_placed", 9, order_id="o-9", revenue=10.0)
    log = JourneyLog(key="c-1", customer_id="c-1")
    add_events(log, [again])
    assert fold(log).first_order_at == again.at
    add_events(log, [first])
    j = fold(log)
    assert (j.orders, j.first_order_at) == (1, first.at)
    assert j.repeats(again) and not j.repeats(first)
