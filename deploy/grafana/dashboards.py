"""Grafana dashboards as code (grafanalib): `python -m deploy.grafana.dashboards` writes
them to ``deploy/grafana/dashboards/*.json``, which docker-compose provisions.

Two dashboards, for the two kinds of users of the service:

- **Pipeline health** (ops): ingest, consumer and processing lag, ClickHouse sink
  retries and refused rows, dead letters, the collector's status codes and latency,
  suppressed events and state rebuilds; from the worker's and the collector's
  Prometheus metrics.
- **Customer experience** (CX teams): NPS, CSAT, CES, first-response p90, late
  deliveries, contact rate and alerts from the recording rules
  (deploy/prometheus/rules), and the exact event-time windows and service recovery from
  ClickHouse (``cx_metrics``, ``customer_journeys``) through Grafana's ClickHouse plugin.

The checked-in JSON is what the tests read: tests/unit/test_grafana.py checks it equals
this rendering, tests/integration/test_grafana.py runs every query in it against a real
Prometheus scraping a real worker and collector, and against ClickHouse.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attr
from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    Stat,
    Table,
    Target,
    Time,
    TimeSeries,
)

__all__ = ["CLICKHOUSE", "DASHBOARDS", "PROMETHEUS", "ClickHouseSQL", "render", "write"]

OUT = Path(__file__).resolve().parent / "dashboards"
#: Datasource uids, as deploy/grafana/provisioning/datasources/journey.yml names them.
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}


@attr.s
class ClickHouseSQL:
    """A query of the ClickHouse plugin (grafanalib knows no such target). ``rawSql``
    may use the plugin's ``$__timeFilter(column)``; tests replace it with a range."""

    rawSql: str = attr.ib()
    refId: str = attr.ib(default="A")
    table: bool = attr.ib(default=False)

    def to_json_data(self) -> dict[str, Any]:
        return {"datasource": CLICKHOUSE, "editorType": "sql", "queryType": "sql",
                "format": 1 if self.table else 0, "rawSql": self.rawSql, "refId": self.refId}


def _prom(expr: str, legend: str = "", ref: str = "A") -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=PROMETHEUS)


def _series(title: str, targets: list[Any], at: tuple[int, int], *, unit: str = "short",
            description: str = "", w: int = 12, h: int = 8) -> TimeSeries:
    source = CLICKHOUSE if isinstance(targets[0], ClickHouseSQL) else PROMETHEUS
    return TimeSeries(title=title, dataSource=source, targets=targets, unit=unit,
                      description=description, gridPos=GridPos(h=h, w=w, x=at[0], y=at[1]))


def _stat(title: str, targets: list[Any], at: tuple[int, int], *, unit: str = "short",
          description: str = "", w: int = 6, h: int = 5, decimals: int = 1) -> Stat:
    source = CLICKHOUSE if isinstance(targets[0], ClickHouseSQL) else PROMETHEUS
    return Stat(title=title, dataSource=source, targets=targets, format=unit,
                description=description, decimals=decimals, reduceCalc="lastNotNull",
                gridPos=GridPos(h=h, w=w, x=at[0], y=at[1]))


