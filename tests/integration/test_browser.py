"""journey.js in a real headless Chromium: two pages, an identify, events in Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from schemas import decode_touchpoint
from tests.conftest import TEST_CLIENT_KEY, free_port, read_topic

PAGE = """<!doctype html><html><head><title>{title}</title>
<script src="{collector}/journey.js"></script></head><body>
<script>journey.init({{host: "{collector}", writeKey: "{key}", flushInterval: 200}});</script>
<a id="next" href="/product.html?utm_campaign=spring&utm_source=newsletter">a product</a>
</body></html>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is not installed: `sudo apt-get install chromium` "
                    "(`make setup` installs it)")
    return path


class DevTools:
    """Just enough of the Chrome DevTools Protocol: send a command, wait for an event."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    async def call(self, method: str, **params: object) -> dict:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), timeout=30)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    async def wait_for(self, event: str) -> dict:
        while True:
            for i, message in enumerate(self.events):
                if message.get("method") == event:
                    return self.events.pop(i)
            self.events.append(await asyncio.wait_for(self.ws.receive_json(), timeout=30))

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def devtools(profile: Path) -> AsyncIterator[DevTools]:
    """A headless Chromium, and the DevTools of its page."""
    browser = subprocess.Popen(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                target = next(t for t in await r.json() if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                await tools.call("Page.enable")
                yield tools
    finally:
        browser.terminate()
        browser.wait(10)


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    """``app`` served on ``host``:``port`` for the block: the test's own web site."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def browse(site: str, profile: Path) -> None:
    async with devtools(profile) as tools:
        await tools.call("Page.navigate", url=f"{site}/index.html")
        await tools.wait_for("Page.loadEventFired")
        # A real click: page one's pending events leave by sendBeacon on pagehide.
        await tools.evaluate("document.getElementById('next').click()")
        await tools.wait_for("Page.loadEventFired")
        assert await tools.evaluate("document.title") == "A product"
        status = await tools.evaluate(
            "journey.identify('cust-42', {plan: 'gold'});"
            "journey.flush().then(r => r ? r.status : 0)")
        assert status == 200


def test_snippet_tracks_two_pages_and_identifies(settings, start_collector, tmp_path) -> None:
    site_port = free_port()
    site = f"http://127.0.0.1:{site_port}"
    collector = start_collector(collector_cors_origins=site)
    with urllib.request.urlopen(f"{collector.url}/journey.js", timeout=10) as r:
        served = r.read().decode()
    assert "window.journey = journey" in served

    async def run() -> None:
        app = web.Application()
        for path, title in (("/index.html", "Home"), ("/product.html", "A product")):
            body = PAGE.format(title=title, collector=collector.url, key=TEST_CLIENT_KEY)

            async def page(_request: web.Request, body: str = body) -> web.Response:
                return web.Response(text=body, content_type="text/html")

            app.router.add_get(path, page)
        async with serving(app, "127.0.0.1", site_port):
            await browse(site, tmp_path / "profile")

    asyncio.run(run())
    events = [decode_touchpoint(r.value) for r in
              read_topic(settings, settings.touchpoints_topic, 3, settle=2)]
    assert sorted(e.type for e in events) == ["identify", "page_view", "page_view"]
    anonymous = {e.anonymous_id for e in events}
    assert len(anonymous) == 1 and None not in anonymous  # one device id across pages
    pages = sorted((e for e in events if e.type == "page_view"), key=lambda e: e.occurred_at)
    assert [p.properties["title"] for p in pages] == ["Home", "A product"]
    assert pages[1].context["campaign"] == {"name": "spring", "source": "newsletter"}
    assert pages[1].context["page"]["referrer"] == f"{site}/index.html"
    identify = next(e for e in events if e.type == "identify")
    assert (identify.customer_id, identify.anonymous_id) == ("cust-42", anonymous.pop())
    assert identify.properties["traits"] == {"plan": "gold"}
    assert all(e.channel == "web" and e.source == "web" for e in events)




# ── Segment's own browser library ─────────────────────────────────────────────
#: `make setup` unpacks @segment/analytics-next from npm here (see the Makefile).
ANALYTICS_NEXT = Path(__file__).resolve().parents[2] / ".venv" / "analytics-next" / "package"
NEXT_PAGE = """<!doctype html><html><head><title>Shop</title>
<script src="{site}/analytics-next/index.js"></script></head><body></body></html>"""
#: Settings given inline (nothing from Segment's CDN), sending to the collector; the
#: library's lazily loaded bundles come from the test's own site (cdnURL).
NEXT_SCRIPT = """(async () => {{
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({{
    writeKey: "{key}", cdnURL: "{site}",
    cdnSettings: {{integrations: {{"Segment.io": {{
      apiKey: "{key}", apiHost: "{collector_host}/v1", protocol: "http"}}}}}}}});
  await analytics.page("Home", {{url: "{site}/"}});
  await analytics.track("Product Viewed", {{product_id: "p-7", price: 19.5}});
  await analytics.identify("cust-77", {{plan: "gold"}});
  return analytics.user().anonymousId();
}})()"""


def test_segment_analytics_next_in_chromium_lands_once(settings, start_collector,
                                                      tmp_path) -> None:
    bundle = ANALYTICS_NEXT / "dist" / "umd"
    if not (bundle / "index.js").exists():
        pytest.fail(f"@segment/analytics-next is not unpacked in {ANALYTICS_NEXT}: run "
                    "`make setup` (it needs npm: `sudo apt-get install npm`)")
    site_port = free_port()
    site = f"http://127.0.0.1:{site_port}"
    collector = start_collector(collector_cors_origins=site)
    served: list[str] = []

    async def run() -> str:
        app = web.Application()

        async def page(_request: web.Request) -> web.Response:
            return web.Response(text=NEXT_PAGE.format(site=site), content_type="text/html")

        async def script(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            served.append(name)
            return web.Response(body=(bundle / name).read_bytes(),
                                content_type="application/javascript")

        app.router.add_get("/index.html", page)
        app.router.add_get("/analytics-next/{name}", script)
        app.router.add_get("/analytics-next/bundles/{name}", script)
        async with serving(app, "127.0.0.1", site_port), devtools(tmp_path / "profile") as tools:
            await tools.call("Page.navigate", url=f"{site}/index.html")
            await tools.wait_for("Page.loadEventFired")
            return str(await tools.evaluate(NEXT_SCRIPT.format(
                key=TEST_CLIENT_KEY, site=site,
                collector_host=collector.url.removeprefix("http://"))))

    anonymous = asyncio.run(run())
    assert "index.js" in served
    events = [decode_touchpoint(r.value) for r in
              read_topic(settings, settings.touchpoints_topic, 3, settle=3)]
    assert sorted(e.type for e in events) == ["identify", "page_view", "product_viewed"]
    assert len({e.event_id for e in events}) == 3  # each once
    assert {e.anonymous_id for e in events} == {anonymous}
    by_type = {e.type: e for e in events}
    # The library sends the document's title and the url given.
    assert by_type["page_view"].properties["title"] == "Shop"
    assert by_type["page_view"].properties["url"] == f"{site}/"
    assert by_type["product_viewed"].properties["sku"] == "p-7"
    assert by_type["identify"].customer_id == "cust-77"
    assert by_type["identify"].properties["traits"] == {"plan": "gold"}
    assert by_type["page_view"].context["library"]["name"] == "analytics.js"
