"""The order of a batch's inserts (the sink's own scheduling; tests/integration has the
sink against a real ClickHouse): the tables go side by side, and the rows that
acknowledge the others (``privacy_acks``) only once those are in."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from stream_processors.clickhouse.sink import INSERT_ROWS, ClickHouseSink
from stream_processors.metrics import WorkerMetrics


class _Timed(ClickHouseSink):
    """Each insert takes a table's own time; when each began and ended is recorded."""

    def __init__(self, seconds: dict[str, float]) -> None:
        super().__init__("clickhouse://nowhere:9/x", "x", WorkerMetrics.create(CollectorRegistry()))
        self.seconds = seconds
        self.spans: dict[str, tuple[float, float]] = {}

    async def _run(self, table: str, rows: Sequence[tuple]) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(self.seconds[table])
        self.spans[table] = (began, loop.time())


def test_a_batchs_tables_are_inserted_side_by_side_and_acknowledgements_last() -> None:
    sink = _Timed({"touchpoints": 0.3, "customer_journeys": 0.2, "journey_transitions": 0.1,
                   "privacy_acks": 0.01})
    batch = {"privacy_acks": [("r",)], "touchpoints": [("t",)],  # the ack queued first
             "customer_journeys": [("j",)], "journey_transitions": [("x",)],
             "support_tickets": []}

    asyncio.run(sink.write(batch))
    others = [sink.spans[t] for t in ("touchpoints", "customer_journeys", "journey_transitions")]
    # Side by side: every one began before any ended (one after the other, the shortest
    # would have ended before the next began).
    assert max(began for began, _ in others) < min(ended for _, ended in others)
    # The acknowledgement began once every other row was in.
    assert sink.spans["privacy_acks"][0] >= max(ended for _, ended in others)
    assert "support_tickets" not in sink.spans  # no rows, no insert


class _Recorded(ClickHouseSink):
    """Each insert's rows, in the order they were sent."""

    def __init__(self) -> None:
        super().__init__("clickhouse://nowhere:9/x", "x", WorkerMetrics.create(CollectorRegistry()))
        self.inserts: list[list[tuple]] = []

    async def _run(self, table: str, rows: Sequence[tuple]) -> None:
        self.inserts.append(list(rows))


def test_a_tables_rows_beyond_one_inserts_worth_go_in_several_in_order() -> None:
    sink = _Recorded()
    rows = [(n,) for n in range(2 * INSERT_ROWS + 5)]
    asyncio.run(sink.write({"cx_metrics": rows}))
    assert [len(chunk) for chunk in sink.inserts] == [INSERT_ROWS, INSERT_ROWS, 5]
    assert [row for chunk in sink.inserts for row in chunk] == rows