def pipeline_health() -> Dashboard:
    return Dashboard(
        title="journey: pipeline health", uid="journey-pipeline", timezone="utc",
        tags=["journey"], refresh="30s", time=Time("now-6h", "now"),
        description="Is every touchpoint getting through, and how late?",
        panels=[
            _series("Ingest rate", [
                _prom("sum(rate(journey_touchpoints_processed_total[1m]))", "worker", "A"),
                _prom('sum by (outcome) (rate(journey_collector_events_total[1m]))',
                      "collector {{outcome}}", "B")], (0, 0), unit="ops",
                description="Touchpoints taken in by the workers, and events the collector "
                "accepted, rejected or suppressed, per second."),
            _series("Consumer lag by topic", [
                _prom("sum by (topic) (journey_consumer_lag)", "{{topic}}")], (12, 0),
                description="Messages behind the log end, summed over partitions."),
            _series("Processing lag p99 (occurred → processed)", [
                _prom("journey:processing_lag_seconds:p99_5m", "p99")], (0, 8), unit="s"),
            _series("ClickHouse inserts: rows, failed (retried) and refused", [
                _prom("sum by (table) (rate(journey_sink_rows_total[1m]))", "{{table}} rows",
                      "A"),
                _prom("sum by (table) (rate(journey_sink_failures_total[5m]))",
                      "{{table}} failures", "B"),
                _prom("sum by (table) (rate(journey_sink_rejected_rows_total[5m]))",
                      "{{table}} refused", "C")], (12, 8), unit="ops"),
            _series("Dead letters by reason", [
                _prom("sum by (reason) (rate(journey_dead_letters_total[5m]))", "{{reason}}")],
                (0, 16), unit="ops"),
            _series("Collector responses by status", [
                _prom("sum by (status) (rate(journey_collector_requests_total[1m]))",
                      "{{status}}")], (12, 16), unit="reqps"),
            _series("Collector publish latency", [
                _prom("histogram_quantile(0.5, sum by (le) "
                      "(rate(journey_collector_publish_seconds_bucket[5m])))", "p50", "A"),
                _prom("histogram_quantile(0.99, sum by (le) "
                      "(rate(journey_collector_publish_seconds_bucket[5m])))", "p99", "B")],
                (0, 24), unit="s"),
            _series("ClickHouse insert latency p99", [
                _prom("histogram_quantile(0.99, sum by (le, table) "
                      "(rate(journey_sink_insert_seconds_bucket[5m])))", "{{table}}")],
                (12, 24), unit="s"),
            _stat("State rebuilds (24h)", [
                _prom("sum(increase(journey_state_rebuilds_total[1d]))")], (0, 32),
                decimals=0, description="Table partitions rebuilt from their changelog."),
            _stat("Suppressed touchpoints (24h)", [
                _prom("sum(increase(journey_suppressed_touchpoints_total[1d]))")], (6, 32),
                decimals=0, description="Dropped as naming a forgotten customer or device."),
            _stat("Worker table keys", [_prom("sum(journey_table_keys)")], (12, 32),
                  decimals=0),
            _stat("Workers up", [_prom('sum(up{job="journey-worker"})')], (18, 32),
                  decimals=0),
            _series("Late data: CX windows revised, and contributions past the horizon", [
                _prom("sum(rate(journey_cx_late_contributions_total[5m]))",
                      "late contributions (revised a closed window)", "A"),
                _prom("sum(rate(journey_cx_window_revisions_total[5m]))", "revision rows",
                      "B"),
                _prom("sum(rate(journey_cx_window_too_late_total[5m]))",
                      "past the revision horizon (in cx_missed)", "C")], (0, 37), unit="ops",
                w=24, description="Data that came after its CX window closed. Within "
                "JOURNEY_CX_REVISION_DAYS it revises the window; later, the window lacks it."),
            _series("Where a stage's batches wait (mean seconds per batch)", [
                _prom('sum by (stage, step) (rate(journey_stage_batch_seconds_sum'
                      '{step!="commit"}[5m])) / sum by (stage, step) '
                      '(rate(journey_stage_batch_seconds_count{step!="commit"}[5m]))',
                      "{{stage}} {{step}}")], (0, 45), unit="s", w=24,
                description="apply: the event loop held (no other stage runs); rows: "
                "ClickHouse's inserts; messages and state: the broker's acknowledgements of "
                "the batch's messages, then of its changelog records. Touchpoints become "
                "visible after update_journey's rows."),
            _series("Backpressure: records waiting for a stage, and router pauses", [
                _prom("max(journey_backlog_records)", "most records waiting (a worker)", "A"),
                _prom("sum(rate(journey_router_pauses_total[5m])) * 60",
                      "router pauses per minute", "B")], (0, 53), w=24,
                description="The router stops taking touchpoints while an internal partition "
                "has more than JOURNEY_ROUTER_MAX_AHEAD records (bundles) waiting for its "
                "stage, so a backlog goes through the stages together. Pauses on a backlog "
                "are expected; waiting records that stay high mean a stage is stuck."),
        ],
    ).auto_panel_ids()


