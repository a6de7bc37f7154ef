"""The inactivity sweep: churns a quiet journey once, survives a restart without raising
its alerts again, and takes the churn back when the customer returns."""

from __future__ import annotations

import json
from datetime import timedelta

from producers import JourneyClient
from schemas import utcnow
from tests.conftest import read_topic, wait_for

QUIET = 3.0  # seconds without a touchpoint before the sweep churns a journey


def test_the_sweep_churns_once_across_restarts_and_a_return_retracts_it(
        settings, clickhouse, start_worker, tmp_path) -> None:
    sweeping = {"churn_inactive_days": QUIET / 86400, "churn_sweep_seconds": 1.0,
                "store": "rocksdb://"}
    worker = start_worker(**sweeping)
    t0 = utcnow() - timedelta(seconds=30)
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        sdk.track("order_placed", customer_id="c-1", event_id="o1", occurred_at=t0,
                  properties={"order_id": "o-1", "revenue": 10.0})
        sdk.track("survey_response", customer_id="c-1", event_id="s1",
                  occurred_at=t0 + timedelta(seconds=1), channel="email",
                  properties={"survey": "nps", "score": 3})

    def stages() -> list[str]:
        return [r[0] for r in clickhouse.execute(
            "SELECT to_stage FROM journey_transitions FINAL WHERE journey_key = 'c-1' "
            "AND is_deleted = 0 ORDER BY seq")]

    def alert_kinds() -> list[str]:
        return sorted(r[0] for r in clickhouse.execute(
            "SELECT kind FROM journey_alerts FINAL WHERE customer_id = 'c-1'"))

    # detractor (35) + inactive (40) = 75 >= 60: the sweep raises a churn-risk alert.
    # Tables waited for together: one batch's rows land table by table (README,
    # guarantees).
    wait_for(lambda: stages() == ["purchase", "churned"]
             and alert_kinds() == ["churn_risk", "detractor_followup"]
             and clickhouse.execute("SELECT churned, churn_reason FROM customer_journeys "
                                    "FINAL WHERE journey_key = 'c-1'") == [(1, "inactive")],
             timeout=60, what="the sweep to churn c-1 and raise its churn-risk alert")

    # A restart forgets nothing: the sweep runs again every second, raises nothing new.
    worker.stop()
    worker = start_worker(**sweeping)
    wait_for(lambda: "journey_sink_rows_total" in worker.metrics(), timeout=30,
             what="the restarted worker's metrics")
    alerts = read_topic(settings, settings.alerts_topic, expected=3, timeout=15, settle=6.0)
    kinds = sorted(json.loads(r.value)["kind"] for r in alerts)
    assert kinds == ["churn_risk", "detractor_followup"], kinds

    # The customer comes back: the churn is taken back in journey_transitions too.
    worker.stop()
    start_worker(churn_inactive_days=30.0, store="rocksdb://")
    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        sdk.track("page_view", customer_id="c-1", event_id="p1", occurred_at=utcnow())
    # Both tables together, as above: the transitions may show before the journey's row.
    wait_for(lambda: stages() == ["purchase"] and clickhouse.execute(
        "SELECT churned FROM customer_journeys FINAL WHERE journey_key = 'c-1'") == [(0,)],
        timeout=60, what="the churn to be taken back in journey_transitions and "
        "customer_journeys")
