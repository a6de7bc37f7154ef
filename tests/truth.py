"""The simulator's truth: what ClickHouse must hold for a set of simulated customers.

The simulator knows whose each touchpoint is, so each person's complete journey is one
log in true event-time order, keyed by the customer if they ever identified, else by
their device. Rules themselves are hand-checked in tests/unit/test_journey.py; this
proves the stream (shuffling, duplicates, identity stitching, workers) gets the same.
"""

from __future__ import annotations

from datetime import datetime

from producers.simulator import SimulatedCustomer
from stream_processors.clickhouse.rows import (
    journey_row,
    ticket_rows,
    touchpoint_row,
    transition_rows,
)
from stream_processors.journey import Journey, JourneyLog, add_events, event_of, fold


def journey_key(person: SimulatedCustomer) -> str:
    identified = any(e.customer_id for e in person.events)
    return person.customer_id if identified else f"anon:{person.anonymous_id}"


def true_journeys(people: list[SimulatedCustomer]) -> dict[str, Journey]:
    out = {}
    for person in people:
        key = journey_key(person)
        log = JourneyLog(key=key, customer_id=None if key.startswith("anon:") else key)
        add_events(log, [event_of(e) for e in person.events])
        out[key] = fold(log)
    return out


def true_rows(people: list[SimulatedCustomer], now: datetime) -> dict[str, list[tuple]]:
    """Rows as the pipeline writes them (for the analyst-query tests)."""
    rows: dict[str, list[tuple]] = {"touchpoints": [], "customer_journeys": [],
                                    "journey_transitions": [], "support_tickets": []}
    journeys = true_journeys(people)
    for person in people:
        j = journeys[journey_key(person)]
        rows["customer_journeys"].append(journey_row(j, 1, now))
        rows["journey_transitions"] += transition_rows(j, 0, 1)
        rows["support_tickets"] += ticket_rows(j, 1)
        for e in person.events:
            rows["touchpoints"].append(touchpoint_row(e, j.key, j.customer_id,
                                                      j.stage_at_event[e.event_id], now, 1))
    return rows
