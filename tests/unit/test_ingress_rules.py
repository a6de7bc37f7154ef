"""Who may send what, and when it may have happened (issue 13), without a server."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta

import pytest

from producers.collector.app import Collector, _Reject, inflate
from producers.collector.auth import DEV_KEY, RateLimiter, WriteKeys, hash_key, is_loopback
from schemas import SchemaError, Touchpoint
from schemas.bounds import TimeBounds
from schemas.settings import ConfigError, Settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def at(**delta: float) -> Touchpoint:
    return Touchpoint(event_id="e", type="page_view", anonymous_id="a",
                      occurred_at=NOW + timedelta(**delta))


@pytest.mark.parametrize(("delta", "ok"), [
    ({"days": -365}, True), ({"days": -365, "seconds": -1}, False),
    ({"hours": 1}, True), ({"hours": 1, "seconds": 1}, False), ({}, True)])
def test_time_bounds_around_the_receipt(delta, ok) -> None:
    bounds = TimeBounds(timedelta(days=365), timedelta(hours=1))
    if ok:
        assert bounds.check(at(**delta), NOW).event_id == "e"
    else:
        with pytest.raises(SchemaError) as info:
            bounds.check(at(**delta), NOW)
        assert (info.value.reason, info.value.field) == ("out_of_bounds", "$.occurred_at")


def test_the_reference_is_the_receipt_when_known() -> None:
    tp = Touchpoint(event_id="e", type="page_view", anonymous_id="a",
                    occurred_at=NOW - timedelta(days=2), received_at=NOW - timedelta(days=1))
    assert TimeBounds(timedelta(days=1, hours=1)).check(tp, NOW + timedelta(days=30)) is tp


def test_nothing_before_1970_even_with_a_generous_age() -> None:
    with pytest.raises(SchemaError):
        TimeBounds(timedelta(days=3650 * 10)).check(
            Touchpoint(event_id="e", type="page_view", anonymous_id="a",
                       occurred_at=datetime(1969, 12, 31, tzinfo=UTC)),
            datetime(1975, 1, 1, tzinfo=UTC))


def test_write_keys_carry_their_kind_and_client_is_the_default() -> None:
    keys = WriteKeys(f"web={hash_key('w')},backend:server=sha256:{hash_key('b')},"
                     f"app:client={hash_key('a')}")
    assert [(s.name, s.kind) for s in map(keys.source_for, "wba")] == [
        ("web", "client"), ("backend", "server"), ("app", "client")]
    assert keys.source_for("nope") is None and keys.source_for(None) is None
    with pytest.raises(ValueError, match="source"):
        WriteKeys(f"web:admin={hash_key('w')}")


def test_the_dev_key_works_only_from_loopback() -> None:
    collector = Collector(Settings())  # the default: the dev key, as a server key
    source = collector._authenticate(DEV_KEY, "127.0.0.1")
    assert (source.name, source.kind, source.dev) == ("dev", "server", True)
    assert collector._authenticate(DEV_KEY, "::1").dev
    with pytest.raises(_Reject) as info:
        collector._authenticate(DEV_KEY, "192.168.1.20")
    assert info.value.status == 403 and "JOURNEY_COLLECTOR_WRITE_KEYS" in info.value.message
    other = Collector(Settings(collector_write_keys=f"shop:server={hash_key('k')}"))
    assert other._authenticate("k", "203.0.113.9").name == "shop"  # a real key: anywhere
    assert [is_loopback(a) for a in ("127.0.0.2", "::1", "10.0.0.1", None, "junk")] == [
        True, True, False, False, False]


def test_decompression_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(_Reject) as info:
        inflate(bomb, "gzip", 500 * 1024)
    assert info.value.status == 413
    assert inflate(gzip.compress(b"{}"), "gzip", 10) == b"{}"
    with pytest.raises(_Reject):
        inflate(gzip.compress(b"{}")[:-4], "gzip", 10)  # truncated


def test_rate_limits_allow_a_burst_then_ask_to_wait() -> None:
    async def run() -> list[float]:
        limiter = RateLimiter(rate=2.0, burst=10.0)
        return [await limiter.take("k", 6), await limiter.take("k", 4),
                await limiter.take("k", 1), await limiter.take("other", 10)]

    first, second, third, other = asyncio.run(run())
    assert (first, second, other) == (0.0, 0.0, 0.0)
    assert third >= 1.0


def test_settings_never_show_the_clickhouse_password() -> None:
    s = Settings(clickhouse_url="clickhouse://journey:s3cret@db:9000/journey")
    assert "s3cret" not in repr(s) and "journey:***@db" in repr(s)
    assert "s3cret" not in str(s.describe())
    assert hash_key(DEV_KEY) not in repr(Settings())


def test_server_only_types_must_be_known() -> None:
    with pytest.raises(ConfigError, match="journey schemas"):
        Settings.from_env({"JOURNEY_SERVER_ONLY_TYPES": "delivery_updated,teleported"})
    assert "delivery_updated" in Settings().server_only


def test_a_message_without_an_id_gets_one_that_a_retry_repeats() -> None:
    from producers.collector.segment import to_touchpoint

    message = {"type": "track", "event": "page_view", "anonymousId": "a",
               "timestamp": "2026-06-01T11:00:00Z", "properties": {"path": "/", "x": 1}}
    reordered = {"properties": {"x": 1, "path": "/"}, "anonymousId": "a",
                 "timestamp": "2026-06-01T11:00:00Z", "event": "page_view", "type": "track"}

    def event_id(msg: dict, source: str = "shop", sent: str | None = None,
                 received: datetime = NOW) -> str:
        return to_touchpoint(msg, received_at=received, source=source, sent_at=sent)["event_id"]

    first = event_id(message)
    assert first.startswith("gen-") and len(first) == 36
    # A retry: later, another sentAt, keys in another order: the same id.
    assert event_id(reordered, sent="2026-06-01T12:00:05Z",
                    received=NOW + timedelta(seconds=5)) == first
    assert event_id(message, source="web") != first  # another source's event
    assert event_id({**message, "properties": {"path": "/b"}}) != first
    assert event_id({**message, "messageId": "m-1"}) == "m-1"  # given ids are kept
    # No timestamp of its own: when it was sent tells visits apart.
    bare = {"type": "page", "anonymousId": "a"}
    assert event_id(bare, sent="2026-06-01T11:00:00Z") == event_id(
        bare, sent="2026-06-01T11:00:00Z", received=NOW + timedelta(seconds=3))
    assert event_id(bare, sent="2026-06-01T11:00:00Z") != event_id(
        bare, sent="2026-06-01T11:01:00Z")
