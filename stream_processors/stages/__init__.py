"""The topology's stages: what each hop does to a batch, with no Faust and no I/O.

Each stage is a class that takes a batch of decoded :class:`~stream_processors.effects.Message`
and the tables it needs as plain key-value stores, and returns an
:class:`~stream_processors.effects.Output` (rows, messages, the order to save its
tables in). The topology (stream_processors/topology.py) feeds it from Faust and
commits its output; tests/unit/test_stages.py drives each one with plain dicts.

State a stage keeps in memory (caches, clocks, what it last published) lives per
partition in a :class:`~stream_processors.stages.per_partition.PerPartition`: created
when the partition is assigned, dropped when it is revoked.

- :mod:`.routing`: validate touchpoints and route them by device or customer;
  each source partition's event-time progress, for watermarks.
- :mod:`.identity`: device → customer links; the first identify merges the past.
- :mod:`.journeys`: each journey's log, its rows, alerts and CX contributions.
- :mod:`.partials`: a journey partition's part of the CX metric windows.
- :mod:`.aggregator`: the sum of the partitions' parts, into cx_metrics.
- :mod:`.rejects`: the collector's rejects, from the dead-letter topic into the table.
"""

from stream_processors.stages.aggregator import Aggregator
from stream_processors.stages.identity import IdentityResolver
from stream_processors.stages.journeys import JourneyUpdater
from stream_processors.stages.partials import PartitionWindows
from stream_processors.stages.rejects import CollectorRejects
from stream_processors.stages.routing import Router

__all__ = ["Aggregator", "CollectorRejects", "IdentityResolver", "JourneyUpdater",
           "PartitionWindows", "Router"]
