"""The Faust worker: identity stitching, journey state, ClickHouse sink, worker metrics."""

from stream_processors.journey import Journey, JourneyLog, fold

__all__ = ["Journey", "JourneyLog", "fold"]
