"""The journey stage alone: time per touchpoint and stored bytes as one journey grows.

    python -m tests.benchmarks.journey_state            # up to 100,000 touchpoints
    python -m tests.benchmarks.journey_state --smoke    # up to 1,000

One key (a bot, or a very long customer) takes touchpoints in batches of 1 and of 10
through the real ``JourneyUpdater`` (decode, fold, rows, contributions, encode). The
time per touchpoint at each size is compared with a 10-touchpoint journey's: a bounded
journey (summary plus tail) costs about the same however long it is. (The contributions
to CX windows are made, then dropped: the windows' cost is not the journey's.) Prints
numbers, asserts none (tests/unit/test_bounded_journey.py checks the bounds by
counting). The garbage collector is tuned as in the worker.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import msgspec
from prometheus_client import CollectorRegistry

from schemas.partitioning import partition_for
from schemas.settings import Settings
from stream_processors.commands import Touch
from stream_processors.effects import Message
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages import JourneyUpdater
from stream_processors.worker import tune_gc

P = 8
T0 = datetime(2026, 5, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=400)
KINDS = [("page_view", {}), ("product_viewed", {"product_id": "p"}), ("cart_updated", {}),
         ("page_view", {}), ("order_placed", None), ("survey_response", None)]


def touchpoint(n: int, customer: str = "bot") -> bytes:
    kind, props = KINDS[n % len(KINDS)]
    if kind == "order_placed":
        props = {"order_id": f"o{n}", "revenue": 1}
    elif kind == "survey_response":
        props = {"survey": "nps", "score": n % 11}
    return msgspec.json.encode({"event_id": f"{customer}-{n:08d}", "type": kind,
                                "customer_id": customer,
                                "occurred_at": (T0 + timedelta(seconds=30 * n)).isoformat(),
                                "properties": props})


class _Contributions:
    """Takes the CX contributions a batch makes and drops them: what the windows do with
    them is their own cost (it depends on time and windows, not on a journey's length)."""

    def process(self, *args: object) -> None:
        return None


class Stage:
    """The journey stage with its table; ``send`` returns the time an update took."""

    def __init__(self) -> None:
        metrics = WorkerMetrics.create(CollectorRegistry())
        self.stage = JourneyUpdater(metrics, P, _Contributions(),  # type: ignore[arg-type]
                                    lateness=timedelta(hours=1),
                                    first_response_sla=timedelta(hours=4),
                                    inactive_after=None, churn_risk_alert=60)
        self.journeys: dict[bytes, bytes] = {}
        self.offset = 0

    def send(self, customer: str, first: int, count: int) -> float:
        key = customer.encode()
        tps = [touchpoint(i, customer) for i in range(first, first + count)]
        message = Message(partition_for(key, P), self.offset, key, Touch(customer, tps))
        self.offset += 1
        started = time.perf_counter()
        self.stage.update([message], self.journeys, {}, NOW, self.offset)
        return time.perf_counter() - started


def ten_touchpoint_journeys(per_batch: int, journeys: int = 200) -> float:
    """µs per touchpoint of journeys that get 10 touchpoints each."""
    stage = Stage()
    took = sum(stage.send(f"c{k}", n, per_batch)
               for k in range(journeys) for n in range(0, 10, per_batch))
    return took / (10 * journeys) * 1e6


def grow(sizes: list[int], per_batch: int) -> list[tuple[int, float, int]]:
    """(journey size, µs per touchpoint over its next 200, stored bytes)."""
    stage, n, out = Stage(), 0, []
    for size in sizes:
        while n < size:
            stage.send("bot", n, per_batch)
            n += per_batch
        took = 0.0
        for _ in range(200 // per_batch):
            took += stage.send("bot", n, per_batch)
            n += per_batch
        out.append((size, took / 200 * 1e6, len(stage.journeys[b"bot"])))
    return out


def main(argv: list[str] | None = None) -> int:
    tune_gc(Settings().gc_threshold)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="up to 1,000 touchpoints")
    args = p.parse_args(argv)
    sizes = [100, 1_000] if args.smoke else [100, 1_000, 10_000, 100_000]
    print("| journey's touchpoints | batch | µs per touchpoint | x a 10-touchpoint "
          "journey's | stored bytes |\n| --- | --- | --- | --- | --- |")
    for per_batch in (1, 10):
        base = ten_touchpoint_journeys(per_batch)
        print(f"| 10 | {per_batch} | {base:.1f} | 1.00 | |", flush=True)
        for size, micros, stored in grow(sizes, per_batch):
            print(f"| {size:,} | {per_batch} | {micros:.1f} | {micros / base:.2f} | "
                  f"{stored:,} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
