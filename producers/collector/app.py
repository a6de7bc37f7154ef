"""The HTTP collector: Segment-compatible endpoints in front of the touchpoint topic.

A request is authenticated (write key → source), bounded (Segment's limits), rate
limited per key, and every message in it is mapped and validated against the same
schemas the SDK and the worker use. Valid events go to ``<prefix>.touchpoints``;
invalid ones go to ``<prefix>.dead-letters`` with the reason and the original
payload. The response, sent only after Kafka acknowledged both, says which events
were accepted and why each other one was not.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from producers.collector.auth import RateLimiter, WriteKeys, basic_username
from producers.collector.metrics import CollectorMetrics
from producers.collector.segment import to_touchpoint
from schemas import SchemaError, decode_touchpoint, encode_touchpoint, utcnow
from schemas.settings import Settings

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_EVENTS", "MAX_EVENT_BYTES", "Collector"]

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
SNIPPET = Path(__file__).resolve().parent.parent / "browser" / "journey.js"
_ENDPOINT_TYPES = {"/v1/track": "track", "/v1/page": "page", "/v1/identify": "identify"}
_encoder = msgspec.json.Encoder()


class _Reject(Exception):
    def __init__(self, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Collector:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = CollectorMetrics.create(self.registry)
        self.keys = WriteKeys(settings.collector_write_keys)
        self.limiter = RateLimiter(settings.collector_rate_limit, settings.collector_rate_burst)
        self.origins = settings.cors_origins
        self.producer: AIOKafkaProducer | None = None

    # ── lifecycle ────────────────────────────────────────────────────────────
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BATCH_BYTES + 1, middlewares=[self._cors])
        for path in ("/v1/track", "/v1/page", "/v1/identify", "/v1/batch", "/v1/import"):
            app.router.add_post(path, self._ingest)
            app.router.add_route("OPTIONS", path, self._preflight)
        app.router.add_get("/journey.js", self._snippet)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._start_producer)
        app.on_cleanup.append(self._stop_producer)
        return app

    async def _start_producer(self, _app: web.Application) -> None:
        # Not idempotent: aiokafka's InitProducerId fails on Tansu 0.6 (UnknownError).
        # A retried send may duplicate an event; its event_id absorbs that downstream.
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers, acks="all", linger_ms=5,
            request_timeout_ms=10_000,
            client_id=f"{self.settings.app_id}-collector")
        deadline = time.monotonic() + 60
        while True:
            try:
                await self.producer.start()
                return
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("broker not reachable yet (%s); retrying", exc)
                await asyncio.sleep(1)

    async def _stop_producer(self, _app: web.Application) -> None:
        if self.producer is not None:
            await self.producer.stop()

    # ── middleware and small endpoints ───────────────────────────────────────
    @web.middleware
    async def _cors(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/") not in self.origins and request.path.startswith("/v1/"):
            self._count(request, 403)
            return web.json_response({"success": False, "error": f"origin {origin} is not "
                                      "allowed; add it to JOURNEY_COLLECTOR_CORS_ORIGINS"},
                                     status=403)
        response = await handler(request)
        if origin and origin.rstrip("/") in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "86400"})

    async def _snippet(self, request: web.Request) -> web.Response:
        return web.Response(body=SNIPPET.read_bytes(), content_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=3600"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            content_type=CONTENT_TYPE_LATEST.split(";")[0])

    def _count(self, request: web.Request, status: int) -> None:
        endpoint = request.path if request.path in (*_ENDPOINT_TYPES, "/v1/batch") else "other"
        self.metrics.requests.labels(endpoint, str(status)).inc()

    # ── ingestion ────────────────────────────────────────────────────────────
    async def _ingest(self, request: web.Request) -> web.Response:
        try:
            response = await self._handle(request)
        except _Reject as exc:
            response = web.json_response({"success": False, "error": exc.message},
                                         status=exc.status, headers=exc.headers)
        self._count(request, response.status)
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        received_at = utcnow()
        body = await self._body(request)
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise _Reject(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _Reject(400, "the body must be a JSON object")
        source = self.keys.source_for(basic_username(request.headers.get("Authorization"))
                                      or payload.get("writeKey"))
        if source is None:
            raise _Reject(401, "missing or unknown write key: send it as the HTTP Basic "
                          "username (or as writeKey in the body)")
        messages = self._messages(request.path, payload)
        wait = self.limiter.take(source, len(messages))
        if wait:
            retry_after = math.ceil(wait)
            raise _Reject(429, f"rate limit of {self.settings.collector_rate_limit:g} events/s "
                          f"exceeded; retry after {retry_after} s",
                          headers={"Retry-After": str(retry_after)})
        accepted: list[tuple[bytes, bytes]] = []
        rejected: list[dict[str, Any]] = []
        dead: list[tuple[bytes | None, bytes]] = []
        sent_at = payload.get("sentAt")
        for index, message in enumerate(messages):
            try:
                tp = self._touchpoint(message, received_at, source, sent_at)
            except SchemaError as exc:
                self.metrics.events.labels("rejected", exc.reason).inc()
                message_id = message.get("messageId") if isinstance(message, dict) else None
                rejected.append({"index": index, "messageId": message_id, "reason": exc.reason,
                                 "field": exc.field, "error": exc.detail})
                dead.append((str(message_id).encode() if message_id else None, _encoder.encode({
                    "reason": exc.reason, "field": exc.field, "error": exc.detail,
                    "source": source, "received_at": received_at.isoformat(),
                    "payload": _encoder.encode(message).decode()})))
                continue
            self.metrics.events.labels("accepted", "").inc()
            accepted.append((tp.key.encode(), encode_touchpoint(tp)))
        await self._publish(accepted, dead)
        return web.json_response({"success": True, "accepted": len(accepted),
                                  "rejected": rejected})

    async def _body(self, request: web.Request) -> bytes:
        if (request.content_length or 0) > MAX_BATCH_BYTES:
            raise _Reject(413, f"the body is over {MAX_BATCH_BYTES // 1024} KB")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Reject(413, f"the body is over {MAX_BATCH_BYTES // 1024} KB") from None
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gzip.GzipFile(fileobj=io.BytesIO(body)).read(
                    MAX_BATCH_BYTES + 1)
            except (OSError, EOFError, zlib.error):
                raise _Reject(400, "the body is not valid gzip") from None
            if len(body) > MAX_BATCH_BYTES:
                raise _Reject(413, f"the body is over {MAX_BATCH_BYTES // 1024} KB unzipped")
        self.metrics.request_bytes.observe(len(body))
        return body

    def _messages(self, path: str, payload: dict[str, Any]) -> list[Any]:
        if path in _ENDPOINT_TYPES:
            return [{**payload, "type": payload.get("type") or _ENDPOINT_TYPES[path]}]
        batch = payload.get("batch")
        if not isinstance(batch, list):
            raise _Reject(400, "a batch request needs a `batch` array of messages")
        if len(batch) > MAX_BATCH_EVENTS:
            raise _Reject(400, f"a batch holds at most {MAX_BATCH_EVENTS} events, got "
                          f"{len(batch)}")
        shared = payload.get("context")
        if isinstance(shared, dict):  # batch-level context, as Segment allows
            batch = [{**m, "context": {**shared, **(m.get("context") or {})}}
                     if isinstance(m, dict) else m for m in batch]
        return batch

    def _touchpoint(self, message: Any, received_at: Any, source: str, sent_at: Any) -> Any:
        if not isinstance(message, dict):
            raise SchemaError("a message must be a JSON object", reason="invalid_field")
        if len(_encoder.encode(message)) > MAX_EVENT_BYTES:
            raise SchemaError(f"the event is over {MAX_EVENT_BYTES // 1024} KB",
                              reason="too_large")
        candidate = to_touchpoint(message, received_at=received_at, source=source,
                                  sent_at=sent_at if isinstance(sent_at, str) else None)
        return decode_touchpoint(_encoder.encode(candidate))

    async def _publish(self, accepted: list[tuple[bytes, bytes]],
                       dead: list[tuple[bytes | None, bytes]]) -> None:
        if self.producer is None:
            raise _Reject(503, "the collector is starting; retry shortly")
        started = time.perf_counter()
        try:
            futures = [await self.producer.send(self.settings.touchpoints_topic, value, key=key)
                       for key, value in accepted]
            futures += [await self.producer.send(self.settings.dead_letter_topic, value, key=key)
                        for key, value in dead]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=15)
        except (KafkaError, TimeoutError) as exc:
            log.error("publishing %d events failed: %s", len(accepted) + len(dead), exc)
            raise _Reject(503, "the event stream is unavailable; retry later") from None
        self.metrics.publish_seconds.observe(time.perf_counter() - started)


def run_collector(settings: Settings) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=settings.python_log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    collector = Collector(settings)
    if not collector.keys:
        raise SystemExit("journey collector: no write keys configured "
                         "(JOURNEY_COLLECTOR_WRITE_KEYS)")
    web.run_app(collector.app(), host=settings.collector_host, port=settings.collector_port,
                print=lambda msg: log.info("%s", msg), access_log=None)
