"""The CX summary and the HTML report of ``journey demo``: what a CX lead looks at first.

The numbers come from ClickHouse with the same definitions as the stream's CX metrics
(stream_processors/cx_metrics.py): NPS is % promoters (9-10) minus % detractors (0-6),
CSAT the share of 4s and 5s, the on-time rate the share of delivered parcels on time
(each parcel status once per order, as everywhere), the first-response p90 the
nearest-rank 90th percentile of tickets' first agent answer, and service recovery the
share of customers with a bad delivery who contacted support and were won back.

The report is one self-contained HTML file with inline SVG charts: it opens offline,
from the data directory, with nothing fetched from a CDN. A charting library would
bring a JavaScript bundle of megabytes (Plotly) or a plotting stack (matplotlib) for
four bar charts; the SVG is a few lines each.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from clickhouse_driver import Client

from deploy.queries import load_queries
from stream_processors.cx_metrics import Ratio

__all__ = ["CxSummary", "cx_summary", "format_summary", "render_report", "write_report"]

_DELIVERIES = """
SELECT countIf(status = 'on_time'), count()
FROM
(
    SELECT DISTINCT journey_key, visitParamExtractString(properties, 'order_id') AS order_id,
           visitParamExtractString(properties, 'status') AS status
    FROM touchpoints FINAL
    WHERE type = 'delivery_updated' AND status IN ('on_time', 'late', 'damaged')
)
"""
_FIRST_RESPONSE_P90 = """
SELECT if(count() = 0, nan,
          arraySort(groupArray(first_response_seconds))[toUInt64(ceil(0.9 * count()))])
FROM support_tickets FINAL
WHERE first_response_seconds IS NOT NULL
"""
#: NPS and CSAT answers per day; the totals are their sums (Ratio adds up).
_ANSWERS_BY_DAY = """
SELECT
    toDate(occurred_at) AS day,
    visitParamExtractString(properties, 'survey') AS survey,
    countIf(visitParamExtractInt(properties, 'score') >= 9) AS promoters,
    countIf(visitParamExtractInt(properties, 'score') <= 6) AS detractors,
    countIf(visitParamExtractInt(properties, 'score') >= 4) AS satisfied,
    count() AS answers
FROM touchpoints FINAL
WHERE type = 'survey_response' AND survey IN ('nps', 'csat')
GROUP BY day, survey
ORDER BY day, survey
"""


@dataclass(frozen=True)
class CxSummary:
    nps: float | None
    nps_answers: int
    csat: float | None
    csat_answers: int
    on_time_rate: float | None
    deliveries: int
    first_response_p90_seconds: float | None
    recovered: int
    lost: int
    recovery_rate: float | None
    #: (stage, journeys that reached it, % of journeys), in funnel order
    funnel: tuple[tuple[str, int, float], ...]
    #: (day, NPS or None, CSAT or None)
    by_day: tuple[tuple[date, float | None, float | None], ...]
    #: recovery outcome → customers (recovered, lost, still open, no contact)
    recovery: tuple[tuple[str, int], ...]


def cx_summary(client: Client) -> CxSummary:
    """The headline CX numbers of the database ``client`` is connected to."""
    by_day: dict[date, dict[str, Ratio]] = {}
    total = {"nps": Ratio(0, 0), "csat": Ratio(0, 0)}
    for day, survey, promoters, detractors, satisfied, n in client.execute(_ANSWERS_BY_DAY):
        answers = Ratio(promoters - detractors if survey == "nps" else satisfied, n)
        by_day.setdefault(day, {})[survey] = answers
        total[survey] += answers
    on_time, delivered = client.execute(_DELIVERIES)[0]
    p90 = client.execute(_FIRST_RESPONSE_P90)[0][0]
    queries = load_queries()
    _contacted, recovered, lost, still_open, no_contact, _rate = client.execute(
        queries["service_recovery_rate"][1])[0]
    funnel = tuple((stage, n, float(pct)) for stage, n, pct in client.execute(
        queries["stage_funnel_conversion"][1]))
    return CxSummary(
        nps=total["nps"].value, nps_answers=int(total["nps"].denominator),
        csat=total["csat"].value, csat_answers=int(total["csat"].denominator),
        on_time_rate=Ratio(on_time, delivered).value, deliveries=delivered,
        first_response_p90_seconds=None if p90 is None or math.isnan(p90) else float(p90),
        recovered=recovered, lost=lost, recovery_rate=Ratio(recovered, recovered + lost).value,
        funnel=funnel,
        by_day=tuple((day, _value(v.get("nps")), _value(v.get("csat")))
                     for day, v in sorted(by_day.items())),
        recovery=(("recovered", recovered), ("lost", lost), ("still open", still_open),
                  ("bad delivery, no contact", no_contact)))


def format_summary(s: CxSummary) -> str:
    p90 = s.first_response_p90_seconds
    return "\n".join([
        "CX summary",
        f"  NPS                     {_num(s.nps, '+.1f')}   ({s.nps_answers:,} answers)",
        f"  CSAT                    {_num(s.csat, '.1f')} %  ({s.csat_answers:,} answers)",
        f"  first response p90      {_num(None if p90 is None else p90 / 3600, '.1f')} h",
        f"  on-time deliveries      {_num(s.on_time_rate, '.1f')} %  ({s.deliveries:,} "
        "parcels)",
        f"  service recovery        {_num(s.recovery_rate, '.1f')} %  ({s.recovered:,} won "
        f"back, {s.lost:,} lost after a bad delivery and a support contact)",
    ])


def write_report(s: CxSummary, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(s))
    return path


def render_report(s: CxSummary) -> str:
    """One HTML page: the summary's numbers, then the four charts."""
    p90 = s.first_response_p90_seconds
    tiles = [("NPS", _num(s.nps, "+.1f")), ("CSAT", _num(s.csat, ".1f") + " %"),
             ("First response p90", _num(None if p90 is None else p90 / 3600, ".1f") + " h"),
             ("On-time deliveries", _num(s.on_time_rate, ".1f") + " %"),
             ("Service recovery", _num(s.recovery_rate, ".1f") + " %")]
    days = [d.isoformat() for d, _, _ in s.by_day]
    charts = [
        ("funnel", "Journeys reaching each stage",
         _bars([stage for stage, _, _ in s.funnel], [n for _, n, _ in s.funnel])),
        ("nps", "NPS by day of the answer", _bars(days, [v for _, v, _ in s.by_day])),
        ("csat", "CSAT by day of the answer (%)", _bars(days, [v for _, _, v in s.by_day])),
        ("recovery", "After a bad delivery",
         _bars([name for name, _ in s.recovery], [n for _, n in s.recovery])),
    ]
    return "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'><title>journey: CX report</title>",
        f"<style>{_STYLE}</style></head><body><h1>CX report</h1><div class='tiles'>",
        *(f"<div class='tile'><div class='name'>{html.escape(name)}</div>"
          f"<div class='value'>{html.escape(value)}</div></div>" for name, value in tiles),
        "</div>",
        *(f"<section id='{cid}'><h2>{html.escape(title)}</h2>{svg}</section>"
          for cid, title, svg in charts),
        "</body></html>"])


