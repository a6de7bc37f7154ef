"""Messages on the internal ``<prefix>.journey-events`` topic, keyed by journey."""

from __future__ import annotations

import msgspec

from stream_processors.journey import JourneyLog

__all__ = ["Command", "Merge", "MergeInto", "Touch", "decode_command", "encode_command"]


class Touch(msgspec.Struct, tag="touch"):
    """Touchpoints for this journey; ``customer_id`` is the resolved customer, if any."""

    customer_id: str | None
    touchpoints: list[bytes]


class MergeInto(msgspec.Struct, tag="merge_into"):
    """To an anonymous journey: the device was identified; move to ``customer_id``."""

    customer_id: str


class Merge(msgspec.Struct, tag="merge"):
    """To a customer's journey: an identified device's anonymous journey joins it."""

    log: JourneyLog


Command = Touch | MergeInto | Merge

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> Command:
    return _decoder.decode(data)
