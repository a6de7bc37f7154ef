"""journey.js in a real headless Chromium: two pages, an identify, events in Kafka."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from schemas import decode_touchpoint
from tests.conftest import TEST_WRITE_KEY, free_port, read_topic

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


async def browse(site: str, profile: Path) -> None:
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
    finally:
        browser.terminate()
        browser.wait(10)


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
            body = PAGE.format(title=title, collector=collector.url, key=TEST_WRITE_KEY)

            async def page(_request: web.Request, body: str = body) -> web.Response:
                return web.Response(text=body, content_type="text/html")

            app.router.add_get(path, page)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", site_port).start()
        try:
            await browse(site, tmp_path / "profile")
        finally:
            await runner.cleanup()

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
    assert all(e.channel == "web" and e.source == "shop" for e in events)


