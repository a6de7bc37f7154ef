"""Every Prometheus metric of the worker, in one place, on an injectable registry."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas import CHANNELS
from schemas.properties import DELIVERY_STATUSES, TICKET_CHANNELS

__all__ = ["WorkerMetrics"]

#: Values of the ``rated`` label: what a survey answer rates, and that thing's channel.
RATED = ("none", *(f"ticket:{c}" for c in TICKET_CHANNELS),
         *(f"{kind}:{c}" for kind in ("order", "touchpoint") for c in CHANNELS))

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
#: A stage's batch after bundles are opened: up to JOURNEY_SINK_BATCH_SIZE records,
#: each bundle holding up to hundreds of messages.
_STAGE_BATCH_BUCKETS = (10, 100, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000)
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_RESPONSE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800)
_RESOLUTION_BUCKETS = (900, 3600, 14400, 28800, 86400, 172800, 345600, 604800)


class WorkerMetrics(NamedTuple):
    touchpoints_processed: Counter
    dead_letters: Counter
    late_touchpoints: Counter
    behind_summary_touchpoints: Counter
    summarised_touchpoints: Counter
    cx_window_too_late: Counter
    cx_late_contributions: Counter
    cx_window_revisions: Counter
    cx_watermark_seconds: Gauge
    sink_rows: Counter
    sink_batch_rows: Histogram
    stage_batch_messages: Histogram
    stage_batch_seconds: Histogram
    sink_insert_seconds: Histogram
    sink_failures: Counter
    sink_rejected_rows: Counter
    processing_lag_seconds: Histogram
    alerts_raised: Counter
    consumer_lag: Gauge
    table_keys: Gauge
    state_rebuilds: Counter
    suppressed_touchpoints: Counter
    router_pauses: Counter
    backlog_records: Gauge
    kept_decoded_bytes: Gauge
    cx_survey_responses: Counter
    cx_rated_responses: Counter
    cx_ces_score: Histogram
    cx_orders: Counter
    cx_deliveries: Counter
    cx_tickets_opened: Counter
    cx_first_response_seconds: Histogram
    cx_resolution_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "journey") -> WorkerMetrics:
        metrics = cls._build(registry, prefix)
        metrics._zero_cx_series()
        return metrics

    def _zero_cx_series(self) -> None:
        """Every CX label set exists from the start, at zero.

        Rates over a window then see each series' first increase, and all series of a
        ratio (promoters, detractors, responses) are extrapolated alike, so recording
        rules such as NPS are exact rather than skewed by when a series first appeared.
        """
        for survey, categories in (("nps", ("promoter", "passive", "detractor")),
                                   ("csat", ("satisfied", "unsatisfied")), ("ces", ("answered",))):
            for category in categories:
                for channel in CHANNELS:
                    self.cx_survey_responses.labels(survey, category, channel)
                for rated in RATED:
                    self.cx_rated_responses.labels(survey, category, rated)
        for status in DELIVERY_STATUSES:
            self.cx_deliveries.labels(status)
        for channel in TICKET_CHANNELS:
            self.cx_tickets_opened.labels(channel)

    @classmethod
    def _build(cls, registry: CollectorRegistry, prefix: str) -> WorkerMetrics:
        return cls(
            touchpoints_processed=Counter(
                f"{prefix}_touchpoints_processed", "Valid touchpoints taken in by the worker.",
                ["type"], registry=registry),
            dead_letters=Counter(
                f"{prefix}_dead_letters", "Touchpoints rejected and sent to the dead-letter "
                "topic.", ["reason"], registry=registry),
            late_touchpoints=Counter(
                f"{prefix}_late_touchpoints", "Touchpoints that arrived more than the "
                "lateness bound behind their journey's latest touchpoint.", registry=registry),
            behind_summary_touchpoints=Counter(
                f"{prefix}_touchpoints_behind_summary", "Touchpoints older than their "
                "journey's tail (JOURNEY_TAIL_DAYS, JOURNEY_TAIL_TOUCHPOINTS): counted in "
                "its summary, not placed in its stage history.", registry=registry),
            summarised_touchpoints=Counter(
                f"{prefix}_touchpoints_summarised", "Touchpoints folded out of a journey's "
                "tail into its summary (what keeps a journey's state bounded).",
                registry=registry),
            cx_window_too_late=Counter(
                f"{prefix}_cx_window_too_late", "Metric contributions that missed a CX "
                "window closed longer than the revision horizon ago (longer windows still "
                "open or revisable took them): numbers in cx_metrics lack them.",
                registry=registry),
            cx_late_contributions=Counter(
                f"{prefix}_cx_late_contributions", "Metric contributions that came after "
                "a CX window they belong to closed, within the revision horizon: that "
                "window's row was revised.", registry=registry),
            cx_window_revisions=Counter(
                f"{prefix}_cx_window_revisions", "Rows written for CX windows already "
                "final, revised by late contributions.", registry=registry),
            cx_watermark_seconds=Gauge(
                f"{prefix}_cx_watermark_seconds", "Low watermark of each journey partition "
                "this worker holds, as Unix time: CX windows close behind it.",
                ["partition"], registry=registry),
            sink_rows=Counter(
                f"{prefix}_sink_rows", "Rows inserted into ClickHouse.", ["table"],
                registry=registry),
            sink_batch_rows=Histogram(
                f"{prefix}_sink_batch_rows", "Rows per ClickHouse insert.", ["table"],
                buckets=_BATCH_BUCKETS, registry=registry),
            stage_batch_messages=Histogram(
                f"{prefix}_stage_batch_messages", "Messages in one batch of a stage, bundles "
                "opened: what the batch holds in memory at once.", ["stage"],
                buckets=_STAGE_BATCH_BUCKETS, registry=registry),
            stage_batch_seconds=Histogram(
                f"{prefix}_stage_batch_seconds", "Time a stage takes on one batch: `apply` "
                "holds the event loop (no other stage runs meanwhile); `commit` waits, in "
                "turn, for the rows in ClickHouse (`rows`), the broker's acknowledgement of "
                "the messages (`messages`) and of the changelog records (`state`).",
                ["stage", "step"],
                buckets=_SECONDS_BUCKETS, registry=registry),
            sink_insert_seconds=Histogram(
                f"{prefix}_sink_insert_seconds", "Duration of one ClickHouse insert.", ["table"],
                buckets=_SECONDS_BUCKETS, registry=registry),
            sink_failures=Counter(
                f"{prefix}_sink_failures", "Failed ClickHouse inserts (each is retried).",
                ["table"], registry=registry),
            sink_rejected_rows=Counter(
                f"{prefix}_sink_rejected_rows", "Rows ClickHouse refused as data (sent to the "
                "dead_letters table, reason sink_rejected; the rest of their batch landed).",
                ["table"], registry=registry),
            processing_lag_seconds=Histogram(
                f"{prefix}_processing_lag_seconds", "Now minus occurred_at when the worker "
                "takes a touchpoint in.", buckets=_LAG_BUCKETS, registry=registry),
            alerts_raised=Counter(f"{prefix}_alerts_raised", "Closed-loop alerts raised.",
                                  ["kind"], registry=registry),
            consumer_lag=Gauge(
                f"{prefix}_consumer_lag", "Messages behind the high watermark, per assigned "
                "partition (labels: as many partitions as the topics have).",
                ["topic", "partition"], registry=registry),
            table_keys=Gauge(f"{prefix}_table_keys", "Keys in this worker's part of a table.",
                             ["table"], registry=registry),
            state_rebuilds=Counter(
                f"{prefix}_state_rebuilds", "Table partitions whose local state was "
                "discarded and rebuilt from the changelog (reason: ahead_of_changelog, "
                "unreadable_store).", ["table", "reason"], registry=registry),
            suppressed_touchpoints=Counter(
                f"{prefix}_suppressed_touchpoints", "Touchpoints and links dropped because "
                "they name a forgotten customer or device (`journey forget`), by stage "
                "(by-device, journey).", ["stage"], registry=registry),
            router_pauses=Counter(
                f"{prefix}_router_pauses", "Times the router stopped taking touchpoints "
                "because a stage behind it had more than JOURNEY_ROUTER_MAX_AHEAD records "
                "waiting.", registry=registry),
            backlog_records=Gauge(
                f"{prefix}_backlog_records", "Most records any internal partition of this "
                "worker has that its stage has not taken in yet.", registry=registry),
            kept_decoded_bytes=Gauge(
                f"{prefix}_kept_decoded_bytes", "Bytes, as stored, of the long journeys "
                "(past JOURNEY_COMPRESS_UP_TO_BYTES) the journey stage keeps decoded "
                "between batches; decoded they take about four times as much.",
                registry=registry),
            # CX counts, not ratios: NPS, CSAT and quantiles are recording rules over
            # them (deploy/prometheus/rules), so they aggregate across workers.
            cx_survey_responses=Counter(
                f"{prefix}_cx_survey_responses", "Survey answers: nps promoter/passive/"
                "detractor, csat satisfied/unsatisfied, ces answered.",
                ["survey", "category", "channel"], registry=registry),
            cx_rated_responses=Counter(
                f"{prefix}_cx_rated_responses", "Survey answers by what they rate and its "
                "channel (rated: ticket:<support channel>, order:<channel>, "
                "touchpoint:<channel> or none); counted once the rated thing is known.",
                ["survey", "category", "rated"], registry=registry),
            cx_ces_score=Histogram(
                f"{prefix}_cx_ces_score", "Customer effort scores (1 to 7).",
                buckets=(1, 2, 3, 4, 5, 6, 7), registry=registry),
            cx_orders=Counter(f"{prefix}_cx_orders", "Orders placed.", registry=registry),
            cx_deliveries=Counter(f"{prefix}_cx_deliveries", "Delivery outcomes.", ["status"],
                                  registry=registry),
            cx_tickets_opened=Counter(f"{prefix}_cx_tickets_opened", "Support tickets opened.",
                                      ["channel"], registry=registry),
            cx_first_response_seconds=Histogram(
                f"{prefix}_cx_first_response_seconds", "Ticket opened to first agent reply.",
                buckets=_RESPONSE_BUCKETS, registry=registry),
            cx_resolution_seconds=Histogram(
                f"{prefix}_cx_resolution_seconds", "Ticket opened to resolved.",
                buckets=_RESOLUTION_BUCKETS, registry=registry),
        )
