"""Every Prometheus metric of the worker, in one place, on an injectable registry."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["WorkerMetrics"]

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics(NamedTuple):
    touchpoints_processed: Counter
    dead_letters: Counter
    late_touchpoints: Counter
    sink_rows: Counter
    sink_batch_rows: Histogram
    sink_insert_seconds: Histogram
    sink_failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "journey") -> WorkerMetrics:
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
            sink_rows=Counter(
                f"{prefix}_sink_rows", "Rows inserted into ClickHouse.", ["table"],
                registry=registry),
            sink_batch_rows=Histogram(
                f"{prefix}_sink_batch_rows", "Rows per ClickHouse insert.", ["table"],
                buckets=_BATCH_BUCKETS, registry=registry),
            sink_insert_seconds=Histogram(
                f"{prefix}_sink_insert_seconds", "Duration of one ClickHouse insert.", ["table"],
                buckets=_SECONDS_BUCKETS, registry=registry),
            sink_failures=Counter(
                f"{prefix}_sink_failures", "Failed ClickHouse inserts (each is retried).",
                ["table"], registry=registry),
        )
