"""SDK → broker → worker → ClickHouse, on the real servers, with exact expectations."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from decimal import Decimal

from kafka import KafkaConsumer, KafkaProducer

from producers import JourneyClient
from producers.simulator import in_time_order, simulate
from tests.conftest import wait_for


def expected_journeys(events):
    """Computed independently of stream_processors.journey: plain counting."""
    out: dict[str, dict] = defaultdict(lambda: {"types": Counter(), "times": [], "orders": 0,
                                                "revenue": Decimal("0")})
    for e in events:
        j = out[e.customer_id or e.anonymous_id]
        j["types"][e.type] += 1
        j["times"].append(e.occurred_at)
        if e.type == "order_placed":
            j["orders"] += 1
            j["revenue"] += Decimal(str(e.properties["revenue"]))
    return out


def test_touchpoints_reach_clickhouse_exactly(settings, clickhouse, start_worker,
                                             tmp_path) -> None:
    events = list(in_time_order(simulate(300, seed=21, prefix="e2e-")))
    expected = expected_journeys(events)
    worker = start_worker()
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        for e in events:
            sdk.send(e)
    # One poison message, as a buggy producer would send it.
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    raw.send(settings.touchpoints_topic, key=b"bad", value=b'{"event_id":"x"}')
    raw.close()

    def landed() -> bool:
        n_tp = clickhouse.execute("SELECT count() FROM touchpoints FINAL")[0][0]
        n_cj = clickhouse.execute("SELECT count() FROM customer_journeys FINAL")[0][0]
        n_dl = clickhouse.execute("SELECT count() FROM dead_letters")[0][0]
        return (n_tp, n_cj, n_dl) == (len(events), len(expected), 1)

    wait_for(landed, timeout=90, what="all rows in ClickHouse")

    rows = clickhouse.execute(
        "SELECT journey_key, touchpoints, type_names, type_counts, first_seen, last_seen, "
        "orders, revenue, version FROM customer_journeys FINAL")
    assert len(rows) == len(expected)
    for key, n, names, counts, first, last, orders, revenue, version in rows:
        want = expected[key]
        assert dict(zip(names, counts, strict=True)) == dict(want["types"]), key
        assert n == version == sum(want["types"].values())
        # ClickHouse 18.16 keeps whole seconds.
        assert first == min(want["times"]).replace(microsecond=0)
        assert last == max(want["times"]).replace(microsecond=0)
        assert (orders, revenue) == (want["orders"], want["revenue"])

    by_type = dict(clickhouse.execute("SELECT type, count() FROM touchpoints FINAL GROUP BY type"))
    assert by_type == dict(Counter(e.type for e in events))

    reason, field, payload = clickhouse.execute(
        "SELECT reason, field, payload FROM dead_letters")[0]
    assert (reason, field, payload) == ("invalid_field", "$.type", '{"event_id":"x"}')
    consumer = KafkaConsumer(settings.dead_letter_topic,
                             bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest")
    letters: list[dict] = []

    def read_letters() -> bool:
        for records in consumer.poll(timeout_ms=500).values():
            letters.extend(json.loads(r.value) for r in records)
        return bool(letters)

    wait_for(read_letters, timeout=30, what="the dead letter on its topic")
    read_letters()  # and nothing more behind it
    consumer.close()
    assert [(d["reason"], d["payload"]) for d in letters] == [("invalid_field", '{"event_id":"x"}')]

    metrics = worker.metrics()
    assert f'journey_touchpoints_processed_total{{type="page_view"}} {by_type["page_view"]}.0' \
        in metrics
    assert 'journey_dead_letters_total{reason="invalid_field"} 1.0' in metrics


def test_redelivered_touchpoints_show_once(settings, clickhouse, start_worker,
                                           tmp_path) -> None:
    """A producer retry sends the same event ids again; analysts see each event once."""
    events = list(in_time_order(simulate(40, seed=4, prefix="dup-")))
    start_worker()
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        for e in events + events[:100]:
            sdk.send(e)
    wait_for(lambda: clickhouse.execute("SELECT count() FROM touchpoints")[0][0]
             == len(events) + 100, timeout=90, what="raw rows including duplicates")
    assert clickhouse.execute("SELECT count() FROM touchpoints FINAL")[0][0] == len(events)
    assert clickhouse.execute("SELECT uniqExact(event_id) FROM touchpoints")[0][0] == len(events)
