"""Closed-loop alerts: each situation raised once, with its reason and touchpoints."""

from __future__ import annotations

import json
from datetime import timedelta

from producers import JourneyClient
from schemas import utcnow
from tests.conftest import read_topic, wait_for


def test_alerts_are_raised_once_with_their_reasons(settings, clickhouse, start_worker,
                                                   tmp_path) -> None:
    worker = start_worker(churn_inactive_days=0.0)
    now = utcnow()

    def ago(hours: float):
        return now - timedelta(hours=hours)

    with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                       spool_dir=tmp_path / "spool") as sdk:
        # a: a late delivery, and nobody has contacted support yet.
        sdk.track("order_placed", customer_id="a", event_id="a1", occurred_at=ago(50),
                  properties={"order_id": "oa", "revenue": 10})
        sdk.track("delivery_updated", customer_id="a", event_id="a2", occurred_at=ago(20),
                  properties={"order_id": "oa", "status": "late"})
        # b: a detractor, whose answer arrives twice (a retry).
        for _ in range(2):
            sdk.track("survey_response", customer_id="b", event_id="b1", occurred_at=ago(5),
                      properties={"survey": "nps", "score": 3, "rates": {"order_id": "ob"}})
        # c: a ticket waiting 10 hours for a first answer (SLA 4 h).
        sdk.track("support_ticket_opened", customer_id="c", event_id="c1", occurred_at=ago(10),
                  properties={"ticket_id": "tc", "channel": "email"})
        # d: a cancellation: churn risk 100.
        sdk.track("subscription_cancelled", customer_id="d", event_id="d1", occurred_at=ago(3))
        # e: all is well.
        sdk.track("order_placed", customer_id="e", event_id="e1", occurred_at=ago(60),
                  properties={"order_id": "oe", "revenue": 5})
        sdk.track("delivery_updated", customer_id="e", event_id="e2", occurred_at=ago(30),
                  properties={"order_id": "oe", "status": "on_time"})
        sdk.track("survey_response", customer_id="e", event_id="e3", occurred_at=ago(2),
                  properties={"survey": "nps", "score": 10})
    expected = {
        "bad_delivery:a2": ("proactive_outreach", "a", ["a2"]),
        "detractor:b1": ("detractor_followup", "b", ["b1"]),
        "first_response_sla:tc": ("first_response_sla", "c", ["c1"]),
        "churn_risk:d:60": ("churn_risk", "d", ["d1"]),
    }

    def stored() -> dict:
        return {r[0]: (r[1], r[2], list(r[3])) for r in clickhouse.execute(
            "SELECT alert_id, kind, customer_id, touchpoints FROM journey_alerts FINAL")}

    wait_for(lambda: stored() == expected, timeout=60, what="the four alerts in ClickHouse")
    reasons = dict(clickhouse.execute("SELECT alert_id, reason FROM journey_alerts FINAL"))
    assert reasons["detractor:b1"] == "NPS 3: follow up with the customer (about order ob)"
    assert reasons["bad_delivery:a2"] == ("delivery of order oa late and no support contact "
                                          "yet: reach out first")
    assert reasons["churn_risk:d:60"] == "churn risk 100: cancelled"
    published = [json.loads(r.value) for r in
                 read_topic(settings, settings.alerts_topic, 4, settle=2)]
    assert sorted(a["alert_id"] for a in published) == sorted(expected)  # each exactly once
    assert clickhouse.execute("SELECT count() FROM journey_alerts")[0][0] == 4
    assert 'journey_alerts_raised_total{kind="detractor_followup"} 1.0' in worker.metrics()
