from collections import Counter

from producers.simulator import in_time_order, simulate
from schemas import decode_touchpoint, encode_touchpoint


def test_same_seed_same_journeys() -> None:
    assert simulate(50, seed=3, start=None)[7].events[0].type == \
        simulate(50, seed=3, start=None)[7].events[0].type
    a = [e.event_id for c in simulate(50, seed=3) for e in c.events]
    b = [e.event_id for c in simulate(50, seed=3) for e in c.events]
    assert a == b


def test_events_are_valid_unique_and_in_event_time_order() -> None:
    customers = simulate(300, seed=11)
    events = list(in_time_order(customers))
    assert len({e.event_id for e in events}) == len(events)
    for e in events:
        assert decode_touchpoint(encode_touchpoint(e)) == e
    times = [e.occurred_at for e in events]
    assert times == sorted(times)
    for c in customers:
        assert [e.occurred_at for e in c.events] == sorted(e.occurred_at for e in c.events)


def test_journeys_cover_the_whole_lifecycle() -> None:
    types = Counter(e.type for c in simulate(1000, seed=5) for e in c.events)
    for t in ("ad_click", "page_view", "identify", "order_placed", "delivery_updated",
              "support_ticket_opened", "survey_response", "subscription_cancelled"):
        assert types[t] > 0, t


def test_anonymous_until_identified() -> None:
    for c in simulate(200, seed=2):
        seen_identify = False
        for e in c.events:
            seen_identify |= e.type in ("identify", "account_created")
            if not seen_identify:
                assert e.customer_id is None and e.anonymous_id == c.anonymous_id
            if e.type == "identify":
                assert (e.customer_id, e.anonymous_id) == (c.customer_id, c.anonymous_id)
