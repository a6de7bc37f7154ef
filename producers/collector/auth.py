"""Write keys, stored only as SHA-256 hashes, each naming the source it belongs to."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

__all__ = ["RateLimiter", "WriteKeys", "hash_key"]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class WriteKeys:
    """Parsed from ``source=sha256hex,source2=sha256hex`` (JOURNEY_COLLECTOR_WRITE_KEYS)."""

    def __init__(self, spec: str) -> None:
        self._by_hash: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            source, sep, digest = entry.partition("=")
            digest = digest.removeprefix("sha256:").lower()
            if not sep or len(digest) != 64 or not source:
                raise ValueError(f"write key entry {entry!r} must be source=<sha256 hex>; make "
                                 "one with `journey collector --hash-key KEY`")
            self._by_hash[digest] = source

    def __len__(self) -> int:
        return len(self._by_hash)

    def source_for(self, key: str | None) -> str | None:
        """The source a key belongs to, or None. Hash comparison in constant time."""
        if not key:
            return None
        digest = hash_key(key)
        for known, source in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return source
        return None


def basic_username(header: str | None) -> str | None:
    """The username of an HTTP Basic header: where Segment SDKs put the write key."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


class RateLimiter:
    """A token bucket per write key: ``rate`` events per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, events: int, now: float | None = None) -> float:
        """Take ``events`` tokens; returns 0 when allowed, else seconds until they would be."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= events:
            self._buckets[key] = (tokens - events, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (events - tokens) / self.rate
