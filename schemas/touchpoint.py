"""The touchpoint envelope: the one wire contract between producers and processors.

Every touchpoint is a JSON object. The envelope is the same for all types; what each
type carries in ``properties`` is described by the taxonomy below (per-type property
schemas deepen in later versions without changing the envelope).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from schemas.errors import SchemaError
from schemas.properties import SCHEMAS, SURVEY_RANGES, SurveyResponse, properties_model

__all__ = [
    "CHANNELS",
    "STAGES",
    "TOUCHPOINT_TYPES",
    "Channel",
    "Touchpoint",
    "decode_touchpoint",
    "decode_trusted",
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
_Short = Annotated[str, msgspec.Meta(max_length=128)]
_UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


class Touchpoint(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One thing that happened between a customer and the brand.

    ``event_id`` is made by the client and is the idempotency key: a retry or a
    redelivery carries the same id and must change nothing downstream.
    """

    event_id: _Id
    type: str
    version: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    occurred_at: _UtcTime
    received_at: _UtcTime | None = None
    customer_id: _Id | None = None
    anonymous_id: _Id | None = None
    session_id: _Short | None = None
    channel: Channel = "web"
    source: _Short = ""
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


_MISSING = re.compile(r"^Object missing required field `([^`]+)`")


def _message_and_field(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's message and JSON path, pointing a missing field at the field itself."""
    message, _, path = str(exc).partition(" - at `")
    field = path.rstrip("`") or "$"
    missing = _MISSING.match(message)
    if missing:
        field = f"{field}.{missing.group(1)}"
    return message, field


def _check(tp: Touchpoint) -> Touchpoint:
    if tp.type not in TOUCHPOINT_TYPES:
        raise SchemaError(f"unknown touchpoint type {tp.type!r}; `journey schemas` lists "
                          "the types", field="$.type",
                          reason="unknown_type")
    model = properties_model(tp.type, tp.version)
    if model is None:
        known = sorted(v for t, v in SCHEMAS if t == tp.type)
        raise SchemaError(f"{tp.type} has no version {tp.version} (known: {known})",
                          field="$.version", reason="unknown_version")
    try:
        props = msgspec.convert(tp.properties, model)
    except msgspec.ValidationError as exc:
        message, field = _message_and_field(exc)
        raise SchemaError(message, field="$.properties" + field[1:],
                          reason="invalid_property") from None
    if isinstance(props, SurveyResponse):
        low, high = SURVEY_RANGES[props.survey]
        if not low <= props.score <= high:
            raise SchemaError(f"a {props.survey} score is {low} to {high}, got {props.score}",
                              field="$.properties.score", reason="invalid_property")
    if tp.type == "identify" and not tp.customer_id:
        raise SchemaError("identify links an anonymous id to a customer: customer_id is "
                          "required", field="$.customer_id", reason="missing_identity")
    journey_key(tp.customer_id, tp.anonymous_id)
    return tp


_decoder = msgspec.json.Decoder(Touchpoint)
_encoder = msgspec.json.Encoder()


def decode_touchpoint(data: bytes | str) -> Touchpoint:
    """Parse and validate one JSON touchpoint, raising :class:`SchemaError` naming the field."""
    try:
        tp = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        message, field = _message_and_field(exc)
        raise SchemaError(message, field=field, reason="invalid_field") from exc
    except msgspec.DecodeError as exc:
        raise SchemaError(f"not valid JSON: {exc}", reason="malformed_json") from exc
    return _check(tp)


def decode_trusted(data: bytes) -> Touchpoint:
    """Decode a touchpoint validated once already (the worker's internal topics).

    Only the envelope's types are checked; the property schemas and identity rules ran
    where the touchpoint entered, so they are not paid again at every hop.
    """
    return _decoder.decode(data)


def validate(tp: Touchpoint) -> Touchpoint:
    """Validate a touchpoint built in code (the SDK) exactly as the wire decoder would."""
    return decode_touchpoint(_encoder.encode(tp))


def encode_touchpoint(tp: Touchpoint) -> bytes:
    return _encoder.encode(tp)


def utcnow() -> datetime:
    return datetime.now(UTC)
