"""Forgetting a customer during a live replay, on the real broker, worker and ClickHouse.

Customer ``gone-7`` has two devices: the laptop's anonymous history was merged at its
identify, the phone's identify comes in the middle of the replay. While 40 other
customers keep streaming, ``journey forget`` runs; then more of ``gone-7``'s events
come, by the SDK and the collector. In the end, no row of any table and no live key or
value of the worker's state (read back from the changelogs) holds their id or a
device's; the other customers' rows are exactly what was sent; the audit holds only
the id's keyed hash.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta

from kafka import KafkaProducer

from producers import JourneyClient
from schemas import utcnow
from schemas.privacy import id_hash, pseudonym
from tests.changelogs import changelog_state
from tests.conftest import REPO, TEST_CLIENT_KEY, TEST_WRITE_KEY, read_topic, wait_for
from tests.reference import stored_msgpack

GONE, LAPTOP, PHONE = "gone-7", "gone-7-laptop", "gone-7-phone"
KEPT = "kept-1"  # forgotten through the collector's endpoint
OTHERS = [f"other-{i}" for i in range(40)]
TABLES = ("touchpoints", "customer_journeys", "journey_transitions", "support_tickets",
          "journey_alerts", "dead_letters", "privacy_audit", "privacy_acks")


def journey_cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=REPO,
                          env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=300)


def post(url: str, body: object, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def rows_naming(clickhouse, ids: list[str]) -> dict[str, int]:
    """Per table, the rows in which any of ``ids`` appears anywhere (every column)."""
    found = {}
    for table in TABLES:
        rows = clickhouse.execute(f"SELECT * FROM {table}")
        hits = sum(1 for row in rows if any(i in repr(row) for i in ids))
        if hits:
            found[table] = hits
    return found


def live_state(settings, topic: str) -> dict[bytes, bytes]:
    """A changelog's latest value per key, deleted keys left out (tests/changelogs.py).
    A journey is stored compressed, where an id would not show: searched inflated."""
    return {k: stored_msgpack(v)
            for k, v in changelog_state(settings.bootstrap_servers, topic).items()}


def test_forget_during_a_live_replay(settings, clickhouse, start_worker, start_collector,
                                     tmp_path) -> None:
    worker = start_worker(churn_inactive_days=0.0)
    collector = start_collector()
    t0 = utcnow() - timedelta(hours=6)
    sent: dict[str, int] = {c: 0 for c in [*OTHERS, KEPT]}
    stop = threading.Event()

    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        # The one to forget: a merged laptop, an order, a ticket, a survey answer, a
        # rejected event that names them (a dead letter), and the phone's anonymous visits.
        sdk.track("page_view", anonymous_id=LAPTOP, occurred_at=t0,
                  context={"ip": "203.0.113.77"})
        sdk.identify(GONE, anonymous_id=LAPTOP, occurred_at=t0 + timedelta(minutes=1),
                     traits={"email": "Gone@Example.com"})
        sdk.track("order_placed", customer_id=GONE, occurred_at=t0 + timedelta(minutes=2),
                  properties={"order_id": "o-gone", "revenue": 10.0})
        sdk.track("support_ticket_opened", customer_id=GONE,
                  occurred_at=t0 + timedelta(minutes=3),
                  properties={"ticket_id": "t-gone", "channel": "email"})
        sdk.track("page_view", anonymous_id=PHONE, occurred_at=t0 + timedelta(minutes=4))
        sdk.track("page_view", anonymous_id=PHONE, occurred_at=t0 + timedelta(minutes=5))
        raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        raw.send(settings.touchpoints_topic, json.dumps(
            {"event_id": "bad-gone", "type": "no_such_type", "customer_id": GONE}).encode(),
            key=GONE.encode()).get(timeout=10)
        raw.close()

        def replay() -> None:  # the other customers, a few touchpoints per second each
            n = 0
            while not stop.is_set():
                for customer in [*OTHERS, KEPT]:
                    sdk.track("page_view", customer_id=customer,
                              occurred_at=t0 + timedelta(seconds=n))
                    sent[customer] += 1
                n += 1
                time.sleep(0.2)

        streaming = threading.Thread(target=replay)
        streaming.start()
        try:
            wait_for(lambda: clickhouse.execute(
                "SELECT count() FROM touchpoints WHERE anonymous_id = %(d)s", {"d": PHONE}
            )[0][0] == 2, what="the phone's anonymous visits")
            # The phone is identified mid-replay; forget as soon as its identify is in.
            sdk.identify(GONE, anonymous_id=PHONE, occurred_at=t0 + timedelta(minutes=6))
            sdk.flush()
            wait_for(lambda: clickhouse.execute(
                "SELECT count() FROM touchpoints WHERE anonymous_id = %(d)s AND type = "
                "'identify'", {"d": PHONE})[0][0], what="the phone's identify")
            started = time.monotonic()
            forgotten = journey_cli(settings, "forget", "--customer", GONE, "--by", "test")
            print(forgotten.stdout, forgotten.stderr, f"{time.monotonic() - started:.1f} s")
            assert forgotten.returncode == 0, forgotten.stderr
            assert "erased" in forgotten.stdout and "2 device(s)" in forgotten.stdout

            # Sent after the forget: dropped by the worker (SDK) and by the collector.
            sdk.track("page_view", customer_id=GONE, occurred_at=t0 + timedelta(minutes=7))
            sdk.track("page_view", anonymous_id=PHONE, occurred_at=t0 + timedelta(minutes=8))
            sdk.track("page_view", anonymous_id=LAPTOP, occurred_at=t0 + timedelta(minutes=8))
            sdk.track("page_view", customer_id=OTHERS[0], anonymous_id=PHONE,
                      occurred_at=t0 + timedelta(minutes=9))
            # (other-0's touchpoint names a forgotten device: dropped too, not counted.)
            def suppressed_by_collector() -> dict:
                answer = post(f"{collector.url}/v1/batch", {"batch": [
                    {"type": "track", "event": "Page Viewed", "userId": GONE,
                     "timestamp": t0.isoformat()},
                    {"type": "page", "anonymousId": LAPTOP, "timestamp": t0.isoformat()},
                ]}, TEST_WRITE_KEY)[1]
                return answer if answer.get("suppressed") == 2 else {}

            answer = wait_for(suppressed_by_collector, timeout=20,
                              what="the collector to drop the forgotten ids")
            assert (answer["accepted"], answer["rejected"]) == (0, []), answer

            # Bad requests get clear errors; a client key may not forget anybody.
            url = f"{collector.url}/v1/regulations"
            body = {"regulationType": "Suppress_With_Delete", "subjectType": "USER_ID",
                    "subjectIds": [KEPT]}
            assert post(url, body, None)[0] == 401
            status, error = post(url, body, TEST_CLIENT_KEY)
            assert (status, error["code"]) == (403, "forbidden"), error
            status, error = post(url, {**body, "subjectIds": [""]}, TEST_WRITE_KEY)
            assert status == 400 and "empty" in error["message"], error
            status, error = post(url, {**body, "subjectIds": []}, TEST_WRITE_KEY)
            assert status == 400 and "subjectIds" in error["message"], error
            empty = journey_cli(settings, "forget", "--customer", " ")
            assert empty.returncode == 2 and "empty" in empty.stderr, empty.stderr
            unknown = journey_cli(settings, "forget", "--customer", "never-seen")
            assert unknown.returncode == 0 and "nothing was held" in unknown.stdout, unknown
        finally:
            stop.set()
            streaming.join()
        # The endpoint, from a server key, for a customer with rows: done when it answers.
        status, done = post(url, body, TEST_WRITE_KEY)
        assert status == 200 and done["results"][0]["outcome"] == "erased", done
        sdk.flush()

    def others_landed() -> bool:
        counts = dict(clickhouse.execute(
            "SELECT customer_id, count() FROM touchpoints FINAL GROUP BY customer_id"))
        return all(counts.get(c) == n for c, n in sent.items() if c != KEPT)

    wait_for(others_landed, timeout=90, what="every other customer's touchpoints")
    time.sleep(2)  # what was sent after the forget had time to land, were it kept

    # Nothing of the forgotten customer or their devices, anywhere.
    assert rows_naming(clickhouse, [GONE, LAPTOP, PHONE, KEPT]) == {}
    for table in ("journeys", "devices"):
        state = live_state(settings, f"{settings.app_id}-{table}-changelog")
        held = [k for k, v in state.items()
                if any(i.encode() in k + v for i in (GONE, LAPTOP, PHONE, KEPT))]
        assert held == [], (table, held[:5])
        if table == "journeys":  # the others' state is there
            assert len(state) >= len(OTHERS)
    # The other customers: every touchpoint sent, one journey each (none lost by the
    # forget in between).
    journeys = dict(clickhouse.execute(
        "SELECT customer_id, touchpoints FROM customer_journeys FINAL WHERE customer_id "
        "LIKE 'other-%'"))
    assert journeys == {c: n for c, n in sent.items() if c != KEPT}
    # The audit: both requests by hash, with who asked and the outcome.
    audit = clickhouse.execute(
        "SELECT id_hash, requested_by, outcome FROM privacy_audit WHERE action = 'forget' "
        "ORDER BY finished_at")
    gone_hash = id_hash(GONE, settings.privacy_key)
    assert (gone_hash, "test", "started") in audit and (gone_hash, "test", "erased") in audit
    assert (id_hash(KEPT, settings.privacy_key), "collector:shop", "erased") in audit
    assert "journey_suppressed_touchpoints_total" in worker.metrics()
    suppressed = sum(float(line.rsplit(" ", 1)[1]) for line in worker.metrics().splitlines()
                     if line.startswith("journey_suppressed_touchpoints_total"))
    assert suppressed >= 3, suppressed  # the SDK's gone-7, phone, laptop (and other-0's)
    assert 'journey_collector_events_total{outcome="suppressed",reason=""}' in \
        collector.metrics()

    # Allowed again: the next event is kept.
    allowed = journey_cli(settings, "unsuppress", "--customer", GONE)
    assert allowed.returncode == 0 and "allowed again (3 ids)" in allowed.stdout, allowed
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool2") as sdk:
        sdk.track("page_view", customer_id=GONE, anonymous_id=PHONE, event_id="back",
                  occurred_at=utcnow())
    wait_for(lambda: clickhouse.execute(
        "SELECT customer_id FROM touchpoints WHERE event_id = 'back'") == [(GONE,)],
        what="the unsuppressed customer's new touchpoint")


def test_personal_data_is_redacted_before_kafka_and_clickhouse(settings, clickhouse,
                                                               start_worker, start_collector,
                                                               tmp_path) -> None:
    """By the collector, by the SDK, and by the worker for a producer that did not."""
    start_worker()
    collector = start_collector()
    key = settings.privacy_key
    email = pseudonym("ann@example.com", key)
    status, answer = post(f"{collector.url}/v1/identify", {
        "userId": "c-ann", "anonymousId": "d-ann", "messageId": "via-collector",
        "traits": {"email": "Ann@Example.com", "plan": "gold"},
        "context": {"ip": "203.0.113.77", "traits": {"phone": "+33 612"}}}, TEST_WRITE_KEY)
    assert status == 200 and answer["accepted"] == 1, answer
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        sdk.identify("c-ann", anonymous_id="d-ann", event_id="via-sdk",
                     traits={"email": "ann@example.com"}, context={"ip": "2001:db8:1:2::9"})
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    raw.send(settings.touchpoints_topic, json.dumps({
        "event_id": "via-raw", "type": "identify", "customer_id": "c-ann",
        "occurred_at": utcnow().isoformat(), "context": {"ip": "198.51.100.9"},
        "properties": {"traits": {"email": "ANN@example.com "}}}).encode()).get(timeout=10)
    raw.close()

    def landed() -> dict:
        rows = clickhouse.execute("SELECT event_id, context, properties FROM touchpoints FINAL")
        return {e: (json.loads(c), json.loads(p)) for e, c, p in rows} if len(rows) == 3 else {}

    got = wait_for(landed, what="the three identify rows")
    assert got["via-collector"][0]["ip"] == "203.0.113.0"
    assert got["via-collector"][0]["traits"] == {"phone": pseudonym("+33 612", key)}
    assert got["via-collector"][1]["traits"] == {"email": email, "plan": "gold"}
    assert got["via-sdk"] == ({"ip": "2001:db8:1::"}, {"traits": {"email": email}})
    assert got["via-raw"] == ({"ip": "198.51.100.0"}, {"traits": {"email": email}})
    # Not in clear on the topics either, but for the raw producer's own record.
    records = read_topic(settings, settings.touchpoints_topic, expected=3)
    clear = [r.value for r in records if b"Ann@Example.com" in r.value
             or b"203.0.113.77" in r.value or b"2001:db8:1:2::9" in r.value]
    assert clear == []
    internal = read_topic(settings, settings.journey_events_topic, expected=1, settle=2.0)
    assert not any(b"198.51.100.9" in r.value or b"ANN@" in r.value for r in internal)


def test_a_forget_no_worker_answers_says_so_and_is_audited_as_failed(settings,
                                                                     clickhouse) -> None:
    import pytest

    from stream_processors.privacy import PrivacyError, forget
    from stream_processors.topics import ensure_topics

    ensure_topics(settings)  # topics, but no worker to read them
    with pytest.raises(PrivacyError, match="is a worker running"):
        forget(settings.replace(privacy_timeout_seconds=2.0), "c-9", requested_by="test")
    assert clickhouse.execute("SELECT outcome FROM privacy_audit ORDER BY finished_at") == [
        ("started",), ("failed: PrivacyError",)]
