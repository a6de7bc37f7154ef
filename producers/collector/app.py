"""The HTTP collector: Segment-compatible endpoints in front of the touchpoint topic.

A request is authenticated (write key → source) before its body is read whenever the
key comes in the Authorization header, bounded (Segment's limits, also after
decompression), rate limited per key and per key and client address, and every message
in it is mapped and validated against the same schemas the SDK and the worker use, plus
what its source may send (a client key: no server-only types) and when it may have
happened (schemas/bounds.py). Valid events go to ``<prefix>.touchpoints``; invalid ones
go to ``<prefix>.dead-letters`` with the reason and the original payload. The response,
sent only after Kafka acknowledged both, says which events were accepted and why each
other one was not. An error response carries ``code`` and ``message``, the fields the
Segment and RudderStack SDKs read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from producers.collector.auth import RateLimiter, Source, WriteKeys, basic_username, is_loopback
from producers.collector.metrics import CollectorMetrics
from producers.collector.segment import to_touchpoint
from producers.collector.suppressions import SuppressionList
from schemas import SchemaError, decode_touchpoint, encode_touchpoint, utcnow
from schemas.settings import Settings

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_EVENTS", "MAX_EVENT_BYTES", "Collector"]

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
SNIPPET = Path(__file__).resolve().parent.parent / "browser" / "journey.js"
_ENDPOINT_TYPES = {"/v1/track": "track", "/v1/page": "page", "/v1/identify": "identify"}
#: The short paths Segment's browser library (analytics-next) posts to → the long ones.
_SHORT_PATHS = {"/v1/t": "/v1/track", "/v1/p": "/v1/page", "/v1/i": "/v1/identify",
                "/v1/b": "/v1/batch"}
_encoder = msgspec.json.Encoder()


#: HTTP status → the ``code`` of an error body.
_LOCAL_ORIGIN = re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?")
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 413: "too_large",
          415: "unsupported_encoding", 429: "rate_limited", 503: "unavailable"}


class _Reject(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code or _CODES.get(status, "error")
        self.extra = extra

    def response(self) -> web.Response:
        return web.json_response({"success": False, "code": self.code,
                                  "message": self.message, **self.extra},
                                 status=self.status, headers=self.headers)


class _QuietLog:
    """Logs each refusal with its reason, at most once per ``every`` seconds per (status,
    code, source), so that a misconfigured client is visible in the collector's log and
    a flood of them does not fill it; says how many were left out meanwhile."""

    def __init__(self, every: float = 10.0) -> None:
        self._limit = RateLimitItemPerSecond(1, max(1, round(every)))
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._left_out: dict[tuple[str, ...], int] = {}

    def refused(self, status: int, code: str, source: str, path: str, remote: str | None,
                message: str) -> None:
        key = (str(status), code, source)
        if not self._limiter.hit(self._limit, *key):
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        left_out = self._left_out.pop(key, 0)
        log.warning("refused %s %s from %s (%s): %s %s%s", path, source, remote or "?", code,
                    status, message, f" ({left_out} more like it not logged)" if left_out else "")


class Collector:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = CollectorMetrics.create(self.registry)
        self.keys = WriteKeys(settings.collector_write_keys)
        self.limiter = RateLimiter(settings.collector_rate_limit, settings.collector_rate_burst)
        self.client_limiter = RateLimiter(settings.collector_client_rate_limit,
                                          settings.collector_client_rate_burst)
        self.server_only = settings.server_only
        self.quiet_log = _QuietLog()
        self.bounds = settings.time_bounds
        self.origins = settings.cors_origins
        self.redaction = settings.redaction
        self.suppressed = SuppressionList(settings.bootstrap_servers,
                                          settings.suppressions_topic, settings.privacy_key)
        self.producer: AIOKafkaProducer | None = None

    # ── lifecycle ────────────────────────────────────────────────────────────
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BATCH_BYTES + 1, middlewares=[self._cors])
        for path in ("/v1/track", "/v1/page", "/v1/identify", "/v1/batch", "/v1/import",
                     *_SHORT_PATHS):
            app.router.add_post(path, self._ingest)
            app.router.add_route("OPTIONS", path, self._preflight)
        app.router.add_post("/v1/regulations", self._regulation)
        app.router.add_get("/journey.js", self._snippet)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._start_producer)
        app.on_cleanup.append(self._stop_producer)
        return app

    async def _start_producer(self, _app: web.Application) -> None:
        self.suppressed.start()
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
        await self.suppressed.stop()
        if self.producer is not None:
            await self.producer.stop()

    # ── middleware and small endpoints ───────────────────────────────────────
    @web.middleware
    async def _cors(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and self._origin_allowed(origin.rstrip("/"))
        if origin and not allowed and request.path.startswith("/v1/"):
            self._count(request, 403)
            refusal = _Reject(403, f"origin {origin} is not allowed; add it to "
                              "JOURNEY_COLLECTOR_CORS_ORIGINS", code="origin_not_allowed")
            self.quiet_log.refused(403, refusal.code, origin, request.path, request.remote,
                                   refusal.message)
            return refusal.response()
        response = await handler(request)
        if origin and allowed:
            # No Allow-Credentials: the collector uses no cookies, and a browser then
            # sends none (the write key is no credential a page could leak by it).
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    def _origin_allowed(self, origin: str) -> bool:
        """The listed origins; with none listed (the local default), pages served from
        this machine and local files (origin ``null``), so that the README's snippet
        works as written. A deployment lists its shops' origins."""
        if self.origins:
            return origin in self.origins
        return origin == "null" or _LOCAL_ORIGIN.fullmatch(origin) is not None

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
        path = _SHORT_PATHS.get(request.path, request.path)
        endpoint = path if path in (*_ENDPOINT_TYPES, "/v1/batch", "/v1/regulations") else "other"
        self.metrics.requests.labels(endpoint, str(status)).inc()

    # ── ingestion ────────────────────────────────────────────────────────────
    async def _ingest(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._handle)

    async def _regulation(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._regulate)

    async def _answer(self, request: web.Request,
                      handle: Callable[[web.Request], Awaitable[web.Response]]) -> web.Response:
        """``handle``'s response, or its refusal's; logged (quietly) and counted."""
        try:
            response = await handle(request)
        except _Reject as exc:
            response = exc.response()
            if exc.status < 500:  # 5xx are logged where they happen, with their cause
                self.quiet_log.refused(exc.status, exc.code, request.get("source", "no valid key"),
                                       request.path, request.remote, exc.message)
        self._count(request, response.status)
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        received_at = utcnow()
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        header_key = basic_username(request.headers.get("Authorization"))
        source = None
        if header_key is not None:  # before a byte of the body is read
            source = self._authenticate(header_key, request.remote)
            request["source"] = source.name
        elif encoding != "identity":
            raise _Reject(401, "missing write key: a compressed body must carry its write key "
                          "in the Authorization header (the HTTP Basic username)")
        body = await self._body(request, encoding)
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise _Reject(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _Reject(400, "the body must be a JSON object")
        if source is None:  # a beacon: the key in the body
            key = payload.get("writeKey")
            source = self._authenticate(key if isinstance(key, str) else None, request.remote)
            request["source"] = source.name
        messages = self._messages(_SHORT_PATHS.get(request.path, request.path), payload)
        limits = [(self.limiter, source.name, "write key")]
        if source.kind == "client":  # a server key's traffic is the shop's own, often one NAT
            limits.append((self.client_limiter, f"{source.name}|{request.remote}",
                           "client address"))
        for limiter, identifier, what in limits:
            wait = await limiter.take(identifier, len(messages))
            if wait:
                retry_after = math.ceil(wait)
                raise _Reject(429, f"rate limit of {limiter.rate:g} events/s per {what} "
                              f"exceeded; retry after {retry_after} s",
                              headers={"Retry-After": str(retry_after)})
        accepted: list[tuple[bytes, bytes]] = []
        rejected: list[dict[str, Any]] = []
        dead: list[tuple[bytes | None, bytes]] = []
        generated: list[dict[str, Any]] = []  # ids made for messages that had none
        sent_at = payload.get("sentAt")
        suppressed = 0
        for index, message in enumerate(messages):
            if isinstance(message, dict) and self.suppressed.holds(
                    message.get("userId"), message.get("anonymousId"),
                    message.get("customer_id"), message.get("anonymous_id")):
                suppressed += 1  # a forgotten customer's: neither kept nor refused
                self.metrics.events.labels("suppressed", "").inc()
                continue
            try:
                tp = self.redaction.apply(self._touchpoint(message, received_at, source.name,
                                                           sent_at))
                self._check_trust(tp, source)
            except SchemaError as exc:
                self.metrics.events.labels("rejected", exc.reason).inc()
                message_id = message.get("messageId") if isinstance(message, dict) else None
                rejected.append({"index": index, "messageId": message_id, "reason": exc.reason,
                                 "field": exc.field, "error": exc.detail})
                dead.append((str(message_id).encode() if message_id else None, _encoder.encode({
                    "letter": secrets.randbits(63), "reason": exc.reason, "field": exc.field,
                    "error": exc.detail, "source": source.name,
                    "received_at": received_at.isoformat(),
                    "payload": _encoder.encode(message).decode()})))
                continue
            self.metrics.events.labels("accepted", "").inc()
            accepted.append((tp.key.encode(), encode_touchpoint(tp)))
            if not message.get("messageId"):
                generated.append({"index": index, "messageId": tp.event_id})
        await self._publish(accepted, dead)
        if rejected and not accepted:  # Segment's SDKs do not retry a 400: it would not help
            first = rejected[0]
            raise _Reject(400, f"none of the {len(rejected)} events was accepted (the first: "
                          f"{first['reason']} at {first['field']}: {first['error']}); each is "
                          "kept in the dead letters", code="invalid_events", accepted=0,
                          rejected=rejected, generated=generated)
        return web.json_response({"success": True, "accepted": len(accepted),
                                  "rejected": rejected, "generated": generated,
                                  "suppressed": suppressed})

    async def _regulate(self, request: web.Request) -> web.Response:
        """Forget (or allow again) a customer, in the spirit of Segment's user deletion
        API: ``{"regulationType": "Suppress_With_Delete", "subjectType": "USER_ID",
        "subjectIds": ["c-1"]}`` (or ``"Unsuppress"``). A server write key only: a
        browser's key is public, and anybody could erase anybody with it. Answers when
        the request is done (stream_processors/privacy.py), with what it erased."""
        from stream_processors.privacy import PrivacyError, forget, unsuppress

        source = self._authenticate(basic_username(request.headers.get("Authorization")),
                                    request.remote)
        request["source"] = source.name
        if source.kind != "server":
            raise _Reject(403, f"source {source.name!r} has a client write key; only a "
                          "server write key may forget customers", code="forbidden")
        customers, action = await self._regulation_body(request)
        act = forget if action == "Suppress_With_Delete" else unsuppress
        reports = []
        try:
            for customer in customers:
                report = await asyncio.to_thread(act, self.settings, customer,
                                                 requested_by=f"collector:{source.name}")
                reports.append(report.as_dict())
        except PrivacyError as exc:
            log.warning("regulation not completed: %s", exc)
            raise _Reject(503, str(exc)) from None
        except Exception as exc:
            log.error("regulation failed: %s", exc)
            raise _Reject(503, f"the request could not be completed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); retry later") from None
        return web.json_response({"success": True, "regulationType": action,
                                  "results": reports})

    async def _regulation_body(self, request: web.Request) -> tuple[list[str], str]:
        from stream_processors.privacy import PrivacyError, check_id

        try:
            payload = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            raise _Reject(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _Reject(400, "the body must be a JSON object")
        action = payload.get("regulationType", "Suppress_With_Delete")
        if action not in ("Suppress_With_Delete", "Unsuppress"):
            raise _Reject(400, f"regulationType {action!r} is not supported: "
                          "Suppress_With_Delete or Unsuppress")
        if payload.get("subjectType", "USER_ID") != "USER_ID":
            raise _Reject(400, "subjectType must be USER_ID (the customer id; their devices "
                          "are forgotten with them)")
        ids = payload.get("subjectIds")
        if not isinstance(ids, list) or not ids:
            raise _Reject(400, "subjectIds must be a non-empty array of customer ids")
        if len(ids) > 100:
            raise _Reject(400, "at most 100 subjectIds per request")
        try:
            return [check_id(i) for i in ids], action
        except PrivacyError as exc:
            raise _Reject(400, str(exc)) from None

    def _authenticate(self, key: str | None, remote: str | None) -> Source:
        """The key's source, if it may send from ``remote`` (the client's address)."""
        source = self.keys.source_for(key)
        if source is None:
            raise _Reject(401, "missing or unknown write key: send it as the HTTP Basic "
                          "username (or as writeKey in the body)")
        if source.dev and not is_loopback(remote):
            raise _Reject(403, "the development write key is accepted only from this machine; "
                          "set JOURNEY_COLLECTOR_WRITE_KEYS to keys of your own")
        return source

    def _check_trust(self, tp: Any, source: Source) -> None:
        if source.kind == "client" and tp.type in self.server_only:
            raise SchemaError(f"{tp.type} may only come from a server write key (source "
                              f"{source.name!r} is a client key: browsers and apps cannot "
                              "vouch for it)", field="$.type", reason="forbidden_type")

    async def _body(self, request: web.Request, encoding: str) -> bytes:
        """The body, decompressed, at most MAX_BATCH_BYTES either way.

        aiohttp would decompress on its own, without a bound on the output, and then
        hand over a body that no longer matches its Content-Encoding header (gzip bodies
        were rejected as "not valid gzip"); the collector turns that off
        (``auto_decompress=False``) and inflates here, stopping at the bound.
        """
        if encoding not in _INFLATE:
            raise _Reject(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate "
                          "or none)")
        if (request.content_length or 0) > MAX_BATCH_BYTES:
            raise _Reject(413, f"the body is over {MAX_BATCH_BYTES // 1024} KB")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Reject(413, f"the body is over {MAX_BATCH_BYTES // 1024} KB") from None
        body = inflate(body, encoding, MAX_BATCH_BYTES)
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
        return self.bounds.check(decode_touchpoint(_encoder.encode(candidate)), received_at)

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


#: Content-Encoding → zlib's wbits for it (deflate: zlib-wrapped as HTTP says; raw
#: deflate, which some clients send, is tried when that fails).
_INFLATE = {"identity": None, "gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
            "deflate": zlib.MAX_WBITS}


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decompressed as ``encoding`` says, never more than ``limit`` bytes of it
    (a gzip bomb costs the collector ``limit`` bytes, not gigabytes)."""
    wbits = _INFLATE[encoding]
    if wbits is None:
        return body
    for bits in (wbits, -zlib.MAX_WBITS) if encoding == "deflate" else (wbits,):
        inflater = zlib.decompressobj(bits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise _Reject(413, f"the body is over {limit // 1024} KB decompressed")
        if not inflater.eof:
            raise _Reject(400, f"the body is not complete {encoding} data")
        return out
    raise _Reject(400, f"the body is not valid {encoding} data")


def run_collector(settings: Settings) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=settings.python_log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    collector = Collector(settings)
    if not collector.keys:
        raise SystemExit("journey collector: no write keys configured "
                         "(JOURNEY_COLLECTOR_WRITE_KEYS)")
    web.run_app(collector.app(), host=settings.collector_host, port=settings.collector_port,
                print=lambda msg: log.info("%s", msg), access_log=None,
                auto_decompress=False)  # inflated in Collector._body, within bounds
