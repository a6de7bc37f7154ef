"""The Python SDK on a real broker: batching, per-key order, and a broker outage."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from deploy.stack import Stack
from producers import JourneyClient
from schemas import SchemaError, decode_touchpoint
from schemas.properties import DeliveryUpdated, OrderItem, OrderPlacedV2
from schemas.settings import Settings
from stream_processors.topics import ensure_topics
from tests.conftest import free_port, read_topic, wait_for


def test_batches_and_keeps_each_customers_order(settings, tmp_path) -> None:
    ensure_topics(settings)
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        for i in range(3000):
            sdk.track("page_view", customer_id=f"c-{i % 10}", properties={"seq": i})
        sdk.flush()
        stats = sdk.stats()
    records = read_topic(settings, settings.touchpoints_topic, 3000)
    assert len(records) == 3000
    seqs: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in records:
        tp = decode_touchpoint(r.value)
        assert r.key == tp.customer_id.encode()
        seqs[tp.customer_id].append(tp.properties["seq"])
        partitions[tp.customer_id].add(r.partition)
    for customer, values in seqs.items():
        assert values == sorted(values), customer
        assert len(partitions[customer]) == 1
    assert stats["records-per-request-avg"] > 5  # batched, not one request per event


def test_typed_helpers_and_many_threads(settings, tmp_path) -> None:
    ensure_topics(settings)
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool", source="app") as sdk:
        sdk.emit(OrderPlacedV2(order_id="o-1", revenue=30.0, currency="EUR",
                               items=[OrderItem(sku="s-1", quantity=2, price=15.0)]),
                 customer_id="c-1")
        sdk.emit(DeliveryUpdated(order_id="o-1", status="late"), customer_id="c-1",
                 channel="app")
        sdk.identify("c-1", anonymous_id="dev-1", traits={"plan": "pro"})

        def burst(worker: int) -> None:
            for i in range(250):
                sdk.track("page_view", anonymous_id=f"t-{worker}", properties={"seq": i})

        threads = [threading.Thread(target=burst, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sdk.flush()
    events = [decode_touchpoint(r.value) for r in
              read_topic(settings, settings.touchpoints_topic, 2003)]
    assert len(events) == 2003
    typed = {e.type: e for e in events if e.type != "page_view"}
    assert typed["order_placed"].version == 2
    assert typed["order_placed"].properties["items"] == [
        {"sku": "s-1", "quantity": 2, "price": 15.0}]
    assert (typed["delivery_updated"].properties, typed["delivery_updated"].channel) == \
        ({"order_id": "o-1", "status": "late"}, "app")
    assert typed["identify"].properties == {"traits": {"plan": "pro"}}
    by_thread = defaultdict(list)
    for e in events:
        if e.type == "page_view":
            by_thread[e.anonymous_id].append(e.properties["seq"])
    assert all(seqs == list(range(250)) for seqs in by_thread.values())
    assert len(by_thread) == 8


def test_invalid_events_raise_at_the_call_site(settings, tmp_path) -> None:
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        with pytest.raises(SchemaError) as info:
            sdk.track("order_placed", customer_id="c-1", properties={"order_id": "o-1"})
        assert info.value.field == "$.properties.revenue"
        with pytest.raises(SchemaError, match="customer_id or anonymous_id"):
            sdk.track("page_view")
        assert sdk.pending == 0


def test_a_broker_outage_loses_nothing_and_blocks_nobody(tmp_path) -> None:
    """Stop the broker, keep sending, start it again: every event arrives exactly once."""
    port = free_port()
    settings = Settings.from_env({}).replace(
        broker_url=f"127.0.0.1:{port}", data_dir=tmp_path / "broker", topic_prefix="outage",
        topic_partitions=3)
    broker = Stack(settings, echo=lambda line: None)
    broker.start(["broker"])
    ensure_topics(settings)
    sent: list[str] = []
    sdk = JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                        spool_dir=tmp_path / "spool", delivery_timeout_ms=3000,
                        block_timeout=0.2)
    try:
        for i in range(200):
            sent.append(sdk.track("page_view", anonymous_id=f"a-{i % 7}").event_id)
        sdk.flush(30)
        before = {decode_touchpoint(r.value).event_id
                  for r in read_topic(settings, settings.touchpoints_topic, 200)}
        assert before == set(sent)

        broker.stop()
        slowest = 0.0
        for i in range(300):
            started = time.monotonic()
            sent.append(sdk.track("page_view", anonymous_id=f"a-{i % 7}").event_id)
            slowest = max(slowest, time.monotonic() - started)
        # The app never waited on the dead broker beyond its configured bound.
        assert slowest < sdk.block_timeout + 0.1
        wait_for(lambda: sdk.spooled == 300, timeout=60, what="the 300 events to be spooled")
        assert (tmp_path / "spool").is_dir()

        broker = Stack(settings, echo=lambda line: None)  # a new, empty broker
        broker.start(["broker"])
        # The new in-memory broker has no topics at all. Tansu 0.6 acknowledged sends
        # made with the old metadata and kept nothing (1 run in 5, before the SDK began
        # draining its spool through a fresh producer): nothing may be lost here either.
        sdk.flush(90)
        after = [decode_touchpoint(r.value).event_id
                 for r in read_topic(settings, settings.touchpoints_topic, 300)]
        assert len(after) == 300  # no duplicates
        assert set(after) == set(sent[200:])
        assert sdk.spooled == 0
    finally:
        sdk.close(timeout=5)
        broker.stop()


def test_a_wrong_broker_is_said_at_once_and_close_keeps_the_events(settings, tmp_path,
                                                                   caplog) -> None:
    ensure_topics(settings)
    wrong = f"127.0.0.1:{free_port()}"  # nothing listens
    started = time.monotonic()
    sdk = JourneyClient(wrong, settings.touchpoints_topic, spool_dir=tmp_path / "spool")
    ids = [sdk.track("page_view", anonymous_id="a-1").event_id for _ in range(2)]
    wait_for(lambda: "cannot reach the broker" in caplog.text, timeout=10,
             what="the SDK to say the broker is unreachable")
    said_in = time.monotonic() - started
    assert wrong in caplog.text and str(tmp_path / "spool") in caplog.text
    assert sdk.close(timeout=2) == 2  # returns: both are safe on disk, and says so
    assert "2 events not delivered" in caplog.text
    print(f"unreachable broker said after {said_in:.1f} s")
    # The right broker, the same spool: the next client delivers them.
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as again:
        again.flush(30)
    got = [decode_touchpoint(r.value).event_id
           for r in read_topic(settings, settings.touchpoints_topic, 2)]
    assert sorted(got) == sorted(ids)