_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}
.tiles{display:flex;gap:1em;flex-wrap:wrap}.tile{border:1px solid #ddd;padding:.8em 1.2em}
.tile .value{font-size:1.8em}.bar{fill:#4a7fb5}.bar.neg{fill:#c0504d}
text{font-size:11px}section{margin-top:2em}"""


def _bars(labels: Sequence[str], values: Sequence[float | None]) -> str:
    """A vertical bar chart; each bar carries its value (``data-value``, and a tooltip),
    negative values hang below the zero line, and a missing value draws no bar. Few bars
    are wide and labelled with their values; a long series (days) is narrow, with every
    few labels shown."""
    few = len(labels) <= 12
    bar, pad, left, height = (56 if few else 16), 40, 70, 220  # left: room for labels
    width = max(320, left + pad + bar * len(labels))
    every = 1 if few else math.ceil(len(labels) / 15)
    known = [v for v in values if v is not None]
    top, bottom = max([0.0, *known]), min([0.0, *known])
    span = (top - bottom) or 1.0
    zero = pad + (height - 2 * pad) * top / span
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 60}'>",
             f"<line x1='{left}' x2='{width - pad}' y1='{zero:.1f}' y2='{zero:.1f}' "
             "stroke='#999'/>"]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x, middle = left + i * bar, left + i * bar + bar / 2
        if value is not None:
            size = (height - 2 * pad) * abs(value) / span
            y = zero - size if value >= 0 else zero
            parts.append(f"<rect class='bar{'' if value >= 0 else ' neg'}' "
                         f"data-label='{html.escape(label)}' data-value='{value:g}' "
                         f"x='{x + 1:.1f}' y='{y:.1f}' width='{bar - 2}' height='{size:.1f}'>"
                         f"<title>{html.escape(label)}: {value:,.4g}</title></rect>")
            if few:
                above = y - 4 if value >= 0 else y + size + 12
                parts.append(f"<text x='{middle:.1f}' y='{above:.1f}' text-anchor='middle'>"
                             f"{value:,.4g}</text>")
        if i % every == 0:
            parts.append(f"<text x='{middle:.1f}' y='{height + 4}' text-anchor='end' "
                         f"transform='rotate(-40 {middle:.1f} {height + 4})'>"
                         f"{html.escape(label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _value(ratio: Ratio | None) -> float | None:
    return None if ratio is None else ratio.value


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
