"""SDK → broker → worker(s) → ClickHouse, compared in full with the simulator's truth.

Touchpoints are sent shuffled within a lateness bound and with duplicates, as retries
and slow clients deliver them; pre-login touchpoints come keyed by device and the rest
by customer, so identity stitching has to bring each person's journey together.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from kafka import KafkaConsumer, KafkaProducer

from producers import JourneyClient
from producers.simulator import SimulatedCustomer, simulate
from schemas import Touchpoint
from stream_processors.journey import Journey
from tests.conftest import wait_for
from tests.truth import true_journeys

LATENESS = timedelta(hours=6)


def delivery_order(people: list[SimulatedCustomer], seed: int) -> list[Touchpoint]:
    """Event-time order disturbed by up to LATENESS, plus 10 % duplicates sent later."""
    rng = random.Random(seed)
    events = [e for p in people for e in p.events]
    jittered = sorted(events, key=lambda e: e.occurred_at + LATENESS * rng.random())
    duplicates = rng.sample(events, len(events) // 10)
    for event in duplicates:
        jittered.insert(rng.randrange(len(jittered) + 1), event)
    return jittered


def snapshot_differences(clickhouse, truth: dict[str, Journey]) -> list[str]:
    """What ClickHouse says that the truth does not (empty when they agree)."""
    rows = clickhouse.execute(
        "SELECT journey_key, customer_id, anonymous_ids, first_seen, last_seen, stage, "
        "stage_names, stage_entered_at, touchpoints, type_names, type_counts, orders, "
        "revenue, deliveries_late + deliveries_damaged, tickets, open_tickets, nps, csat, "
        "churned, recovery, churn_risk, churn_risk_reasons "
        "FROM customer_journeys FINAL WHERE merged_into = ''")
    got = {r[0]: r[1:] for r in rows}
    problems = [f"missing journey {k}" for k in truth if k not in got]
    problems += [f"unexpected journey {k}" for k in got if k not in truth]
    for key, j in truth.items():
        if key not in got:
            continue
        entered = sorted(j.stage_entered_at.items(), key=lambda kv: kv[1])
        want = (
            j.customer_id or "", sorted(j.anonymous_ids), _s(j.first_seen), _s(j.last_seen),
            j.stage, sorted(s for s, _ in entered), sorted(_s(t) for _, t in entered),
            j.touchpoints, dict(j.counts_by_type), j.orders, round(j.revenue, 2),
            j.deliveries.get("late", 0) + j.deliveries.get("damaged", 0), len(j.tickets),
            j.open_tickets, j.nps, j.csat, int(j.churned), j.recovery, j.churn_risk,
            j.churn_risk_reasons)
        r = got[key]
        have = (r[0], sorted(r[1]), _s(r[2]), _s(r[3]), r[4], sorted(r[5]),
                sorted(_s(t) for t in r[6]), r[7], dict(zip(r[8], r[9], strict=True)), r[10],
                float(r[11]), r[12], r[13], r[14], r[15], r[16], r[17], r[18], r[19],
                list(r[20]))
        if have != want:
            problems.append(f"{key}: got {have}, want {want}")
    return problems


def transition_differences(clickhouse, truth: dict[str, Journey]) -> list[str]:
    got: dict[str, list] = {}
    for key, seq, frm, to, at, reason in clickhouse.execute(
            "SELECT journey_key, seq, from_stage, to_stage, at, reason "
            "FROM journey_transitions FINAL WHERE is_deleted = 0 ORDER BY journey_key, seq"):
        got.setdefault(key, []).append((seq, frm, to, _s(at), reason))
    want = {k: [(t.seq, t.from_stage, t.to_stage, _s(t.at), t.reason) for t in j.transitions]
            for k, j in truth.items()}
    return [f"transitions of {k}: got {got.get(k)}, want {w}" for k, w in want.items()
            if got.get(k) != w] + [f"transitions of unknown journey {k}" for k in got
                                   if k not in want]


def ticket_differences(clickhouse, truth: dict[str, Journey]) -> list[str]:
    got = {r[0]: r[1:] for r in clickhouse.execute(
        "SELECT ticket_id, journey_key, opened_at, first_response_seconds, "
        "resolution_seconds, reopened, status FROM support_tickets FINAL")}
    want = {t.ticket_id: (j.key, t.opened_at, t.first_response_seconds, t.resolution_seconds,
                          t.reopened, t.status)
            for j in truth.values() for t in j.tickets.values()}
    problems = [f"tickets: {sorted(set(got) ^ set(want))[:5]}"] if set(got) != set(want) else []
    for ticket_id, w in want.items():
        g = got.get(ticket_id)
        if g is not None and (g[0], _s(g[1]), *g[2:]) != (w[0], _s(w[1]), *w[2:]):
            problems.append(f"ticket {ticket_id}: got {g}, want {w}")
    return problems


def _s(t):
    return t.replace(microsecond=0, tzinfo=None) if t else t


def run_and_compare(settings, clickhouse, start_worker, tmp_path, people, workers=1,
                    store="memory://"):
    truth = true_journeys(people)
    events = delivery_order(people, seed=5)
    started = [start_worker(churn_inactive_days=0.0, store=store) for _ in range(workers)]
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        for e in events:
            sdk.send(e)
    unique = len({e.event_id for e in events})

    def agreed() -> list[str] | bool:
        n = clickhouse.execute("SELECT count() FROM touchpoints FINAL")[0][0]
        if n != unique:
            return False
        problems = (snapshot_differences(clickhouse, truth)
                    + transition_differences(clickhouse, truth)
                    + ticket_differences(clickhouse, truth))
        return not problems

    try:
        wait_for(agreed, timeout=120, interval=1.0, what="ClickHouse to equal the truth")
    except BaseException:
        for problem in (snapshot_differences(clickhouse, truth)
                        + transition_differences(clickhouse, truth)
                        + ticket_differences(clickhouse, truth))[:10]:
            print(problem)
        raise
    return truth, started


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_journeys_equal_the_simulators_truth(settings, clickhouse, start_worker, tmp_path,
                                             store) -> None:
    people = simulate(250, seed=21, prefix="e2e-")
    truth, (worker,) = run_and_compare(settings, clickhouse, start_worker, tmp_path, people,
                                       store=store)
    # Stitching: every touchpoint of an identified person, anonymous ones included,
    # carries the customer; and their device journeys were merged away.
    # (Rows of one batch reach the tables one table after another, so wait here too.)
    def unresolved() -> list[tuple]:
        rows = dict(clickhouse.execute("SELECT event_id, customer_id FROM touchpoints FINAL"))
        return [(e.event_id, person.customer_id, rows.get(e.event_id)) for person in people
                if any(e.customer_id for e in person.events) for e in person.events
                if rows.get(e.event_id) != person.customer_id]

    try:
        wait_for(lambda: not unresolved(), timeout=30, what="every touchpoint resolved")
    except BaseException:
        print(unresolved()[:10])
        raise
    identified = sum(1 for k in truth if not k.startswith("anon:"))
    assert identified > 100
    # A batch's state is written at once: Faust's cap of 100 changelog records waiting
    # stalled the worker and logged a warning per batch (21 in this test).
    assert "producer buffer full" not in worker.log()
    metrics = worker.metrics()
    assert 'journey_touchpoints_processed_total{type="identify"}' in metrics

    def gauges() -> bool:
        text = worker.metrics()
        keys = [line for line in text.splitlines()
                if line.startswith('journey_table_keys{table="journeys"}')]
        return (f'journey_consumer_lag{{partition="0",topic="{settings.touchpoints_topic}"}}'
                in text and bool(keys) and float(keys[0].rsplit(" ", 1)[1]) >= len(truth))

    wait_for(gauges, timeout=30, what="consumer lag and table size gauges")
    # Inputs only: idle changelog partitions read 1 behind for ever, and are no lag.
    lagging = [line for line in worker.metrics().splitlines()
               if line.startswith("journey_consumer_lag{")]
    assert lagging and not [line for line in lagging if "changelog" in line], lagging
    # Sent up to LATENESS out of order against a 1 h bound: some count as late.
    late = next(line for line in metrics.splitlines()
                if line.startswith("journey_late_touchpoints_total"))
    assert float(late.rsplit(" ", 1)[1]) > 0
    if store == "rocksdb://":
        assert list((tmp_path / "worker").rglob("*.sst")) or list(
            (tmp_path / "worker").rglob("CURRENT")), "no RocksDB files written"


def test_two_workers_share_the_partitions(settings, clickhouse, start_worker, tmp_path) -> None:
    people = simulate(120, seed=33, prefix="two-")
    _, workers = run_and_compare(settings, clickhouse, start_worker, tmp_path, people,
                                 workers=2)
    for worker in workers:  # both took part, not one idle beside the other
        processed = [line for line in worker.metrics().splitlines()
                     if line.startswith("journey_touchpoints_processed_total")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in processed) > 0


def test_poison_messages_are_dead_lettered(settings, clickhouse, start_worker) -> None:
    start_worker()
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    raw.send(settings.touchpoints_topic, key=b"bad", value=b'{"event_id":"x"}')
    raw.send(settings.touchpoints_topic, key=b"bad", value=b"not json at all")
    raw.close()
    wait_for(lambda: clickhouse.execute("SELECT count() FROM dead_letters")[0][0] == 2,
             timeout=60, what="two dead letters")
    assert sorted(clickhouse.execute("SELECT reason, field FROM dead_letters")) == [
        ("invalid_field", "$.type"), ("malformed_json", "$")]
    consumer = KafkaConsumer(settings.dead_letter_topic,
                             bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest")
    letters: list[dict] = []

    def read_letters() -> bool:
        for records in consumer.poll(timeout_ms=500).values():
            letters.extend(json.loads(r.value) for r in records)
        return len(letters) >= 2

    wait_for(read_letters, timeout=30, what="the dead letters on their topic")
    consumer.close()
    assert sorted(d["payload"] for d in letters) == sorted(['{"event_id":"x"}',
                                                            "not json at all"])
    assert clickhouse.execute("SELECT count() FROM touchpoints")[0][0] == 0
