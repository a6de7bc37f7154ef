"""What touchpoints add to CX windows: values, dimensions, and answers that wait."""

from stream_processors.contributions import contributions_for, resolve_pending
from stream_processors.journey import JourneyLog, add_events, fold, merge_logs
from tests.unit.test_journey import ev, shop


def contributions(log: JourneyLog, *new):
    add_events(log, list(new))
    j = fold(log)
    out = resolve_pending(j, log)
    for e in new:
        out += contributions_for(e, j, log)
    return {(c.metric, c.dimension): c.numerator for c in out}


def test_survey_values_and_dimensions() -> None:
    log = JourneyLog(key="c-1", customer_id="c-1")
    add_events(log, shop())
    nps = contributions(log, ev("survey_response", 50, via="email", survey="nps", score=3,
                                rates={"order_id": "o-1"}))
    assert nps == {("nps", "all"): -1.0, ("nps", "channel=email"): -1.0,
                   ("nps", "rated=order:web"): -1.0}
    csat = contributions(log, ev("survey_response", 51, via="app", survey="csat", score=4))
    assert csat == {("csat", "all"): 1.0, ("csat", "channel=app"): 1.0,
                    ("csat", "rated=none"): 1.0}
    assert contributions(log, ev("survey_response", 52, survey="ces", score=6))[("ces", "all")] == 6


def test_deliveries_count_in_both_rates_and_other_statuses_in_none() -> None:
    log = JourneyLog(key="c-1", customer_id="c-1")
    add_events(log, shop())
    assert contributions(log, ev("delivery_updated", 40, order_id="o-1", status="damaged")) == {
        ("on_time_rate", "all"): 0.0, ("damaged_rate", "all"): 1.0}
    assert contributions(log, ev("delivery_updated", 41, order_id="o-1", status="failed")) == {}
    assert contributions(log, ev("page_view", 42)) == {}


def test_contact_rate_counts_tickets_over_orders() -> None:
    log = JourneyLog(key="c-1", customer_id="c-1")
    add_events(log, shop()[:-1])
    order = ev("order_placed", 3, order_id="o-1", revenue=50.0)
    ticket = ev("support_ticket_opened", 4, ticket_id="t-1", channel="chat")
    add_events(log, [order, ticket])
    j = fold(log)
    assert [(c.metric, c.numerator, c.denominator) for e in (order, ticket)
            for c in contributions_for(e, j, log)] == [("contact_rate", 0.0, 1.0),
                                                        ("contact_rate", 1.0, 0.0)]


def test_an_answer_about_a_ticket_not_seen_yet_waits_for_it() -> None:
    log = JourneyLog(key="c-1", customer_id="c-1")
    add_events(log, shop())
    answer = ev("survey_response", 60, via="email", survey="csat", score=2,
                rates={"ticket_id": "t-1"})
    first = contributions(log, answer)
    assert ("csat", "all") in first and not any(d.startswith("rated=") for _, d in first)
    assert log.pending_rated == [answer.event_id]
    assert contributions(log, ev("page_view", 61)) == {}  # still waiting
    later = contributions(log, ev("support_ticket_opened", 55, via="phone", ticket_id="t-1",
                                  channel="phone"))
    assert later == {("csat", "rated=ticket:phone"): 0.0, ("contact_rate", "all"): 1.0}
    assert log.pending_rated == []


def test_waiting_answers_move_with_a_merged_device_journey() -> None:
    device = JourneyLog(key="anon:d-1")
    answer = ev("survey_response", 1, anon="d-1", survey="nps", score=10,
                rates={"event_id": "e-missing"})
    contributions(device, answer)
    assert device.pending_rated == [answer.event_id]
    customer = JourneyLog(key="c-1", customer_id="c-1")
    add_events(customer, shop())
    merge_logs(customer, device)
    assert customer.pending_rated == [answer.event_id]
    assert contributions(customer) == {}  # the rated touchpoint never came


def test_a_resent_fact_adds_nothing_and_an_earlier_copy_takes_the_later_ones_place() -> None:
    from stream_processors.contributions import contributions_of_new

    log = JourneyLog(key="c-1", customer_id="c-1")
    later = ev("delivery_updated", 40, order_id="o-1", status="late")
    add_events(log, [*shop(), later])
    j = fold(log)
    assert contributions_of_new(later, j, log, {later.event_id})[1] is True  # a new fact
    resent = ev("delivery_updated", 41, order_id="o-1", status="late")
    add_events(log, [resent])
    assert contributions_of_new(resent, fold(log), log, {resent.event_id}) == ([], False)
    # The carrier's first report arrives last: the fact moves to its time (two windows
    # apart), the later copy's part is taken back, and no counter counts it again.
    earliest = ev("delivery_updated", 30, order_id="o-1", status="late")
    add_events(log, [earliest])
    parts, new_fact = contributions_of_new(earliest, fold(log), log, {earliest.event_id})
    assert new_fact is False
    assert sorted((c.metric, c.at, c.numerator, c.denominator, c.samples) for c in parts) == [
        ("damaged_rate", earliest.at, 0.0, 1.0, 1), ("damaged_rate", later.at, -0.0, -1.0, -1),
        ("on_time_rate", earliest.at, 0.0, 1.0, 1), ("on_time_rate", later.at, -0.0, -1.0, -1)]
    # Two copies new in one batch: only the earliest contributes.
    log = JourneyLog(key="c-2", customer_id="c-2")
    a, b = (ev("order_placed", h, order_id="o-5", revenue=1.0) for h in (2, 1))
    add_events(log, [a, b])
    j = fold(log)
    assert contributions_of_new(a, j, log, {a.event_id, b.event_id}) == ([], False)
    assert [(c.metric, c.at) for c in contributions_of_new(b, j, log, {a.event_id,
                                                                       b.event_id})[0]] == [
        ("contact_rate", b.at)]
