"""Segment HTTP Tracking API messages → our touchpoints (pure functions).

So that existing Segment or RudderStack SDKs can point at the collector unchanged:
``track`` events of Segment's e-commerce and email specs map to our types, a
``track`` whose event name already is one of our types maps directly, ``page`` is a
page_view and ``identify`` links the anonymous id to the customer.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from schemas import TOUCHPOINT_TYPES, SchemaError

__all__ = ["EVENT_NAMES", "derived_message_id", "to_touchpoint"]

#: Segment spec event names → touchpoint types.
EVENT_NAMES: Final[dict[str, str]] = {
    "Product Viewed": "product_viewed",
    "Product Added": "cart_updated",
    "Product Removed": "cart_updated",
    "Checkout Started": "checkout_started",
    "Order Completed": "order_placed",
    "Order Refunded": "return_completed",
    "Product Reviewed": "review_submitted",
    "Email Opened": "email_opened",
    "Email Link Clicked": "email_clicked",
    "Signed Up": "account_created",
    "Promotion Viewed": "ad_impression",
    "Promotion Clicked": "ad_click",
}

_CHANNELS: Final = {"browser": "web", "mobile": "app", "server": "other"}


def to_touchpoint(message: dict[str, Any], *, received_at: datetime, source: str,
                  sent_at: str | None = None) -> dict[str, Any]:
    """One Segment message as a touchpoint dict, ready for schema validation.

    Raises :class:`SchemaError` for what cannot be mapped at all; everything else is
    left to the touchpoint schema, so that the same rules apply on every path.
    """
    for name in ("properties", "traits", "context"):
        if message.get(name) is not None and not isinstance(message[name], dict):
            raise SchemaError(f"{name} must be an object", field=f"$.{name}",
                              reason="invalid_field")
    kind = message.get("type")
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name:
            raise SchemaError("track needs an event name", field="$.event", reason="invalid_field")
        type_ = name if name in TOUCHPOINT_TYPES else EVENT_NAMES.get(name)
        if type_ is None:
            raise SchemaError(f"event {name!r} is neither a touchpoint type nor a mapped Segment "
                              "spec event (`journey schemas` lists the types)", field="$.event",
                              reason="unknown_type")
        props = _properties(name, dict(message.get("properties") or {}))
    elif kind == "page":
        type_ = "page_view"
        props = dict(message.get("properties") or {})
        if message.get("name") and "title" not in props:
            props["title"] = message["name"]
    elif kind == "identify":
        type_ = "identify"
        props = {"traits": message.get("traits") or {}}
    else:
        raise SchemaError(f"message type {kind!r} is not supported (track, page, identify)",
                          field="$.type", reason="unsupported_message")
    context = message.get("context") or {}
    channel = message.get("channel") or context.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise SchemaError("channel must be a string", field="$.channel", reason="invalid_field")
    touchpoint: dict[str, Any] = {
        "event_id": message.get("messageId") or derived_message_id(
            message, source, sent_at or received_at.isoformat()),
        "type": type_,
        "version": message.get("version", 1),
        "occurred_at": _occurred_at(message, received_at, sent_at),
        "received_at": received_at.isoformat(),
        "customer_id": message.get("userId") or None,
        "anonymous_id": message.get("anonymousId") or None,
        "session_id": message.get("sessionId") or None,
        "channel": _CHANNELS.get(channel, channel) if channel else "web",
        "source": source,
        "context": context,
        "properties": props,
    }
    for key in ("customer_id", "anonymous_id", "session_id"):
        value = touchpoint[key]
        if value is not None:
            if not isinstance(value, str | int):  # Segment allows numbers as ids
                raise SchemaError(f"{key} must be a string", field=f"$.{key}",
                                  reason="invalid_field")
            touchpoint[key] = str(value)
    return touchpoint


def derived_message_id(message: dict[str, Any], source: str, sent: str) -> str:
    """An event id for a message that has no ``messageId`` (Segment's HTTP API does not
    require one): a digest of the write key's source and the message, so that a retry
    of the same payload gets the same id and counts once. A message with no timestamp of
    its own also mixes in ``sent`` (the batch's sentAt, else when it was received): two
    identical page views a minute apart are two visits, not a retry."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(source.encode() + b"\0")
    digest.update(msgspec.json.encode(message, order="sorted"))
    if not (message.get("timestamp") or message.get("originalTimestamp")):
        digest.update(b"\0" + sent.encode())
    return "gen-" + digest.hexdigest()


def _properties(name: str, props: dict[str, Any]) -> dict[str, Any]:
    """Segment spec property names → ours; the rest is kept as sent."""
    if "sku" not in props and "product_id" in props and name.startswith("Product"):
        props["sku"] = str(props["product_id"])
    if name in ("Product Added", "Product Removed"):
        props.setdefault("action", "add" if name == "Product Added" else "remove")
    elif name == "Order Completed":
        if "revenue" not in props and "total" in props:
            props["revenue"] = props["total"]
        if isinstance(props.get("currency"), str):
            props["currency"] = props["currency"].upper()
    elif name == "Order Refunded":
        props.setdefault("refund", props.get("total"))
    elif name == "Product Reviewed":
        if "review_body" in props:
            props.setdefault("text", props["review_body"])
    elif name in ("Email Opened", "Email Link Clicked"):
        if "email_id" in props:
            props["email_id"] = str(props["email_id"])
        if "link_url" in props:
            props.setdefault("url", props["link_url"])
    elif name in ("Promotion Viewed", "Promotion Clicked"):
        props.setdefault("ad_id", props.get("promotion_id") or props.get("creative"))
        props.setdefault("campaign", props.get("name"))
    return props


def _occurred_at(message: dict[str, Any], received_at: datetime, sent_at: str | None) -> str:
    """Client time, corrected for the client's clock skew as Segment does.

    ``timestamp + (received_at - sentAt)``: a phone whose clock is an hour off sends
    both its timestamp and its send time an hour off, and the difference cancels.
    """
    raw = message.get("timestamp") or message.get("originalTimestamp")
    if not raw:
        return received_at.isoformat()
    occurred = _parse(raw, "$.timestamp")
    sent = message.get("sentAt") or sent_at
    if sent:
        try:
            occurred = occurred + (received_at - _parse(sent, "$.sentAt"))
        except OverflowError:
            raise SchemaError("timestamp and sentAt are too far apart to correct the clock "
                              "skew", field="$.sentAt", reason="out_of_bounds") from None
    return occurred.isoformat()


def _parse(raw: object, field: str) -> datetime:
    if not isinstance(raw, str):
        raise SchemaError("expected an ISO 8601 time", field=field, reason="invalid_field")
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise SchemaError(f"{raw[:64]!r} is not an ISO 8601 time", field=field,
                          reason="invalid_field") from None
    if value.tzinfo is None:
        raise SchemaError("the time needs a timezone", field=field, reason="invalid_field")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset
        raise SchemaError(f"{raw[:64]!r} is out of range", field=field,
                          reason="out_of_bounds") from None
