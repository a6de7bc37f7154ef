"""Personal data: pseudonyms of ids, and the redaction of named fields at ingress.

Both are keyed hashes (BLAKE2b with ``JOURNEY_PRIVACY_KEY``): a plain SHA-256 of an
email or a customer id is undone by hashing a list of candidates, a keyed one is not
without the key. The same key everywhere (collector, SDK, worker, ``journey forget``)
makes the same id hash alike, so a suppressed id is recognised without being stored,
and hashed emails still join across tables.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.touchpoint import Touchpoint

__all__ = ["HASHED_PREFIX", "Redaction", "id_hash", "pseudonym", "truncate_ip"]

#: What a hashed value starts with: an analyst sees it was hashed, and hashing it again
#: (a touchpoint redacted by the SDK, then by the worker) leaves it as it is.
HASHED_PREFIX = "hmac:"


def _keyed(text: str, key: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16,
                           key=key.encode()[:64] or b"\0").hexdigest()


def id_hash(value: str, key: str) -> str:
    """The pseudonym of a customer or device id: what suppression lists and the audit
    table hold instead of the id."""
    return _keyed("id\0" + value, key)


def pseudonym(value: str, key: str) -> str:
    """A field's value, hashed: trimmed and lower-cased first, so that ``A@x.com `` and
    ``a@x.com`` stay one person for an analyst's join."""
    if value.startswith(HASHED_PREFIX):
        return value
    return HASHED_PREFIX + _keyed("field\0" + value.strip().lower(), key)


def truncate_ip(value: str) -> str | None:
    """An IP address with its host part zeroed (IPv4 /24, IPv6 /48, as Google Analytics
    does); None when it is no address (the field is dropped then)."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


@dataclass(frozen=True)
class Redaction:
    """Named fields of a touchpoint (dotted paths from the top: ``context.ip``,
    ``properties.traits.email``) to hash, to drop, or to truncate as IP addresses."""

    key: str
    hash: frozenset[str] = frozenset()
    drop: frozenset[str] = frozenset()
    truncate_ip: frozenset[str] = frozenset()

    @classmethod
    def of(cls, key: str, *, hash: Iterable[str] = (), drop: Iterable[str] = (),
           truncate_ip: Iterable[str] = ()) -> Redaction:
        return cls(key, frozenset(hash), frozenset(drop), frozenset(truncate_ip))

    def __bool__(self) -> bool:
        return bool(self.hash or self.drop or self.truncate_ip)

    def apply(self, tp: Touchpoint) -> Touchpoint:
        """``tp`` with its named fields redacted; ``tp`` itself when none is present."""
        if not self or not (tp.context or tp.properties):
            return tp
        top = {"context": tp.context, "properties": tp.properties}
        changed = False
        for paths, action in ((self.drop, "drop"), (self.truncate_ip, "ip"),
                              (self.hash, "hash")):
            for path in paths:
                changed |= self._redact(top, path.split("."), action)
        if not changed:
            return tp
        return msgspec.structs.replace(tp, context=top["context"], properties=top["properties"])

    def _redact(self, top: dict[str, Any], parts: list[str], action: str) -> bool:
        """Redact one path in place, copying each dict on the way (the touchpoint's own
        dicts are shared with whoever decoded it)."""
        node: Any = top
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                return False
            child = dict(child)
            node[part] = child
            node = child
        last = parts[-1]
        if not isinstance(node, dict) or last not in node:
            return False
        value = node[last]
        if action == "drop":
            del node[last]
        elif action == "ip":
            truncated = truncate_ip(value) if isinstance(value, str) else None
            if truncated == value:
                return False
            if truncated is None:
                del node[last]
            else:
                node[last] = truncated
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            hashed = pseudonym(str(value), self.key)
            if hashed == value:
                return False
            node[last] = hashed
        else:  # an object or a list where a scalar was named: nothing to hash, so dropped
            del node[last]
        return True
