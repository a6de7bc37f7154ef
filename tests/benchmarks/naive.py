"""The naive baseline: a plain Faust agent doing one table update per event.

Run as ``python -m tests.benchmarks.naive <topic> <expected>`` with the JOURNEY_*
environment of the run. It JSON-decodes each touchpoint, increments a per-customer
counter in a Faust table (one changelog write per event), and prints ``FIRST <t>`` at
its first event and ``DONE <t>`` at the ``expected``-th, Unix times, for the harness.
"""

from __future__ import annotations

import json
import sys
import time

from faust.types import StreamT

from schemas.settings import Settings
from stream_processors.app import create_app

TOPIC, EXPECTED = sys.argv[1], int(sys.argv[2])
settings = Settings.from_env()
app = create_app(settings)
topic = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
counts = app.Table("naive-counts", default=int, partitions=settings.topic_partitions)
seen = 0


@app.agent(topic)
async def count(stream: StreamT) -> None:
    global seen
    async for value in stream:
        data = json.loads(value)
        counts[data.get("customer_id") or data["anonymous_id"]] += 1
        seen += 1
        if seen == 1:
            print(f"FIRST {time.time()}", flush=True)
        if seen == EXPECTED:
            print(f"DONE {time.time()}", flush=True)


if __name__ == "__main__":
    sys.argv = ["naive", "worker", "--loglevel", "warn", "--web-port",
                str(settings.worker_web_port)]
    app.main()
