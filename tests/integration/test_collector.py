"""The HTTP collector on the real broker: auth, limits, CORS, mixed batches, DLQ, Segment."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import urllib.error
import urllib.request
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from schemas import decode_touchpoint
from tests.conftest import TEST_CLIENT_KEY, TEST_WRITE_KEY, read_topic, wait_for


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


#: A day a month ago: inside the bounds on times (a fixed date would fall out of them).
DAY = (datetime.now(UTC) - timedelta(days=30)).replace(hour=10, minute=0, second=0,
                                                       microsecond=0)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def track(i: int, **extra: object) -> dict:
    return {"type": "track", "event": "page_view", "messageId": f"m-{i}",
            "anonymousId": f"anon-{i % 3}", "timestamp": iso(DAY), **extra}


def test_requests_without_a_valid_key_publish_nothing(settings, start_collector) -> None:
    c = start_collector()
    assert post(f"{c.url}/v1/batch", {"batch": [track(1)]}, key=None)[0] == 401
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": [track(2)]}, key="stolen")
    assert (status, body["code"]) == (401, "unauthorized") and "write key" in body["message"]
    assert read_topic(settings, settings.touchpoints_topic, 1, timeout=3) == []
    assert 'journey_collector_requests_total{endpoint="/v1/batch",status="401"} 2.0' \
        in c.metrics()


def test_mixed_batch_reports_each_event_and_dead_letters_the_bad(settings,
                                                                 start_collector) -> None:
    c = start_collector()
    batch = [
        track(1),
        {"type": "track", "event": "Order Completed", "messageId": "m-order",
         "userId": "cust-9", "timestamp": iso(DAY + timedelta(minutes=5)),
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
    assert order.occurred_at == DAY + timedelta(minutes=5)
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
    assert status == 400 and "at most 2500" in body["message"]
    huge = {"batch": [track(i, properties={"p": "y" * 30_000}) for i in range(20)]}
    status, body, _ = post(f"{c.url}/v1/batch", huge)
    assert status == 413
    status, body, _ = post(f"{c.url}/v1/batch", b"{not json")
    assert status == 400 and "not valid JSON" in body["message"]
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


# ── hostile and compressed input (issue 13) ──────────────────────────────────
def recent(hours: float = 0.0) -> str:
    """An ISO time ``hours`` from now (negative: the past)."""
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def test_gzip_and_deflate_bodies_land_and_a_bomb_is_refused(settings, start_collector) -> None:
    c = start_collector()
    batch = {"batch": [track(i, timestamp=recent(-1)) for i in range(3)]}
    raw = json.dumps(batch).encode()
    for i, (encoding, data) in enumerate([("gzip", gzip.compress(raw)),
                                          ("deflate", zlib.compress(raw)),
                                          ("deflate", _raw_deflate(raw))]):
        status, body, _ = post(f"{c.url}/v1/batch", data,
                               headers={"Content-Encoding": encoding})
        assert (status, body["accepted"]) == (200, 3), (i, encoding, body)
    # 1 GB of zeros, 1 MB compressed: refused after inflating the limit, not the gigabyte.
    bomb = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)
    status, body, _ = post(f"{c.url}/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
    assert (status, body["code"]) == (413, "too_large") and "decompressed" in body["message"]
    status, body, _ = post(f"{c.url}/v1/batch", b"not gzip at all",
                           headers={"Content-Encoding": "gzip"})
    assert (status, body["code"]) == (400, "bad_request")
    status, body, _ = post(f"{c.url}/v1/batch", gzip.compress(raw), key=None,
                           headers={"Content-Encoding": "gzip"})
    assert status == 401 and "Authorization header" in body["message"]
    status, body, _ = post(f"{c.url}/v1/batch", raw, headers={"Content-Encoding": "br"})
    assert (status, body["code"]) == (415, "unsupported_encoding")
    # Each compressed request's three events, once: the same messageIds three times.
    assert len(read_topic(settings, settings.touchpoints_topic, 9)) == 9


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_an_unknown_key_is_refused_before_the_body_is_read(start_collector) -> None:
    """Headers promise 400 KB that never come: the answer comes anyway, at once."""
    c = start_collector()
    host, port = c.url.removeprefix("http://").split(":")
    bad = base64.b64encode(b"stolen:").decode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall((f"POST /v1/batch HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {bad}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n")
                     .encode())
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 401"), answer[:200]
    assert '"code": "unauthorized"' in answer or '"code":"unauthorized"' in answer


def test_a_client_key_may_not_send_server_only_types(settings, start_collector) -> None:
    c = start_collector()
    batch = [{"type": "track", "event": "page_view", "messageId": "c-page", "anonymousId": "a-1",
              "timestamp": recent(-1)},
             {"type": "track", "event": "delivery_updated", "messageId": "c-forged",
              "userId": "victim", "timestamp": recent(-1),
              "properties": {"order_id": "o-1", "status": "damaged"}},
             {"type": "track", "event": "support_ticket_opened", "messageId": "c-ticket",
              "userId": "victim", "properties": {"ticket_id": "t-1", "channel": "chat"}}]
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": batch}, key=TEST_CLIENT_KEY)
    assert (status, body["accepted"]) == (200, 1)
    assert [(r["messageId"], r["reason"], r["field"]) for r in body["rejected"]] == [
        ("c-forged", "forbidden_type", "$.type"), ("c-ticket", "forbidden_type", "$.type")]
    # The same events from the shop's server key are accepted.
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": batch[1:]})
    assert (status, body["accepted"]) == (200, 2)
    letters = [json.loads(r.value) for r in read_topic(settings, settings.dead_letter_topic, 2)]
    assert sorted((d["reason"], d["source"]) for d in letters) == [
        ("forbidden_type", "web"), ("forbidden_type", "web")]


def test_times_outside_the_bounds_are_rejected_with_their_reason(settings,
                                                                 start_collector) -> None:
    c = start_collector()
    batch = [track(1, timestamp="1900-01-01T00:00:00Z"),
             track(2, timestamp="3000-01-01T00:00:00Z"),
             track(3, timestamp=recent(-24 * 400)),  # older than a year
             track(4, timestamp=recent(2)),  # two hours ahead, no sentAt
             track(5, timestamp="0001-01-01T00:00:00+05:00"),
             track(6, timestamp=recent(-24 * 300)),  # within a year
             # The clock runs 5 h fast, and sentAt says so: corrected, accepted.
             track(7, timestamp=recent(5), sentAt=recent(5.001))]
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": batch})
    assert (status, body["accepted"]) == (200, 2)
    assert [(r["messageId"], r["reason"], r["field"]) for r in body["rejected"]] == [
        (f"m-{i}", "out_of_bounds", "$.timestamp" if i == 5 else "$.occurred_at")
        for i in (1, 2, 3, 4, 5)]
    assert "JOURNEY_MAX_EVENT_AGE_DAYS" in body["rejected"][0]["error"]
    accepted = {decode_touchpoint(r.value).event_id
                for r in read_topic(settings, settings.touchpoints_topic, 2)}
    assert accepted == {"m-6", "m-7"}
    letters = [json.loads(r.value) for r in read_topic(settings, settings.dead_letter_topic, 5)]
    assert sorted(json.loads(d["payload"])["messageId"] for d in letters) == [
        f"m-{i}" for i in (1, 2, 3, 4, 5)]


def test_one_client_address_cannot_use_up_the_key(settings, start_collector) -> None:
    c = start_collector(collector_client_rate_limit=1.0, collector_client_rate_burst=5.0)
    host, port = c.url.removeprefix("http://").split(":")

    def send(source: str, n: int, first: int, key: str = TEST_CLIENT_KEY
             ) -> tuple[int, dict, dict]:
        connection = http.client.HTTPConnection(host, int(port), timeout=10,
                                                source_address=(source, 0))
        auth = base64.b64encode(f"{key}:".encode()).decode()
        connection.request("POST", "/v1/batch", json.dumps(
            {"batch": [track(first + i, timestamp=recent(-1)) for i in range(n)]}),
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())

    assert send("127.0.0.1", 5, 0)[0] == 200
    status, body, headers = send("127.0.0.1", 1, 10)
    assert status == 429 and "client address" in body["message"]
    assert int(headers["Retry-After"]) >= 1
    assert send("127.0.0.2", 5, 20)[0] == 200  # another client of the same shop
    # The shop's own server is limited per key only: one address sends all its traffic.
    assert send("127.0.0.1", 6, 30, key=TEST_WRITE_KEY)[0] == 200
    assert len(read_topic(settings, settings.touchpoints_topic, 16)) == 16


def test_cors_sends_no_credentials_header(start_collector) -> None:
    c = start_collector()
    status, _, headers = post(f"{c.url}/v1/batch", {"batch": [track(1, timestamp=recent(-1))]},
                              headers={"Origin": "http://allowed.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    assert "Access-Control-Allow-Credentials" not in headers


def test_segment_with_and_without_gzip_and_rudderstack_land_once(settings,
                                                                 start_collector) -> None:
    from rudderstack.analytics.client import Client as Rudder
    from segment.analytics import Client as Segment

    c = start_collector()
    errors: list = []
    clients = {"segment": Segment(TEST_WRITE_KEY, host=c.url, sync_mode=True,
                                  on_error=lambda e, b: errors.append(e)),
               "segment-gzip": Segment(TEST_WRITE_KEY, host=c.url, sync_mode=True, gzip=True,
                                       on_error=lambda e, b: errors.append(e)),
               "rudder": Rudder(TEST_WRITE_KEY, host=c.url, sync_mode=True,  # gzip by default
                                on_error=lambda e, b: errors.append(e))}
    sent = []
    for name, client in clients.items():
        for i in range(3):
            message_id = f"{name}-{i}"
            client.track(user_id=f"{name}-user", event="Order Completed", message_id=message_id,
                         properties={"order_id": f"{name}-o{i}", "revenue": 10.0 + i})
            sent.append(message_id)
        client.identify(user_id=f"{name}-user", anonymous_id=f"{name}-anon",
                        message_id=f"{name}-id")
        sent.append(f"{name}-id")
        client.flush()
    assert errors == []
    landed = [decode_touchpoint(r.value) for r in
              read_topic(settings, settings.touchpoints_topic, len(sent))]
    assert sorted(tp.event_id for tp in landed) == sorted(sent)  # each once
    orders = {tp.event_id: tp.properties["revenue"] for tp in landed if tp.type == "order_placed"}
    assert orders["rudder-2"] == 12.0 and orders["segment-gzip-1"] == 11.0


def test_a_rejected_request_tells_rudderstack_why(start_collector) -> None:
    """The Rudder SDK reads `code` and `message` from an error body (it failed with
    KeyError: 'code' before)."""
    from rudderstack.analytics.client import Client as Rudder
    from rudderstack.analytics.request import APIError

    c = start_collector()
    client = Rudder("not-a-key", host=c.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as info:  # sync mode raises what it would report
        client.track(user_id="u", event="page_view")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert "write key" in info.value.message


def test_calls_without_a_message_id_land_once_however_often_retried(settings,
                                                                    start_collector) -> None:
    c = start_collector()
    when = iso(DAY)
    calls = [("/v1/track", {"type": "track", "event": "page_view", "anonymousId": "a-1",
                            "timestamp": when}),
             ("/v1/page", {"anonymousId": "a-1", "name": "Home", "timestamp": when}),
             ("/v1/identify", {"userId": "c-1", "anonymousId": "a-1", "timestamp": when}),
             ("/v1/batch", {"batch": [{"type": "track", "event": "page_view",
                                       "anonymousId": "a-2", "timestamp": when}]})]
    ids = []
    for _attempt in range(2):  # the same payloads again: a client's retry
        for path, payload in calls:
            status, body, _ = post(f"{c.url}{path}", payload)
            assert (status, body["success"], body["accepted"]) == (200, True, 1), body
            ids.append(body["generated"][0]["messageId"])
    assert ids[:4] == ids[4:] and len(set(ids[:4])) == 4
    published = [decode_touchpoint(r.value).event_id
                 for r in read_topic(settings, settings.touchpoints_topic, 8)]
    assert sorted(published) == sorted(ids)  # 8 records, 4 ids: the worker keeps each once
    # No timestamp: identical calls sent apart are separate visits, not a retry.
    bare = {"type": "track", "event": "page_view", "anonymousId": "a-3"}
    first = post(f"{c.url}/v1/track", {**bare, "sentAt": recent(-0.1)})[1]
    second = post(f"{c.url}/v1/track", {**bare, "sentAt": recent()})[1]
    assert first["generated"][0]["messageId"] != second["generated"][0]["messageId"]


def test_a_request_with_nothing_accepted_is_a_failure_and_logged(settings,
                                                                start_collector) -> None:
    c = start_collector()
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": [
        {"type": "track", "event": "Teleported", "messageId": "x-1", "anonymousId": "a"}]})
    assert (status, body["success"], body["code"], body["accepted"]) == (
        400, False, "invalid_events", 0)
    assert "unknown_type" in body["message"] and body["rejected"][0]["messageId"] == "x-1"
    letters = [json.loads(r.value) for r in read_topic(settings, settings.dead_letter_topic, 1)]
    assert [json.loads(d["payload"])["messageId"] for d in letters] == ["x-1"]
    # Every refusal reaches the log with its reason, a flood of them only now and then.
    for _ in range(30):
        assert post(f"{c.url}/v1/batch", {"batch": [track(1)]}, key="stolen")[0] == 401
    wait_for(lambda: "unauthorized" in c.log(), timeout=10, what="the 401 in the log")
    log = c.log()
    refused = [line for line in log.splitlines() if "refused" in line]
    assert any("invalid_events" in line and "shop" in line for line in refused), log
    assert 1 <= sum("unauthorized" in line for line in refused) <= 2, refused


def test_the_collectors_rejects_land_in_the_dead_letters_table(settings, start_collector,
                                                               start_worker, clickhouse) -> None:
    start_worker()
    c = start_collector()
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": [
        track(1, timestamp=recent(-1)),
        {"type": "track", "event": "Teleported", "messageId": "x-2", "anonymousId": "a"}]})
    assert (status, body["accepted"]) == (200, 1)

    def rows() -> list[tuple]:  # no JSONExtract on ClickHouse 18.16
        return clickhouse.execute(
            "SELECT topic, reason, field, position(payload, '\"x-2\"') > 0 FROM dead_letters")

    wait_for(rows, timeout=60, what="the collector's reject in dead_letters")
    assert rows() == [("collector:shop", "unknown_type", "$.event", 1)]


def test_with_no_origins_listed_local_pages_and_files_may_send(start_collector) -> None:
    c = start_collector(collector_cors_origins="")
    for origin in ("null", "http://localhost:8000", "http://127.0.0.1:5500"):
        status, _, headers = post(f"{c.url}/v1/batch", {"batch": [track(1)]},
                                  headers={"Origin": origin})
        assert (status, headers.get("Access-Control-Allow-Origin")) == (200, origin)
    status, body, _ = post(f"{c.url}/v1/batch", {"batch": [track(1)]},
                           headers={"Origin": "https://shop.example"})
    assert (status, body["code"]) == (403, "origin_not_allowed")
    assert "JOURNEY_COLLECTOR_CORS_ORIGINS" in body["message"]
    wait_for(lambda: "origin_not_allowed" in c.log(), timeout=10, what="the refusal logged")
