"""The naive baseline: a plain Faust agent doing one table update per event.

Run as ``python -m tests.benchmarks.naive <topic> <expected> [bare]`` with the
JOURNEY_* environment of the run. It JSON-decodes each touchpoint, increments a
per-customer counter in a Faust table (one changelog write per event), and prints
``FIRST <t>`` at its first event and ``DONE <t>`` at the ``expected``-th, Unix times,
for the harness.

``bare``: Faust's own floor instead: batches of events (``take_events``), each
JSON-decoded, no table. What Faust costs before any work is done.
"""

from __future__ import annotations

import json
import sys
import time

from faust.types import StreamT

from schemas.settings import Settings
from stream_processors.app import create_app

TOPIC, EXPECTED = sys.argv[1], int(sys.argv[2])
BARE = sys.argv[3:] == ["bare"]
settings = Settings.from_env()
app = create_app(settings)
topic = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
counts = app.Table("naive-counts", default=int, partitions=settings.topic_partitions)
seen = 0


def _seen(n: int) -> None:
    global seen
    if seen == 0:
        print(f"FIRST {time.time()}", flush=True)
    if seen < EXPECTED <= seen + n:
        print(f"DONE {time.time()}", flush=True)
    seen += n


@app.agent(topic)
async def count(stream: StreamT) -> None:
    if BARE:
        async for events in stream.take_events(2000, within=0.1):
            for event in events:
                json.loads(event.value)
            _seen(len(events))
        return
    async for value in stream:
        data = json.loads(value)
        counts[data.get("customer_id") or data["anonymous_id"]] += 1
        _seen(1)


if __name__ == "__main__":
    sys.argv = ["naive", "worker", "--loglevel", "warn", "--web-port",
                str(settings.worker_web_port)]
    app.main()
