"""The HTTP collector: Segment-compatible ingestion for websites and third-party SDKs."""

from producers.collector.app import Collector, run_collector

__all__ = ["Collector", "run_collector"]
