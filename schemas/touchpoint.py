"""The touchpoint envelope: the one wire contract between producers and processors.

Every touchpoint is a JSON object. The envelope is the same for all types; what each
type carries in ``properties`` is described by the taxonomy below (per-type property
schemas deepen in later versions without changing the envelope).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from schemas.errors import SchemaError

__all__ = [
    "CHANNELS",
    "STAGES",
    "TOUCHPOINT_TYPES",
    "Channel",
    "Touchpoint",
    "decode_touchpoint",
    "encode_touchpoint",
    "journey_key",
    "new_event_id",
]

#: Journey stages in the order a customer normally moves through them.
STAGES: Final = ("awareness", "consideration", "purchase", "fulfilment", "post_purchase",
                 "service", "feedback", "lifecycle")

#: Every touchpoint type, and the stage of the journey it belongs to.
TOUCHPOINT_TYPES: Final[dict[str, str]] = {
    "ad_impression": "awareness",
    "ad_click": "awareness",
    "email_opened": "awareness",
    "email_clicked": "awareness",
    "social_engaged": "awareness",
    "page_view": "consideration",
    "product_viewed": "consideration",
    "cart_updated": "consideration",
    "checkout_started": "consideration",
    "order_placed": "purchase",
    "payment_failed": "purchase",
    "order_shipped": "fulfilment",
    "delivery_updated": "fulfilment",
    "package_opened": "fulfilment",
    "return_requested": "post_purchase",
    "return_completed": "post_purchase",
    "review_submitted": "post_purchase",
    "support_ticket_opened": "service",
    "support_message": "service",
    "support_ticket_resolved": "service",
    "support_ticket_reopened": "service",
    "survey_response": "feedback",
    "identify": "lifecycle",
    "account_created": "lifecycle",
    "subscription_cancelled": "lifecycle",
}

Channel = Literal["web", "app", "email", "sms", "phone", "chat", "social", "store", "ad", "other"]
CHANNELS: Final = Channel.__args__

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


class Touchpoint(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One thing that happened between a customer and the brand.

    ``event_id`` is made by the client and is the idempotency key: a retry or a
    redelivery carries the same id and must change nothing downstream.
    """

    event_id: _Id
    type: str
    version: Annotated[int, msgspec.Meta(ge=1)] = 1
    occurred_at: _UtcTime
    received_at: _UtcTime | None = None
    customer_id: _Id | None = None
    anonymous_id: _Id | None = None
    session_id: str | None = None
    channel: Channel = "web"
    source: str = ""
    context: dict[str, Any] = {}
    properties: dict[str, Any] = {}

    @property
    def key(self) -> str:
        """The partitioning key: a customer's events share a partition and keep their order."""
        return journey_key(self.customer_id, self.anonymous_id)


def journey_key(customer_id: str | None, anonymous_id: str | None) -> str:
    """Key by customer when known, else by the anonymous (device) id."""
    key = customer_id or anonymous_id
    if not key:
        raise SchemaError("a touchpoint needs customer_id or anonymous_id",
                          field="$.customer_id", reason="missing_identity")
    return key


def new_event_id() -> str:
    return str(uuid.uuid4())


def _check(tp: Touchpoint) -> Touchpoint:
    if tp.type not in TOUCHPOINT_TYPES:
        raise SchemaError(f"unknown touchpoint type {tp.type!r}", field="$.type",
                          reason="unknown_type")
    journey_key(tp.customer_id, tp.anonymous_id)
    return tp


_decoder = msgspec.json.Decoder(Touchpoint)
_encoder = msgspec.json.Encoder()


def decode_touchpoint(data: bytes | str) -> Touchpoint:
    """Parse and validate one JSON touchpoint, raising :class:`SchemaError` naming the field."""
    try:
        tp = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in message else "$"
        raise SchemaError(message.split(" - at `")[0], field=field, reason="invalid_field") from exc
    except msgspec.DecodeError as exc:
        raise SchemaError(f"not valid JSON: {exc}", reason="malformed_json") from exc
    return _check(tp)


def validate(tp: Touchpoint) -> Touchpoint:
    """Validate a touchpoint built in code (the SDK) exactly as the wire decoder would."""
    return decode_touchpoint(_encoder.encode(tp))


def encode_touchpoint(tp: Touchpoint) -> bytes:
    return _encoder.encode(tp)


def utcnow() -> datetime:
    return datetime.now(UTC)
