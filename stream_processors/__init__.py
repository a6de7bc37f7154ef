"""The Faust worker: journey state, ClickHouse sink, worker metrics."""

from stream_processors.journey import JourneyState, apply_touchpoint

__all__ = ["JourneyState", "apply_touchpoint"]
