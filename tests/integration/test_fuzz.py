"""Hostile input, fuzzed, against the real collector, broker, worker and ClickHouse.

Hypothesis draws 5,000 requests: bad JSON, wrong types, huge, negative and NaN numbers,
odd unicode, times from year 1 to 9999, gzip bombs and bodies over the limit, unknown
and client keys, forged identities and server-only types from a browser's key. Every
request must get a 2xx or 4xx answer whose body says why (never a 5xx); every event
the collector refuses must be in the response with a reason and in the dead letters;
every event it accepts must reach ClickHouse exactly once, with no dead letter from the
worker (the two validate alike); and a normal event sent last lands within seconds.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from producers.collector.segment import EVENT_NAMES
from schemas import CHANNELS, TOUCHPOINT_TYPES
from schemas.examples import EXAMPLES
from tests.conftest import TEST_CLIENT_KEY, TEST_WRITE_KEY, read_topic, wait_for

#: At least 5,000 (issue 13); JOURNEY_FUZZ_REQUESTS changes it for a quick look.
REQUESTS = int(os.environ.get("JOURNEY_FUZZ_REQUESTS", "5000"))
UNIQUE = "<unique>"  # replaced by a fresh, valid messageId when sent

_now = datetime.now(UTC)
_times = st.one_of(
    st.none(),
    st.sampled_from(["1900-01-01T00:00:00Z", "3000-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
                     "9999-12-31T23:59:59-14:00", "not a time", "2026-13-45T99:99:99Z",
                     "2026-01-01T00:00:00", "", "1970-01-01T00:00:00Z"]),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.floats(min_value=-3 * 86400, max_value=7200).map(
        lambda s: (_now + timedelta(seconds=s)).isoformat()),  # mostly fine, some ahead
    st.integers(), st.lists(st.integers(), max_size=2))
_numbers = st.one_of(st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([0, -1, 1e16, 1e17, 99999999999.99, 2 ** 63, -(2 ** 63)]))
_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.text(max_size=300)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _text)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_text, inner, max_size=3), max_leaves=8)
_ids = st.one_of(st.just(UNIQUE), st.just(UNIQUE), st.none(), st.integers(), st.just(""),
                 st.text(min_size=129, max_size=200), st.lists(st.integers(), max_size=2))
_people = st.one_of(st.none(), st.sampled_from(["victim", "cust-1", "cust-2", "anon-1", "a" * 129]),
                    _text, st.integers(), st.dictionaries(_text, _scalars, max_size=1))
_property_names = st.sampled_from(
    ["order_id", "revenue", "total", "currency", "score", "survey", "status", "ticket_id",
     "channel", "sku", "price", "items", "rates", "author", "rating", "action", "ad_id",
     "email_id", "url", "title", "text", "refund", "quantity", "product_id", "network"])
_properties = st.one_of(
    st.dictionaries(_property_names, st.one_of(_values, st.sampled_from(
        ["nps", "csat", "ces", "late", "damaged", "on_time", "chat", "agent", "add", "EUR",
         "o-1", "t-1", "sku-1"]), st.integers(-3, 12)), max_size=6),
    st.lists(st.integers(), max_size=3), _text)
_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "track", "track", "page", "identify", "screen", None, 7])},
    optional={"event": st.one_of(st.sampled_from(sorted(TOUCHPOINT_TYPES) + sorted(EVENT_NAMES)),
                                 _text, st.integers()),
              "messageId": _ids, "userId": _people, "anonymousId": _people,
              "timestamp": _times, "sentAt": _times, "properties": _properties,
              "traits": _properties, "context": st.one_of(_values, st.dictionaries(
                  st.sampled_from(["channel", "ip", "library", "page"]), _values)),
              "channel": st.one_of(st.sampled_from(CHANNELS), _text, st.integers()),
              "version": st.one_of(st.integers(-2, 70000), _text)})
# Valid messages of every type and version (schemas/examples.py), from a customer or a
# device, recent, and then perhaps one field replaced by anything at all.
_examples = [(t, v, props) for (t, v), e in EXAMPLES.items() for props in e["valid"]]
_valid = st.builds(
    lambda example, who, seconds: {
        "type": "identify" if example[0] == "identify" else "track",
        "event": example[0], "messageId": UNIQUE, "version": example[1],
        "properties": example[2], **({"traits": example[2].get("traits", {})}
                                     if example[0] == "identify" else {}),
        **who, "timestamp": (_now - timedelta(seconds=seconds)).isoformat()},
    st.sampled_from(_examples),
    st.sampled_from([{"userId": "cust-1"}, {"userId": "victim", "anonymousId": "dev-x"},
                     {"anonymousId": "dev-1"}, {"userId": "cust-2", "anonymousId": "dev-1"}]),
    st.floats(min_value=0, max_value=3 * 86400))
_mutated = st.tuples(_valid, st.sampled_from(
    ["messageId", "userId", "anonymousId", "timestamp", "sentAt", "properties", "version",
     "event", "type", "channel"]), _values).map(lambda m: {**m[0], m[1]: m[2]})
_keys = st.sampled_from(["server", "server", "client", "client", "none", "unknown", "body"])
_BOMB = gzip.compress(b"[" * (20 * 1024 * 1024), compresslevel=9)
_HUGE = json.dumps({"batch": [{"type": "track", "event": "page_view", "anonymousId": "a",
                               "properties": {"p": "x" * 30_000}}] * 20}).encode()
_requests = st.one_of(
    st.tuples(st.just("batch"), st.lists(st.one_of(_valid, _valid, _mutated, _messages, _values),
                                         max_size=12), _keys,
              st.sampled_from(["identity", "identity", "gzip", "deflate"])),
    st.tuples(st.sampled_from(["track", "page", "identify"]), st.one_of(_valid, _mutated,
                                                                         _messages), _keys,
              st.just("identity")),
    st.tuples(st.just("raw"), st.one_of(st.binary(max_size=200), _values.map(
        lambda v: json.dumps(v).encode())), _keys, st.sampled_from(["identity", "gzip", "br"])),
    st.tuples(st.sampled_from(["bomb", "huge"]), st.none(), _keys, st.just("identity")))


class Sent:
    """What the fuzzer sent and what it was told."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.accepted: set[str] = set()
        self.rejected = 0
        self.next_id = 0

    def fresh(self, message: Any) -> Any:
        if isinstance(message, dict) and message.get("messageId") == UNIQUE:
            self.next_id += 1
            message = {**message, "messageId": f"fuzz-{self.next_id:06d}"}
        return message


