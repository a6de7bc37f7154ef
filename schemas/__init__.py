"""Touchpoint contracts and service configuration: the leaf every other package depends on."""

from schemas.errors import SchemaError
from schemas.touchpoint import (
    CHANNELS,
    STAGES,
    TOUCHPOINT_TYPES,
    Touchpoint,
    decode_touchpoint,
    decode_trusted,
    encode_touchpoint,
    journey_key,
    new_event_id,
    utcnow,
    validate,
)

__all__ = [
    "CHANNELS",
    "STAGES",
    "TOUCHPOINT_TYPES",
    "SchemaError",
    "Touchpoint",
    "decode_touchpoint",
    "decode_trusted",
    "encode_touchpoint",
    "journey_key",
    "new_event_id",
    "utcnow",
    "validate",
]
