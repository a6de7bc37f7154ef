"""`journey demo` end to end, small, on its own ports: its CX summary against the
simulator's own events, and its HTML report in headless Chromium."""

import asyncio
import math
import re
import subprocess
import sys

from producers.simulator import simulate
from tests.conftest import REPO, free_port
from tests.integration.test_browser import devtools
from tests.reference import ticket_facts

CUSTOMERS, SEED = 150, 7  # the demo's default seed


def test_demo_runs_and_reports(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "demo", "--customers", str(CUSTOMERS), "--data-dir",
         str(tmp_path), "--broker-port", str(free_port()), "--clickhouse-port", str(free_port()),
         "--clickhouse-http-port", str(free_port()), "--worker-port", str(free_port()),
         "--collector-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    sent = int(out.split(" / ")[1].split(" ")[0].replace(",", ""))
    assert "Done in" in out and f"{sent:,} touchpoints, " in out
    assert "0 dead letters" in out
    assert "-- Stage funnel: how many journeys ever reached each stage" in out
    assert "first_touch" in out and "recovery_rate_pct" in out
    assert "top_paths_before_order.sql" in out
    assert "clickhouse-client --host 127.0.0.1 --port" in out
    assert out.rstrip().endswith("stopped broker")
    assert (tmp_path / "clickhouse" / "data").is_dir()  # the data stays

    # The summary, by hand from the same simulated customers (the demo's seed).
    people = simulate(CUSTOMERS, seed=SEED)
    events = [e for p in people for e in p.events]
    scores = {survey: [e.properties["score"] for e in events if e.type == "survey_response"
                       and e.properties["survey"] == survey] for survey in ("nps", "csat")}
    nps = 100 * (sum(s >= 9 for s in scores["nps"]) - sum(s <= 6 for s in scores["nps"])) \
        / len(scores["nps"])
    csat = 100 * sum(s >= 4 for s in scores["csat"]) / len(scores["csat"])
    delivered = [e.properties["status"] for e in events if e.type == "delivery_updated"
                 and e.properties["status"] in ("on_time", "late", "damaged")]
    waits = sorted((answered - opened).total_seconds() for _key, opened, answered, _r, _s
                   in ticket_facts(people).values() if answered is not None)
    p90 = waits[math.ceil(0.9 * len(waits)) - 1]  # nearest rank
    assert f"NPS                     {nps:+.1f}   ({len(scores['nps']):,} answers)" in out
    assert f"CSAT                    {csat:.1f} %  ({len(scores['csat']):,} answers)" in out
    assert f"first response p90      {p90 / 3600:.1f} h" in out
    assert (f"on-time deliveries      {100 * delivered.count('on_time') / len(delivered):.1f} %"
            f"  ({len(delivered):,} parcels)") in out
    assert re.search(r"service recovery +\d+\.\d %  \(\d+ won back, \d+ lost", out), out

    # The report: four charts that a browser draws, the funnel's bars as counted by hand
    # (a journey starts aware unless its first touchpoint is a visit or an order; those
    # with an order reached purchase).
    report = tmp_path / "report.html"
    assert f"charts (funnel, NPS and CSAT by day, service recovery): {report}" in out

    async def look() -> dict:
        async with devtools(tmp_path / "profile") as tools:
            await tools.call("Page.navigate", url=report.as_uri())
            await tools.wait_for("Page.loadEventFired")
            return await tools.evaluate("""({
              charts: [...document.querySelectorAll('section')].map(s => s.id),
              tiles: [...document.querySelectorAll('.tile')].map(t => t.innerText),
              drawn: [...document.querySelectorAll('rect.bar')].every(
                r => r.getBBox().width > 0 && (r.dataset.value == 0 || r.getBBox().height > 0)),
              funnel: Object.fromEntries([...document.querySelectorAll('#funnel rect.bar')]
                .map(r => [r.dataset.label, Number(r.dataset.value)])),
              days: document.querySelectorAll('#nps rect.bar').length})""")

    seen = asyncio.run(look())
    assert seen["charts"] == ["funnel", "nps", "csat", "recovery"]
    assert seen["drawn"] and seen["days"] > 10
    assert any(t.startswith("NPS") and t.endswith(f"{nps:+.1f}") for t in seen["tiles"]), seen
    visit_first = {"page_view", "product_viewed", "cart_updated", "checkout_started",
                   "order_placed"}
    aware = sum(min(p.events, key=lambda e: (e.occurred_at, e.event_id)).type not in visit_first
                for p in people)
    ordering = sum(any(e.type == "order_placed" for e in p.events) for p in people)
    assert (seen["funnel"]["awareness"], seen["funnel"]["purchase"]) == (aware, ordering)
