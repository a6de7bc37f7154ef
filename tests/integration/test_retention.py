"""State past its retention leaves the worker, through the crash-safe path, and a device
that comes back starts afresh, with rows that outrank those of its earlier self."""

from __future__ import annotations

import re
from datetime import timedelta

from producers import JourneyClient
from schemas import utcnow
from tests.conftest import wait_for

RETENTION = 12.0  # seconds, for every kind of state that has one


def table_keys(metrics: str) -> dict[str, float]:
    """``journey_table_keys`` by table, from the worker's /metrics."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^journey_table_keys\{table="([^"]+)"\} (\S+)$', metrics, re.MULTILINE)}


def test_anonymous_merged_and_device_state_expires_and_a_returning_device_starts_anew(
        settings, clickhouse, start_worker, tmp_path) -> None:
    days = RETENTION / 86400
    worker = start_worker(anonymous_retention_days=days, merged_retention_days=days,
                          device_retention_days=days, churn_sweep_seconds=1.0,
                          churn_inactive_days=0.0)
    t0 = utcnow() - timedelta(minutes=5)

    def send(*calls: tuple[str, dict]) -> None:
        with JourneyClient(settings.bootstrap_servers, settings.touchpoints_topic,
                           spool_dir=tmp_path / "spool") as sdk:
            for type_, kwargs in calls:
                sdk.track(type_, **kwargs)

    send(("page_view", {"anonymous_id": "d-1", "event_id": "v1", "occurred_at": t0}),
         ("page_view", {"anonymous_id": "d-1", "event_id": "v2", "occurred_at": t0}),
         ("page_view", {"anonymous_id": "d-2", "event_id": "v3", "occurred_at": t0}),
         ("page_view", {"customer_id": "c-3", "event_id": "v4", "occurred_at": t0}))

    def journeys() -> dict[str, tuple]:
        return {r[0]: r[1:] for r in clickhouse.execute(
            "SELECT journey_key, merged_into, touchpoints FROM customer_journeys FINAL")}

    wait_for(lambda: journeys() == {"anon:d-1": ("", 2), "anon:d-2": ("", 1), "c-3": ("", 1)},
             timeout=60, what="two anonymous journeys and a customer's")
    # d-2 logs in (well within its retention): its journey merges into c-2.
    send(("identify", {"anonymous_id": "d-2", "customer_id": "c-2", "event_id": "i1",
                       "occurred_at": t0 + timedelta(seconds=1)}))
    want = {"anon:d-1": ("", 2), "anon:d-2": ("c-2", 0), "c-2": ("", 2), "c-3": ("", 1)}
    try:
        wait_for(lambda: journeys() == want, timeout=60, what="the journeys, d-2 merged")
    except BaseException:
        print("journeys:", journeys())
        raise
    # The anonymous journey, the merged marker and the device link go; customers stay.
    wait_for(lambda: table_keys(worker.metrics()).get("journeys") == 2
             and table_keys(worker.metrics()).get("devices") == 0, timeout=60,
             what="anonymous and merged journeys and device links to expire")

    # Both devices come back, anonymous: each starts a journey of its own again.
    send(("page_view", {"anonymous_id": "d-1", "event_id": "v5", "occurred_at": utcnow()}),
         ("page_view", {"anonymous_id": "d-2", "event_id": "v6", "occurred_at": utcnow()}))
    wait_for(lambda: journeys() == {"anon:d-1": ("", 1), "anon:d-2": ("", 1),
                                    "c-2": ("", 2), "c-3": ("", 1)},
             timeout=60, what="the returning devices' new journeys to outrank the old rows")
    # (A batch's rows land table by table: its touchpoints may follow the journeys.)
    wait_for(lambda: dict(clickhouse.execute(
        "SELECT event_id, journey_key FROM touchpoints FINAL WHERE event_id IN ('v5', 'v6')"))
        == {"v5": "anon:d-1", "v6": "anon:d-2"}, timeout=30,
        what="the returning devices' touchpoints under their new journeys")
