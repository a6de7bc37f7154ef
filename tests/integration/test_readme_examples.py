"""Every example in README.md, run as written against the real stack.

The code blocks are read from the README itself, so the documentation cannot drift
from what works: only the local stack's addresses (broker, topic, collector) are
swapped for this test's own. The expected journey is worked out by hand from the
examples' text, not by the code under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from decimal import Decimal
from pathlib import Path

from aiohttp import web

from schemas import decode_touchpoint
from schemas.settings import Settings
from tests.conftest import free_port, read_topic, wait_for
from tests.integration.test_browser import devtools, serving

README = Path(__file__).resolve().parents[2] / "README.md"


def code_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)


def test_the_python_examples_run_as_written_and_a_rerun_counts_the_order_once(
        settings, clickhouse, start_worker, tmp_path, monkeypatch) -> None:
    blocks = code_blocks("python")
    assert len(blocks) == 2, "the README's Python examples changed: update this test"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the SDK's default spool
    start_worker()
    local = {"127.0.0.1:9092": ",".join(settings.bootstrap_servers),
             "journey.touchpoints": settings.touchpoints_topic}
    first, second = (_swap(block, local) for block in blocks)
    for number, block in enumerate([first, second, first], 1):  # a newcomer runs it again
        exec(compile(block, f"README.md example {number}", "exec"), {})

    # By hand: one order o-1 of 59.90 (sent twice under two event ids), its parcel late,
    # three touchpoints; the page views stay the device's (only identify links it).
    def journey() -> tuple | None:
        rows = clickhouse.execute(
            "SELECT orders, revenue, deliveries_late, touchpoints, stage "
            "FROM customer_journeys FINAL WHERE journey_key = 'c-1001'")
        return rows[0] if rows and rows[0][3] == 3 else None

    assert wait_for(journey, timeout=60, what="c-1001's journey") == (
        1, Decimal("59.90"), 1, 3, "post_purchase")
    assert wait_for(lambda: clickhouse.execute(
        "SELECT touchpoints, customer_id FROM customer_journeys FINAL "
        "WHERE journey_key = 'anon:device-42' AND touchpoints = 2"), timeout=30,
        what="device-42's journey") == [(2, "")]
    # Both copies are touchpoints; the order counts once. (A batch's rows land table by
    # table: the touchpoints may follow the journey's row.)
    wait_for(lambda: clickhouse.execute(
        "SELECT count(), uniqExact(event_id) FROM touchpoints FINAL "
        "WHERE type = 'order_placed'") == [(2, 2)], timeout=30, what="both orders' rows")


def test_the_browser_snippet_works_as_written_from_a_local_page(
        settings, start_collector, tmp_path) -> None:
    (block,) = code_blocks("html")
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    # The local stack's collector as `journey up` starts it: the development write key
    # and no CORS origins configured.
    collector = start_collector(collector_write_keys=defaults["collector_write_keys"],
                                collector_cors_origins=defaults["collector_cors_origins"])
    page = _swap(block, {"http://127.0.0.1:8088": collector.url})
    site_port = free_port()

    async def run() -> None:
        app = web.Application()

        async def index(_request: web.Request) -> web.Response:
            return web.Response(text=f"<!doctype html><html><body>{page}</body></html>",
                                content_type="text/html")

        app.router.add_get("/", index)
        async with serving(app, "localhost", site_port), devtools(tmp_path / "profile") as tools:
            await tools.call("Page.navigate", url=f"http://localhost:{site_port}/")
            await tools.wait_for("Page.loadEventFired")
            await asyncio.sleep(3)  # the snippet sends every second

    asyncio.run(run())
    events = [decode_touchpoint(r.value) for r in
              read_topic(settings, settings.touchpoints_topic, 3, settle=2)]
    assert sorted(e.type for e in events) == ["identify", "page_view", "product_viewed"]
    by_type = {e.type: e for e in events}
    assert by_type["product_viewed"].properties["sku"] == "sku-1"
    assert by_type["identify"].customer_id == "customer-42"
    assert len({e.anonymous_id for e in events}) == 1


def _swap(text: str, addresses: dict[str, str]) -> str:
    for old, new in addresses.items():
        assert old in text, f"the README's example no longer uses {old}"
        text = text.replace(old, new)
    return text
