"""Who may send what: write keys (stored only as SHA-256 hashes), their sources' trust,
and rate limits per key and per client address."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import time
from dataclasses import dataclass
from typing import Final, Literal

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

__all__ = ["DEV_KEY", "RateLimiter", "Source", "WriteKeys", "basic_username", "hash_key",
           "is_loopback"]

#: The development key the default settings accept, from this machine only.
DEV_KEY: Final = "dev-write-key"

Kind = Literal["client", "server"]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


_DEV_HASH: Final = hash_key(DEV_KEY)


@dataclass(frozen=True, slots=True)
class Source:
    """Where events come from, as its write key says.

    ``client``: a browser or an app. Its key is public (it ships in a page), so what it
    sends is what a visitor could type: it may not send the server-only types.
    ``server``: a shop's backend, which holds its key as a secret.
    """

    name: str
    kind: Kind = "client"
    #: The development key: accepted only from a loopback address.
    dev: bool = False


class WriteKeys:
    """Parsed from ``source[:kind]=sha256hex,...`` (JOURNEY_COLLECTOR_WRITE_KEYS)."""

    def __init__(self, spec: str) -> None:
        self._by_hash: dict[str, Source] = {}
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            label, sep, digest = entry.partition("=")
            name, _, kind = label.partition(":")
            digest = digest.removeprefix("sha256:").lower()
            kind = kind or "client"
            if not sep or len(digest) != 64 or not name or kind not in ("client", "server"):
                raise ValueError(f"write key entry {entry!r} must be source[:client|:server]="
                                 "<sha256 hex>; make one with `journey collector --hash-key KEY`")
            self._by_hash[digest] = Source(name, kind,  # type: ignore[arg-type]
                                           dev=hmac.compare_digest(digest, _DEV_HASH))

    def __len__(self) -> int:
        return len(self._by_hash)

    def source_for(self, key: str | None) -> Source | None:
        """The source a key belongs to, or None. Hash comparison in constant time."""
        if not key:
            return None
        digest = hash_key(key)
        found = None
        for known, source in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                found = source
        return found


def basic_username(header: str | None) -> str | None:
    """The username of an HTTP Basic header: where Segment SDKs put the write key."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class RateLimiter:
    """``rate`` events per second and bursts of ``burst``, per identifier (a key, or a
    key and a client address).

    The `limits` library's sliding-window counter: O(1) memory per identifier, and its
    memory storage expires identifiers that went quiet, so a flood of client addresses
    does not grow the collector's memory for good (a hand-made dict of buckets did).
    A window of ``burst / rate`` seconds holding ``burst`` events is what a token bucket
    of that rate and burst allows on average.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        amount = max(1, math.ceil(burst))
        self._item = RateLimitItemPerSecond(amount, max(1, math.ceil(amount / rate)))
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    async def take(self, identifier: str, events: int) -> float:
        """Count ``events``; returns 0 when allowed, else seconds to wait before retrying."""
        if events <= 0 or await self._limiter.hit(self._item, identifier, cost=events):
            return 0.0
        stats = await self._limiter.get_window_stats(self._item, identifier)
        return max(1.0, stats.reset_time - time.time())
