from datetime import UTC, datetime, timedelta

from schemas import Touchpoint
from stream_processors.journey import JourneyState, apply_touchpoint, decode_state, encode_state

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def tp(type_: str, minutes: float, *, customer: str | None = "c-1", anon: str | None = None,
       channel: str = "web", **props: object) -> Touchpoint:
    return Touchpoint(event_id=f"{type_}-{minutes}", type=type_,
                      occurred_at=T0 + timedelta(minutes=minutes), customer_id=customer,
                      anonymous_id=anon, channel=channel, properties=props)  # type: ignore[arg-type]


def replay(*events: Touchpoint) -> JourneyState:
    state = None
    for e in events:
        state = apply_touchpoint(state, e)
    assert state is not None
    return state


def test_first_touchpoint_starts_a_journey() -> None:
    s = apply_touchpoint(None, tp("ad_click", 0, channel="ad"))
    assert (s.key, s.customer_id, s.first_seen, s.last_seen) == ("c-1", "c-1", T0, T0)
    assert (s.touchpoints, s.version, s.stage) == (1, 1, "awareness")
    assert s.counts_by_channel == {"ad": 1}


def test_counts_orders_and_revenue() -> None:
    s = replay(tp("page_view", 0), tp("page_view", 1), tp("order_placed", 2, revenue=19.99),
               tp("order_placed", 3, revenue="5.01"), tp("order_placed", 4, revenue="oops"))
    assert s.counts_by_type == {"page_view": 2, "order_placed": 3}
    assert (s.orders, s.revenue) == (3, 25.0)


def test_out_of_order_events_keep_event_time_bounds() -> None:
    s = replay(tp("page_view", 10), tp("ad_click", 0), tp("order_placed", 30), tp("page_view", 5))
    assert (s.first_seen, s.last_seen) == (T0, T0 + timedelta(minutes=30))


def test_stage_is_the_furthest_funnel_stage_reached() -> None:
    s = replay(tp("page_view", 0), tp("order_placed", 1), tp("delivery_updated", 2),
               tp("support_ticket_opened", 3), tp("page_view", 4))
    assert s.stage == "fulfilment"


def test_anonymous_ids_are_collected_once() -> None:
    s = replay(tp("page_view", 0, anon="a-1"), tp("identify", 1, anon="a-1"),
               tp("page_view", 2, anon="a-2"))
    assert s.anonymous_ids == ("a-1", "a-2")


def test_apply_does_not_mutate_its_input() -> None:
    before = replay(tp("page_view", 0))
    after = apply_touchpoint(before, tp("page_view", 1))
    assert before.counts_by_type == {"page_view": 1}
    assert after.counts_by_type == {"page_view": 2}


def test_state_round_trips_through_the_table_codec() -> None:
    s = replay(tp("page_view", 0, anon="a"), tp("order_placed", 1, revenue=3))
    assert decode_state(encode_state(s)) == s