def test_hostile_requests_never_break_the_pipeline(settings, start_collector, start_worker,
                                                   clickhouse, tmp_path) -> None:
    worker = start_worker()
    collector = start_collector(collector_rate_limit=1e6, collector_rate_burst=1e6,
                                collector_client_rate_limit=1e6,
                                collector_client_rate_burst=1e6)
    host, port = collector.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    sent = Sent()
    keys = {"server": TEST_WRITE_KEY, "client": TEST_CLIENT_KEY, "unknown": "stolen-key"}

    def post(path: str, body: bytes, key: str, encoding: str) -> tuple[int, dict]:
        nonlocal connection
        headers = {"Content-Type": "application/json"}
        if key in keys:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{keys[key]}:".encode()).decode()
        if encoding != "identity":
            headers["Content-Encoding"] = encoding
        for attempt in range(2):  # the server may close a connection after an error
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (http.client.HTTPException, ConnectionError):
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @hypothesis_settings(max_examples=REQUESTS, deadline=None, database=None,
                         derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_requests)
    def one_request(request: tuple) -> None:
        kind, content, key, encoding = request
        messages: list[Any] | None = None
        if kind == "batch":
            messages = [sent.fresh(m) for m in content]
            payload: Any = {"batch": messages}
        elif kind in ("track", "page", "identify"):
            messages = [sent.fresh(content)]
            payload = messages[0]
        if kind in ("batch", "track", "page", "identify"):
            if key == "body":
                payload = {**payload, "writeKey": TEST_WRITE_KEY}
            body = json.dumps(payload).encode()  # NaN and Infinity: not JSON, as sent
            body = {"gzip": gzip.compress, "deflate": __import__("zlib").compress}.get(
                encoding, lambda b: b)(body)
            path = "/v1/batch" if kind == "batch" else f"/v1/{kind}"
        elif kind == "raw":
            body, path = content, "/v1/batch"
            if encoding == "gzip":
                body = gzip.compress(body)
        else:
            body, path = (_BOMB, "/v1/batch") if kind == "bomb" else (_HUGE, "/v1/batch")
            encoding = "gzip" if kind == "bomb" else "identity"
        status, answer = post(path, body, key, encoding)
        sent.requests += 1
        sent.statuses[status] = sent.statuses.get(status, 0) + 1
        assert status < 500, (status, answer, request)
        if status != 200:
            assert answer.get("success") is False and answer.get("code") and \
                answer.get("message"), (status, answer)
            if answer["code"] != "invalid_events":  # the request itself was refused
                return
            assert status == 400 and answer["accepted"] == 0, answer
        assert messages is not None
        assert answer["accepted"] + len(answer["rejected"]) == len(messages), answer
        assert all(r["reason"] and r["error"] for r in answer["rejected"]), answer
        rejected_at = {r["index"] for r in answer["rejected"]}
        generated = {g["index"]: g["messageId"] for g in answer.get("generated", [])}
        sent.accepted |= {generated.get(i) or m["messageId"] for i, m in enumerate(messages)
                          if i not in rejected_at}
        sent.rejected += len(rejected_at)

    started = time.monotonic()
    one_request()
    fuzz_seconds = time.monotonic() - started
    print(f"{sent.requests} requests in {fuzz_seconds:.0f} s; statuses {sent.statuses}; "
          f"{len(sent.accepted)} events accepted, {sent.rejected} rejected")
    assert sent.requests >= REQUESTS
    # The fuzz reached both sides.
    assert len(sent.accepted) > REQUESTS // 10 and sent.rejected > REQUESTS // 5

    # Every refused event is a dead letter with its reason and payload.
    # The collector's producer is at least once (not idempotent on Tansu): a retried send
    # may put a letter there twice, so letters are counted by the number each carries.
    records = read_topic(settings, settings.dead_letter_topic, sent.rejected, timeout=60)
    letters = {json.loads(r.value)["letter"]: json.loads(r.value) for r in records}
    print(f"{len(records)} dead-letter records, {len(letters)} letters")
    assert len(letters) == sent.rejected
    assert all(letter["reason"] for letter in letters.values())

    # A normal event sent last lands within seconds.
    last = {"type": "track", "event": "page_view", "messageId": "after-the-fuzz",
            "anonymousId": "calm", "timestamp": datetime.now(UTC).isoformat()}
    sent_at = time.monotonic()
    assert post("/v1/track", json.dumps(last).encode(), "server", "identity")[0] == 200

    def landed() -> bool:
        return clickhouse.execute(
            "SELECT count() FROM touchpoints WHERE event_id = 'after-the-fuzz'")[0][0] == 1

    wait_for(landed, timeout=60, interval=0.2, what="the event sent after the fuzz")
    print(f"the event sent after the fuzz landed in {time.monotonic() - sent_at:.1f} s")
    assert worker.process.poll() is None, worker.log()  # never crashed

    # Everything accepted is in ClickHouse once, and the worker refused none of it. The
    # event sent last may overtake earlier ones: it has a partition of its own, and an
    # anonymous event takes the by-device hop. So wait for the rest; a lost event still
    # fails, by the timeout. (CI lost one twice, most likely a device's late touchpoint in
    # the batch that merged its journey: test_stitching has that case.)
    def missing() -> set[str]:
        ids = {r[0] for r in clickhouse.execute(
            "SELECT event_id FROM touchpoints FINAL WHERE event_id != 'after-the-fuzz'")}
        assert ids <= sent.accepted, sorted(ids - sent.accepted)[:5]  # nothing refused got in
        return sent.accepted - ids

    wait_for(missing, timeout=30, done=lambda left: not left,
             what="every accepted event in ClickHouse; those missing")
    dead = [line for line in worker.metrics().splitlines()
            if line.startswith("journey_dead_letters_total") and not line.endswith(" 0.0")]
    assert dead == [], dead
    # Every refused event is also a row of dead_letters, filed by the worker.
    filed = "SELECT count() FROM dead_letters FINAL WHERE topic LIKE 'collector:%'"
    wait_for(lambda: clickhouse.execute(filed)[0][0] == sent.rejected, timeout=60,
             what=f"{sent.rejected} collector rejects in dead_letters")