def _window_sql(metric: str, window: str = "24h") -> ClickHouseSQL:
    return ClickHouseSQL(
        "SELECT window_start AS time, value AS " + metric + " FROM cx_metrics FINAL\n"
        f"WHERE metric = '{metric}' AND dimension = 'all' AND window = '{window}'\n"
        "  AND $__timeFilter(window_start)\nORDER BY time")


def customer_experience() -> Dashboard:
    return Dashboard(
        title="journey: customer experience", uid="journey-cx", timezone="utc",
        tags=["journey"], refresh="1m", time=Time("now-7d", "now"),
        description="NPS, CSAT, effort, support speed and deliveries: live from the "
        "workers' counters, exact by event time from ClickHouse.",
        panels=[
            _stat("NPS (1h)", [_prom("journey:nps:score_1h")], (0, 0)),
            _stat("CSAT % (1h)", [_prom("journey:csat:percent_1h")], (6, 0), unit="percent"),
            _stat("CES (1h, 1-7)", [_prom("journey:ces:mean_1h")], (12, 0)),
            _stat("First response p90 (1h)", [_prom("journey:first_response_seconds:p90_1h")],
                  (18, 0), unit="s"),
            _series("NPS and CSAT (live, counters)", [
                _prom("journey:nps:score_1d", "NPS 1d", "A"),
                _prom("journey:csat:percent_by_rated_1d", "CSAT {{rated}}", "B")], (0, 5)),
            _series("Late, damaged or failed deliveries", [
                _prom("journey:deliveries_late:ratio_1h", "share of deliveries")], (12, 5),
                unit="percentunit"),
            _series("Support contacts per 100 orders", [
                _prom("journey:contact_rate:per_100_orders_1d", "per 100 orders")], (0, 13)),
            _series("Alerts raised by kind", [
                _prom("sum by (kind) (increase(journey_alerts_raised_total[1h]))",
                      "{{kind}}")], (12, 13)),
            _series("NPS by event-time day (ClickHouse, exact)", [_window_sql("nps")],
                    (0, 21), description="cx_metrics: the 24h windows, the latest row of "
                    "each (final = 1 once closed)."),
            _series("CSAT % by event-time day (ClickHouse)", [_window_sql("csat")], (12, 21),
                    unit="percent"),
            _series("On-time deliveries % by day (ClickHouse)", [_window_sql("on_time_rate")],
                    (0, 29), unit="percent"),
            _series("CES by day (ClickHouse)", [_window_sql("ces")], (12, 29)),
            Table(title="Service recovery (ClickHouse)", dataSource=CLICKHOUSE,
                  gridPos=GridPos(h=6, w=24, x=0, y=37), targets=[ClickHouseSQL(
                      "SELECT countIf(recovery IN ('pending', 'recovered', 'lost')) AS "
                      "contacted_after_bad_touchpoint,\n"
                      "  countIf(recovery = 'recovered') AS recovered,\n"
                      "  countIf(recovery = 'lost') AS lost,\n"
                      "  round(100 * countIf(recovery = 'recovered') / greatest(countIf("
                      "recovery IN ('recovered', 'lost')), 1), 1) AS recovery_rate_pct\n"
                      "FROM customer_journeys FINAL\nWHERE merged_into = ''", table=True)]),
        ],
    ).auto_panel_ids()


DASHBOARDS = {"pipeline-health": pipeline_health, "customer-experience": customer_experience}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name]().to_json_data(), cls=DashboardEncoder, indent=2,
                      sort_keys=True) + "\n"


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = out / f"{name}.json"
        path.write_text(render(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(f"wrote {path}")
