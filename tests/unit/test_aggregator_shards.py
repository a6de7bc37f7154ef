"""The aggregator's table entries stay bounded however far its watermark lags: one
entry grew past Kafka's 1 MB message limit and crashed the worker before sharding."""

from stream_processors.stages.aggregator import SHARD_SECONDS, shard
from stream_processors.windows import WINDOWS


def test_an_entry_holds_at_most_360_windows_of_one_spec() -> None:
    for spec in WINDOWS:
        hop = int(spec.hop.total_seconds())
        starts = range(1_777_000_000 // hop * hop, 1_777_000_000 + 40 * 86400, hop)
        per_shard: dict[str, int] = {}
        for start in starts:
            span = shard(f"{spec.name}|{start}")
            per_shard[span] = per_shard.get(span, 0) + 1
        assert max(per_shard.values()) <= 360, spec.name
        assert SHARD_SECONDS[spec.name] // hop <= 360
        assert all(span.startswith(f"{spec.name}@") for span in per_shard)
