"""A broker outage is a few lines in the worker's log, not one per retry."""

from __future__ import annotations

import io
import logging

from stream_processors.logs import RepeatFilter


def test_repeats_are_held_back_counted_and_connection_failures_name_the_setting() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RepeatFilter(("aiokafka",), every=10, hint="check JOURNEY_X"))
    logger = logging.getLogger("aiokafka.conn.test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for attempt in range(50):  # one outage: 50 retries within the window
            logger.error("Unable connect to node with id %s: %s", 1, f"refused #{attempt}")
        logger.warning("Heartbeat failed: 100% late")  # another kind: through, once
        logger.warning("Heartbeat failed: 100% late")
        logging.getLogger("aiokafka.conn.test").info("reconnected")  # below WARNING
        logging.getLogger("clickhouse").warning("x")  # not a noisy logger
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines == ["Unable connect to node with id 1: refused #0 [check JOURNEY_X]",
                     "Heartbeat failed: 100% late", "reconnected"]


def test_the_next_window_says_how_many_were_held_back() -> None:
    repeat = RepeatFilter(("kafka",), every=1, hint="")
    records = [logging.LogRecord("kafka.client", logging.WARNING, __file__, 1,
                                 "Node %d not ready", (i,), None) for i in range(4)]
    assert [repeat.filter(r) for r in records] == [True, False, False, False]
    repeat._limiter.storage.reset()  # the window ends
    later = logging.LogRecord("kafka.client", logging.WARNING, __file__, 1, "Node %d not ready",
                              (9,), None)
    assert repeat.filter(later) and later.getMessage() == (
        "Node 9 not ready [3 more like it not logged]")
