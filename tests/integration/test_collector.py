"""The HTTP collector on the real broker: auth, limits, CORS, mixed batches, DLQ, Segment."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

from schemas import decode_touchpoint
from tests.conftest import TEST_WRITE_KEY, read_topic


def post(url: str, body: object, *, key: str | None = TEST_WRITE_KEY,
         headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    if key is not None:
        request.add_header("Authorization",
                           "Basic " + base64.b64encode(f"{key}:".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else {}, dict(r.headers)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, json.loads(text) if text else {}, dict(e.headers)


def track(i: int, **extra: object) -> dict:
    return {"type": "track", "event": "page_view", "messageId": f"m-{i}",
            "anonymousId": f"anon-{i % 3}", "timestamp": "2026-05-01T10:00:00Z", **extra}


def test_requests_without_a_valid_key_publish_nothing(settings, start_collector) -> None:
    c = start_collector()
    assert post(f"{c.url}/v1/batch", {"batch": [track(1)]}, key=None)[0] == 401
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": [track(2)]}, key="stolen")
    assert status == 401 and "write key" in body["error"]
    assert read_topic(settings, settings.touchpoints_topic, 1, timeout=3) == []
    assert 'journey_collector_requests_total{endpoint="/v1/batch",status="401"} 2.0' \
        in c.metrics()


def test_mixed_batch_reports_each_event_and_dead_letters_the_bad(settings,
                                                                 start_collector) -> None:
    c = start_collector()
    batch = [
        track(1),
        {"type": "track", "event": "Order Completed", "messageId": "m-order",
         "userId": "cust-9", "timestamp": "2026-05-01T10:05:00Z",
         "properties": {"order_id": "o-9", "total": 42.5, "currency": "eur"}},
        {"type": "track", "event": "Teleported", "messageId": "m-bad-type",
         "anonymousId": "anon-1"},
        {"type": "track", "event": "survey_response", "messageId": "m-bad-score",
         "userId": "cust-9", "properties": {"survey": "nps", "score": 12}},
        {"type": "track", "event": "page_view", "messageId": "m-big", "anonymousId": "a",
         "properties": {"blob": "x" * 40_000}},
        {"type": "identify", "messageId": "m-id", "userId": "cust-9", "anonymousId": "anon-1",
         "traits": {"plan": "pro"}},
    ]
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": batch})
    assert status == 200 and body["success"] is True
    assert body["accepted"] == 3
    assert [(r["index"], r["messageId"], r["reason"], r["field"]) for r in body["rejected"]] == [
        (2, "m-bad-type", "unknown_type", "$.event"),
        (3, "m-bad-score", "invalid_property", "$.properties.score"),
        (4, "m-big", "too_large", "$"),
    ]
    published = {tp.event_id: tp for tp in (decode_touchpoint(r.value) for r in
                 read_topic(settings, settings.touchpoints_topic, 3))}
    assert set(published) == {"m-1", "m-order", "m-id"}
    order = published["m-order"]
    assert (order.type, order.customer_id, order.source) == ("order_placed", "cust-9", "shop")
    assert (order.properties["revenue"], order.properties["currency"]) == (42.5, "EUR")
    assert order.occurred_at == datetime(2026, 5, 1, 10, 5, tzinfo=UTC)
    assert order.received_at is not None
    ident = published["m-id"]
    assert (ident.type, ident.customer_id, ident.anonymous_id) == ("identify", "cust-9", "anon-1")
    letters = [json.loads(r.value) for r in read_topic(settings, settings.dead_letter_topic, 3)]
    assert sorted((d["reason"], json.loads(d["payload"])["messageId"]) for d in letters) == [
        ("invalid_property", "m-bad-score"), ("too_large", "m-big"),
        ("unknown_type", "m-bad-type")]
    assert all(d["source"] == "shop" for d in letters)
    metrics = c.metrics()
    assert 'journey_collector_events_total{outcome="accepted",reason=""} 3.0' in metrics
    assert 'journey_collector_events_total{outcome="rejected",reason="too_large"} 1.0' in metrics
    assert "journey_collector_request_bytes_count 1.0" in metrics


def test_segment_limits(settings, start_collector) -> None:
    c = start_collector()
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": [track(i) for i in range(2501)]})
    assert status == 400 and "at most 2500" in body["error"]
    huge = {"batch": [track(i, properties={"p": "y" * 30_000}) for i in range(20)]}
    status, body, _ = post(f"{c.url}/v1/batch", huge)
    assert status == 413
    status, body, _ = post(f"{c.url}/v1/batch", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    assert read_topic(settings, settings.touchpoints_topic, 1, timeout=3) == []


def test_cors_allows_only_the_listed_origins(start_collector) -> None:
    c = start_collector()
    status, _, headers = post(f"{c.url}/v1/batch", b"", key=None, method="OPTIONS",
                              headers={"Origin": "http://allowed.example",
                                       "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    status, _, headers = post(f"{c.url}/v1/batch", {"batch": [track(1)]},
                              headers={"Origin": "http://evil.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    status, _, headers = post(f"{c.url}/v1/batch", {"batch": [track(1)]},
                              headers={"Origin": "http://allowed.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://allowed.example"


def test_rate_limit_per_key(settings, start_collector) -> None:
    c = start_collector(collector_rate_limit=1.0, collector_rate_burst=10.0)
    assert post(f"{c.url}/v1/batch", {"batch": [track(i) for i in range(10)]})[0] == 200
    status, _, headers = post(f"{c.url}/v1/batch", {"batch": [track(i) for i in range(5)]})
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert len(read_topic(settings, settings.touchpoints_topic, 10)) == 10


def test_write_key_in_the_body_for_beacons(settings, start_collector) -> None:
    c = start_collector()
    status, body, _ = post(f"{c.url}/v1/track", {**track(7), "writeKey": TEST_WRITE_KEY},
                           key=None, headers={"Content-Type": "text/plain"})
    assert (status, body["accepted"]) == (200, 1)


def test_a_real_segment_client_is_understood(settings, start_collector) -> None:
    from segment.analytics import Client

    c = start_collector()
    errors: list = []
    client = Client(TEST_WRITE_KEY, host=c.url, sync_mode=True,
                    on_error=lambda e, batch: errors.append(e))
    client.page(anonymous_id="seg-anon", name="Home", properties={"url": "https://shop/"})
    client.track(anonymous_id="seg-anon", event="Product Viewed",
                 properties={"product_id": "p-1", "price": 12.0})
    client.identify(user_id="seg-user", anonymous_id="seg-anon", traits={"plan": "gold"})
    client.track(user_id="seg-user", event="Order Completed",
                 properties={"order_id": "o-1", "revenue": 24.0, "currency": "usd"})
    client.track(user_id="seg-user", event="delivery_updated",
                 properties={"order_id": "o-1", "status": "late"})
    client.flush()
    assert errors == []
    by_type = {tp.type: tp for tp in (decode_touchpoint(r.value) for r in
               read_topic(settings, settings.touchpoints_topic, 5))}
    assert set(by_type) == {"page_view", "product_viewed", "identify", "order_placed",
                            "delivery_updated"}
    assert by_type["page_view"].properties["title"] == "Home"
    assert by_type["product_viewed"].properties["sku"] == "p-1"
    assert (by_type["identify"].customer_id, by_type["identify"].anonymous_id) == \
        ("seg-user", "seg-anon")
    assert by_type["order_placed"].properties["currency"] == "USD"
    assert by_type["delivery_updated"].properties["status"] == "late"
    assert by_type["order_placed"].context["library"]["name"] == "analytics-python"
