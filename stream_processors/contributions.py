"""What a touchpoint adds to the windowed CX metrics (pure).

Ratios only: NPS, CSAT, CES, on-time and damaged delivery rates, and the contact rate
(tickets opened per 100 orders placed: a ticket adds to the numerator only, an order to
the denominator only). They are exact whatever the arrival order and sum across
partitions. Durations (first response,
resolution) depend on which agent message comes first; they stay with the Prometheus
histograms and SQL over ``support_tickets``.

Survey answers count under three dimensions: ``all``, ``channel=<the answer's
channel>`` and ``rated=<what it rates>:<that thing's channel>`` (a ticket's support
channel, the channel an order was placed through, a touchpoint's channel). The rated
thing may arrive after the answer; the answer's ``rated`` part then waits in the
journey (``pending_rated``) until it does, so the result does not depend on arrival
order as long as it comes before the window closes.

Orders, ticket opens and delivery statuses count once per natural key
(:func:`stream_processors.journey.natural_key`), at the earliest copy's time, as the
fold and the SQL audit count them: a repeat adds nothing, and an earlier copy that
arrives after a later one takes the later one's contribution back (``samples=-1``).
"""

from __future__ import annotations

from typing import Any, Final

from stream_processors.cx_metrics import csat_satisfied, nps_category
from stream_processors.journey import Journey, JourneyEvent, JourneyLog, natural_key
from stream_processors.windows import Contribution

__all__ = ["SCALES", "answer_category", "contributions_for", "contributions_of_new",
           "rated_dimension", "resolve_pending"]

#: Multiplier of each metric's ratio: percentages, except CES which is a mean score.
SCALES: Final = {"nps": 100.0, "csat": 100.0, "ces": 1.0, "on_time_rate": 100.0,
                 "damaged_rate": 100.0, "contact_rate": 100.0}
_NPS_POINTS: Final = {"promoter": 1.0, "passive": 0.0, "detractor": -1.0}


def contributions_for(e: JourneyEvent, j: Journey, log: JourneyLog) -> list[Contribution]:
    """The contributions of a touchpoint new to its journey.

    A survey answer whose rated thing is not in the journey yet is added to
    ``log.pending_rated`` and its ``rated`` contribution comes from
    :func:`resolve_pending` later.
    """
    p = e.properties
    if e.type == "survey_response":
        survey = p["survey"]
        value = _survey_value(survey, int(p["score"]))
        out = [Contribution(survey, "all", e.at, value),
               Contribution(survey, f"channel={e.channel}", e.at, value)]
        rated = rated_dimension(p, j, log)
        if rated is None:
            log.pending_rated.append(e.event_id)
        else:
            out.append(Contribution(survey, rated, e.at, value))
        return out
    if e.type == "delivery_updated" and p["status"] in ("on_time", "late", "damaged"):
        return [Contribution("on_time_rate", "all", e.at, float(p["status"] == "on_time")),
                Contribution("damaged_rate", "all", e.at, float(p["status"] == "damaged"))]
    if e.type == "order_placed":
        return [Contribution("contact_rate", "all", e.at, 0.0, 1.0)]
    if e.type == "support_ticket_opened":
        return [Contribution("contact_rate", "all", e.at, 1.0, 0.0)]
    return []


def contributions_of_new(e: JourneyEvent, j: Journey, log: JourneyLog,
                         new: set[str]) -> tuple[list[Contribution], bool]:
    """What a touchpoint new to its journey contributes, and whether it states a new
    fact (for counters that cannot take anything back).

    ``new``: the ids of every touchpoint new to the journey in this batch; the others
    were counted before.
    """
    key = natural_key(e)
    if key is None:
        return contributions_for(e, j, log), True
    ids = j.natural.get(key) or [e.event_id]
    if ids[0] != e.event_id:  # a repeat: its earliest copy counts
        return [], False
    counted = next((i for i in ids[1:] if i not in new), None)
    if counted is None:
        return contributions_for(e, j, log), True
    later = next((x for x in log.events if x.event_id == counted), None)
    if later is None:  # the counted copy left the tail: it keeps counting, this repeats
        return [], False
    return [*(_taken_back(c) for c in contributions_for(later, j, log)),
            *contributions_for(e, j, log)], False


def _taken_back(c: Contribution) -> Contribution:
    return Contribution(c.metric, c.dimension, c.at, -c.numerator, -c.denominator, -1)


def resolve_pending(j: Journey, log: JourneyLog) -> list[Contribution]:
    """``rated`` contributions of answers whose rated thing has arrived since."""
    if not log.pending_rated:
        return []
    waiting = set(log.pending_rated)
    out, still = [], []
    for e in log.events:
        if e.event_id not in waiting:
            continue
        rated = rated_dimension(e.properties, j, log)
        if rated is None:
            still.append(e.event_id)
            continue
        survey = e.properties["survey"]
        out.append(Contribution(survey, rated, e.at,
                                _survey_value(survey, int(e.properties["score"]))))
    log.pending_rated = still
    return out


def rated_dimension(p: dict[str, Any], j: Journey, log: JourneyLog) -> str | None:
    """``rated=<kind>:<channel>``, ``rated=none``, or None while the rated thing is unknown."""
    rates = p.get("rates") or {}
    if ticket_id := rates.get("ticket_id"):
        ticket = j.tickets.get(str(ticket_id))
        return f"rated=ticket:{ticket.channel}" if ticket and ticket.channel else None
    if order_id := rates.get("order_id"):
        channel = j.order_channels.get(str(order_id))
        return f"rated=order:{channel}" if channel else None
    if event_id := rates.get("event_id"):
        channel = next((e.channel for e in log.events if e.event_id == event_id), None)
        return f"rated=touchpoint:{channel}" if channel else None
    return "rated=none"


def answer_category(c: Contribution) -> str:
    """The Prometheus ``category`` of a survey contribution (promoter, satisfied, ...)."""
    if c.metric == "nps":
        return {1.0: "promoter", 0.0: "passive"}.get(c.numerator, "detractor")
    if c.metric == "csat":
        return "satisfied" if c.numerator else "unsatisfied"
    return "answered"


def _survey_value(survey: str, score: int) -> float:
    if survey == "nps":
        return _NPS_POINTS[nps_category(score)]
    if survey == "csat":
        return float(csat_satisfied(score))
    return float(score)
