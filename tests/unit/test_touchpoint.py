from datetime import UTC, datetime

import pytest

from schemas import (
    TOUCHPOINT_TYPES,
    SchemaError,
    Touchpoint,
    decode_touchpoint,
    encode_touchpoint,
    validate,
)

T = datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)


def test_round_trip_keeps_every_field() -> None:
    tp = Touchpoint(event_id="e-1", type="order_placed", occurred_at=T, received_at=T,
                    customer_id="c-1", anonymous_id="a-1", session_id="s-1", channel="app",
                    source="ios", context={"page": {"url": "https://x"}},
                    properties={"order_id": "o-1", "revenue": 12.5})
    assert decode_touchpoint(encode_touchpoint(tp)) == tp


def test_wire_payload_is_stable() -> None:
    """Golden payload: producers in other languages rely on these exact names."""
    tp = Touchpoint(event_id="e-1", type="page_view", occurred_at=T, anonymous_id="a-1")
    assert encode_touchpoint(tp) == (
        b'{"event_id":"e-1","type":"page_view","occurred_at":"2026-03-01T12:30:15.123000Z",'
        b'"anonymous_id":"a-1"}')


def test_key_prefers_customer_over_device() -> None:
    both = Touchpoint(event_id="e", type="identify", occurred_at=T, customer_id="c",
                      anonymous_id="a")
    device = Touchpoint(event_id="e", type="page_view", occurred_at=T, anonymous_id="a")
    assert (both.key, device.key) == ("c", "a")


@pytest.mark.parametrize(("payload", "field", "reason"), [
    (b'{"event_id":"e","type":"page_view","occurred_at":"2026-01-01T00:00:00"'
     b',"customer_id":"c"}', "$.occurred_at", "invalid_field"),
    (b'{"event_id":"e","type":"teleported","occurred_at":"2026-01-01T00:00:00Z"'
     b',"customer_id":"c"}', "$.type", "unknown_type"),
    (b'{"event_id":"e","type":"page_view","occurred_at":"2026-01-01T00:00:00Z"}',
     "$.customer_id", "missing_identity"),
    (b'{"event_id":"","type":"page_view","occurred_at":"2026-01-01T00:00:00Z"'
     b',"customer_id":"c"}', "$.event_id", "invalid_field"),
    (b'{"event_id":"e","type":"page_view","occurred_at":"2026-01-01T00:00:00Z"'
     b',"customer_id":"c","channel":"fax"}', "$.channel", "invalid_field"),
    (b'{"type":"page_view"}', "$.event_id", "invalid_field"),
    (b'not json', "$", "malformed_json"),
])
def test_invalid_payloads_name_the_field(payload: bytes, field: str, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_touchpoint(payload)
    assert (info.value.field, info.value.reason) == (field, reason)
    assert field in str(info.value)


def test_validate_rejects_what_code_builds_wrongly() -> None:
    with pytest.raises(SchemaError, match="unknown touchpoint type"):
        validate(Touchpoint(event_id="e", type="nope", occurred_at=T, customer_id="c"))


def test_every_type_belongs_to_a_stage() -> None:
    assert len(TOUCHPOINT_TYPES) == 25
    assert {"awareness", "consideration", "purchase", "fulfilment", "post_purchase", "service",
            "feedback", "lifecycle"} == set(TOUCHPOINT_TYPES.values())


def test_trusted_decoding_skips_only_what_ingress_already_checked() -> None:
    from schemas import decode_trusted

    valid = encode_touchpoint(Touchpoint(event_id="e", type="order_placed", occurred_at=T,
                                         customer_id="c", properties={"order_id": "o",
                                                                      "revenue": 1.0}))
    assert decode_trusted(valid) == decode_touchpoint(valid)
    no_revenue = (b'{"event_id":"e","type":"order_placed","occurred_at":"2026-01-01T00:00:00Z"'
                  b',"customer_id":"c","properties":{"order_id":"o"}}')
    with pytest.raises(SchemaError):
        decode_touchpoint(no_revenue)
    assert decode_trusted(no_revenue).properties == {"order_id": "o"}
