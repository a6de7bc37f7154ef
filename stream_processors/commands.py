"""Messages on the internal topics: journey commands, watermarks and metric partials."""

from __future__ import annotations

from datetime import datetime

import msgspec

from stream_processors.journey import JourneyLog

__all__ = ["BUNDLE_KEY", "PRIVACY_KEY", "WATERMARK_KEY", "Command", "Expire", "Forget", "Link",
           "Marks", "Merge", "MergeInto", "Partial", "Sweep", "Tick", "Touch", "Unsuppress",
           "Watermark", "decode_bundle",
           "decode_command", "decode_partial", "encode_bundle", "encode_command",
           "encode_partial"]

#: Key of watermark markers. They are sent to an explicit partition (every one of
#: them), so the key only tells them apart from touchpoints on the by-device topic.
WATERMARK_KEY = b"\x00watermark"
#: Key of a bundle: many (key, value) messages for one partition sent as one, so that
#: the internal hops pay the broker's and Faust's per-message cost once per bundle.
BUNDLE_KEY = b"\x00bundle"
#: Key of the privacy commands ``journey forget`` sends to every partition of the
#: by-device and journey topics (each to an explicit partition, like watermarks).
PRIVACY_KEY = b"\x00privacy"


class Touch(msgspec.Struct, tag="touch"):
    """Touchpoints for this journey (or, on the by-device topic, from this device);
    ``customer_id`` is the resolved customer, if any."""

    customer_id: str | None
    touchpoints: list[bytes]


class Link(msgspec.Struct, tag="link"):
    """To a device (by-device topic): a touchpoint named both it and ``customer_id``.

    The touchpoint itself went straight to the customer's journey; only the link
    travels through the device's partition, where the first one merges the device's
    anonymous journey."""

    customer_id: str


class MergeInto(msgspec.Struct, tag="merge_into"):
    """To an anonymous journey: the device was identified; move to ``customer_id``."""

    customer_id: str


class Merge(msgspec.Struct, tag="merge"):
    """To a customer's journey: an identified device's anonymous journey joins it."""

    log: JourneyLog


class Sweep(msgspec.Struct, tag="sweep"):
    """To a journey that looked inactive to the churn sweep: fold it again with today's
    clock. A command, not a direct write, so its rows, alerts and state go through the
    same crash-safe path as a touchpoint's."""


class Expire(msgspec.Struct, tag="expire"):
    """To a journey or a device that looked past its retention to the sweep: forget it,
    if it still is (a command, so the delete takes the crash-safe path)."""


class Watermark(msgspec.Struct, tag="watermark"):
    """Everything from ``channel`` before this marker occurred before ``at``.

    A channel is a source partition (``t<n>``, straight from the touchpoints topic), a
    by-device partition (``d<n>``, after identity resolution), or a journey partition
    (``j<n>``, to the aggregator: ``at`` is then its horizon, windows ending by then are
    closed there). ``idle``: no traffic.
    """

    channel: str
    at: datetime | None
    idle: bool = False


class Marks(msgspec.Struct, tag="marks"):
    """Every watermark a stage has for one downstream partition, in one message: a
    marker per input and target would make O(P²) messages per interval."""

    marks: list[Watermark]


class Forget(msgspec.Struct, tag="forget"):
    """To every partition of a stage (stream_processors/privacy.py sends it): from here
    on, drop whatever names an id whose hash is in ``hashes``; erase the keys this
    partition holds among ``journeys`` (journey topic) or ``devices`` (by-device topic),
    and, on the by-device topic, every link to one of ``customers``. Each partition
    acknowledges with a ``privacy_acks`` row for ``request``."""

    request: str
    hashes: list[str]
    customers: list[str] = []
    devices: list[str] = []
    journeys: list[str] = []


class Unsuppress(msgspec.Struct, tag="unsuppress"):
    """To every partition of a stage: the ids behind ``hashes`` may be collected again."""

    request: str
    hashes: list[str]


class Tick(msgspec.Struct, tag="tick"):
    """To an aggregator partition (cx-partials), sent by the worker that holds it: run a
    batch. Open windows' rows are written inside a batch, at most every
    JOURNEY_CX_UPDATE_SECONDS; parts that came in between would wait for the next input,
    which may never come once traffic stops. Not a watermark: it says nothing of event
    time, so it does not join the partition's low watermark."""


Command = (Touch | Link | MergeInto | Merge | Sweep | Expire | Watermark | Marks | Forget
           | Unsuppress | Tick)


class Partial(msgspec.Struct, array_like=True):
    """One journey partition's part of one metric window (its whole part, so far)."""

    partition: int
    numerator: float
    denominator: float
    samples: int


_encoder = msgspec.msgpack.Encoder()  # one for every message of this module
_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> Command:
    return _decoder.decode(data)


_partial_decoder = msgspec.msgpack.Decoder(Partial)


def encode_partial(partial: Partial) -> bytes:
    return _encoder.encode(partial)


def decode_partial(data: bytes) -> Partial:
    return _partial_decoder.decode(data)


_bundle_decoder = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])


def encode_bundle(items: list[tuple[bytes, bytes]]) -> bytes:
    return _encoder.encode(items)


def decode_bundle(data: bytes) -> list[tuple[bytes, bytes]]:
    return _bundle_decoder.decode(data)
