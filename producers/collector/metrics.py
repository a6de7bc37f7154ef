"""Every Prometheus metric of the collector, on an injectable registry."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["CollectorMetrics"]


class CollectorMetrics(NamedTuple):
    requests: Counter
    events: Counter
    publish_seconds: Histogram
    request_bytes: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "journey_collector"
               ) -> CollectorMetrics:
        return cls(
            requests=Counter(f"{prefix}_requests", "HTTP requests by endpoint and status.",
                             ["endpoint", "status"], registry=registry),
            events=Counter(f"{prefix}_events", "Events received, by outcome and reason "
                           "(reason is empty for accepted events).", ["outcome", "reason"],
                           registry=registry),
            publish_seconds=Histogram(
                f"{prefix}_publish_seconds", "Time to publish one request's events to Kafka.",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=registry),
            request_bytes=Histogram(
                f"{prefix}_request_bytes", "Request body sizes.",
                buckets=(256, 1024, 4096, 16384, 65536, 262144, 512000), registry=registry),
        )
