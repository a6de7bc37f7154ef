"""A journey's state is a summary plus a bounded tail, and stays exact where it promises.

The expected values come from the plain fold of every touchpoint in event-time order
(tests/truth.py), never from a compacted journey.
"""

import random
import zlib
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from producers.simulator import simulate
from schemas import decode_trusted
from schemas.partitioning import partition_for
from stream_processors.clickhouse.rows import journey_row
from stream_processors.commands import Link, Merge, MergeInto, Touch, decode_command
from stream_processors.dictionaries import DICTIONARIES, JOURNEYS_1
from stream_processors.effects import JOURNEY_EVENTS, Message
from stream_processors.journey import (
    COMPRESS_FROM,
    COMPRESS_UP_TO,
    SEEN_IDS,
    FoldState,
    Journey,
    JourneyEvent,
    JourneyLog,
    add_events,
    compact,
    decode_log,
    encode_log,
    event_of,
    fold,
)
from stream_processors.stages import JourneyUpdater
from stream_processors.stages.identity import IdentityResolver
from stream_processors.stages.per_partition import Decoded, PerPartition
from tests.reference import stored_msgpack
from tests.truth import journey_key, true_journeys
from tests.unit.test_stages import NOW, T0, P, as_dicts, tp, updater, window_state


def comparable(j: Journey) -> dict:
    """The journey's ``customer_journeys`` row, by column."""
    [row] = as_dicts([journey_row(j, 0, NOW)], "customer_journeys")
    return row


def test_a_summary_and_a_three_touchpoint_tail_fold_to_the_whole_journey() -> None:
    """In event-time order, in batches of any size: every journey, every stage a
    touchpoint's row was written with, and every transition row equal the plain fold."""
    people = simulate(300, seed=11)
    truth = true_journeys(people)
    rng = random.Random(5)
    folded_away = 0
    for person in people:
        key = journey_key(person)
        log = JourneyLog(key=key, customer_id=None if key.startswith("anon:") else key)
        events = [event_of(e) for e in person.events]
        stages: dict[str, str] = {}
        written: dict[int, tuple] = {}
        while events:
            n = rng.randint(1, 4)
            batch, events = events[:n], events[n:]
            added = add_events(log, batch)
            j = fold(log)
            stages.update({e.event_id: j.stage_at_event[e.event_id] for e in added})
            written.update({t.seq: t for t in j.transitions})
            for seq in range(j.transition_count + 1, max(written, default=0) + 1):
                written.pop(seq)
            folded_away += compact(log, tail=timedelta(hours=6), tail_touchpoints=3)
        expected = truth[key]
        assert comparable(fold(log)) == comparable(expected), key
        assert [written[s] for s in sorted(written)] == expected.transitions, key
        assert {e.event_id: stages[e.event_id] for e in person.events
                if e.event_id in stages} == {e.event_id: expected.stage_at_event[e.event_id]
                                             for e in person.events if e.event_id in stages}
        assert len(log.events) <= 3 + 4
    assert folded_away > 1000


def test_a_touchpoint_out_of_order_within_the_tail_takes_its_exact_place() -> None:
    people = simulate(200, seed=12)
    truth = true_journeys(people)
    rng = random.Random(6)
    for person in people:
        key = journey_key(person)
        log = JourneyLog(key=key, customer_id=None if key.startswith("anon:") else key)
        # Each touchpoint held back by up to 2 h; the tail keeps 12 h.
        arrival = sorted(person.events,
                         key=lambda e: e.occurred_at + timedelta(hours=rng.uniform(0, 2)))
        for e in arrival:
            add_events(log, [event_of(e)])
            fold(log)
            compact(log, tail=timedelta(hours=12), tail_touchpoints=1000)
        assert comparable(fold(log)) == comparable(truth[key]), key


def test_a_redelivered_id_folded_away_changes_nothing_and_one_behind_the_tail_counts() -> None:
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    log = JourneyLog(key="c", customer_id="c")
    views = [JourneyEvent(at=t0 + timedelta(minutes=n), event_id=f"e{n}", type="page_view",
                          channel="web") for n in range(100)]
    for e in views:
        add_events(log, [e])
        fold(log)
        compact(log, tail=timedelta(days=1), tail_touchpoints=10)
    assert len(log.events) == 10 and log.touchpoints == 100
    assert add_events(log, views[:50]) == []  # folded away, still known
    old = JourneyEvent(at=t0 - timedelta(days=3), event_id="old", type="order_placed",
                       channel="app", properties={"order_id": "o-1", "revenue": 12.5})
    assert add_events(log, [old]) == [old]  # behind the tail: folded into the summary
    j = fold(log)
    assert (j.touchpoints, j.orders, j.revenue, j.first_seen) == (101, 1, 12.5, old.at)
    assert j.order_channels == {"o-1": "app"}
    assert add_events(log, [old]) == []


def test_the_ids_a_journey_remembers_are_bounded() -> None:
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    log = JourneyLog(key="c", customer_id="c")
    for n in range(SEEN_IDS + 500):
        add_events(log, [JourneyEvent(at=t0 + timedelta(seconds=n), event_id=f"e{n}",
                                      type="page_view", channel="web")])
        fold(log)
        compact(log, tail=timedelta(days=1), tail_touchpoints=8)
    assert len(log.seen) == 8 * SEEN_IDS
    newest_forgotten = SEEN_IDS + 500 - 8 - SEEN_IDS - 1
    assert add_events(log, [JourneyEvent(at=t0, event_id=f"e{newest_forgotten + 1}",
                                         type="page_view", channel="web")]) == []


def test_a_device_journey_with_a_summary_joins_the_customers_counts() -> None:
    journeys: dict[bytes, bytes] = {}
    stage = updater()
    stage.tail_touchpoints = 5
    anon = b"anon:d-1"
    part = partition_for(anon, P)
    visits = [tp(f"v{n}", "page_view", n, anon="d-1") for n in range(40)]
    for n, visit in enumerate(visits):
        stage.update([Message(part, n, anon, Touch(None, [visit]))], journeys, {}, NOW, n)
    device = decode_log(journeys[anon])
    assert 5 <= len(device.events) <= 6 and device.base
    assert all(e.extra is not None and not e.raw for e in device.events)  # no raw JSON
    out = stage.update([Message(part, 50, anon, MergeInto("c-1"))], journeys, {}, NOW, 50)
    [(_, to, key, value)] = out.sent(JOURNEY_EVENTS)
    merge = decode_command(value)
    assert isinstance(merge, Merge) and key == b"c-1"
    buy = tp("b1", "order_placed", 100, customer="c-1", order_id="o", revenue=5)
    stage.update([Message(to, 1, key, Touch("c-1", [buy]))], journeys, {}, NOW, 51)
    out = stage.update([Message(to, 2, key, merge)], journeys, {}, NOW, 52)
    [row] = as_dicts(out.rows["customer_journeys"], "customer_journeys")
    assert (row["touchpoints"], row["orders"], row["type_counts"]) == (41, 1, [1, 40])
    # The tail's touchpoints are written again under the customer (the summary's stay
    # under the device, which the merged row links to the customer).
    assert sorted(r["event_id"] for r in as_dicts(out.rows["touchpoints"], "touchpoints")) \
        == sorted(f"v{n}" for n in range(35, 40))


def test_a_customers_journey_keeps_only_the_properties_it_reads() -> None:
    """A device's journey keeps its touchpoints whole (their rows are written again under
    the customer); a customer's keeps what the fold, alerts and CX metrics read, also of
    the touchpoints a merge brings in. The row written when a touchpoint arrives keeps
    everything."""
    journeys: dict[bytes, bytes] = {}
    stage = updater()
    anon = b"anon:d-9"
    part = partition_for(anon, P)
    visit = tp("v1", "page_view", 1, anon="d-9", url="/shoes", referrer="ad")
    stage.update([Message(part, 0, anon, Touch(None, [visit]))], journeys, {}, NOW, 0)
    [kept] = decode_log(journeys[anon]).events
    assert (kept.properties, kept.anonymous_id) == ({"url": "/shoes", "referrer": "ad"}, "d-9")

    out = stage.update([Message(part, 1, anon, MergeInto("c-9"))], journeys, {}, NOW, 1)
    [(_, to, key, merge)] = out.sent(JOURNEY_EVENTS)
    buy = tp("b9", "order_placed", 2, customer="c-9", anon="d-10", order_id="o-9",
             revenue=7.5, currency="EUR", items=[{"sku": "s-1", "quantity": 2}])
    out = stage.update([Message(to, 1, key, Touch("c-9", [buy]))], journeys, {}, NOW, 2)
    [row] = as_dicts(out.rows["touchpoints"], "touchpoints")
    assert msgspec.json.decode(row["properties"])["items"] == [{"sku": "s-1", "quantity": 2}]
    out = stage.update([Message(to, 2, key, decode_command(merge))], journeys, {}, NOW, 3)
    assert [r["event_id"] for r in as_dicts(out.rows["touchpoints"], "touchpoints")] == ["v1"]

    customer = decode_log(journeys[b"c-9"])
    assert {e.event_id: e.properties for e in customer.events} == {
        "v1": {}, "b9": {"order_id": "o-9", "revenue": 7.5}}
    assert all(e.anonymous_id is None and e.extra is None for e in customer.events)
    # ... and the devices it was seen on are still the journey's, from either path.
    [row] = as_dicts(out.rows["customer_journeys"], "customer_journeys")
    assert (row["orders"], row["revenue"], row["touchpoints"]) == (1, 7.5, 2)
    assert sorted(row["anonymous_ids"]) == ["d-10", "d-9"]


def every_field(value: object) -> object:
    """``value`` as it was stored before defaults were left out: every field written."""
    if isinstance(value, msgspec.Struct):
        fields = {f: every_field(getattr(value, f)) for f in value.__struct_fields__}
        return list(fields.values()) if value.__struct_config__.array_like else fields
    if isinstance(value, list):
        return [every_field(v) for v in value]
    if isinstance(value, dict):
        return {k: every_field(v) for k, v in value.items()}
    return value


def test_a_journey_is_stored_without_its_default_fields_and_reads_as_before() -> None:
    """Fields at their default are left out of the stored value (their names were a
    quarter of a journey's bytes); a value written with every field named, as before,
    reads back the same, and so does the short one in a reader that knows every field."""
    log = JourneyLog(key="c-1", customer_id="c-1")
    events = [event_of(decode_trusted(tp(f"e{n}", "page_view", n, customer="c-1")))
              for n in range(40)]
    add_events(log, events)
    fold(log)
    compact(log, tail=timedelta(seconds=5), tail_touchpoints=8)
    stored = encode_log(log)
    named = msgspec.msgpack.decode(stored_msgpack(stored))
    defaults = JourneyLog(key="")
    assert {f for f in named if named[f] == getattr(defaults, f)} == set()
    assert {"state", "merged_into", "pending_rated", "swept_version"}.isdisjoint(named)

    before = msgspec.msgpack.encode(every_field(log))
    assert len(stored) < len(before)
    assert decode_log(before) == decode_log(stored) == log


def test_a_journey_is_stored_compressed_with_the_dictionary_a_tiny_one_plain() -> None:
    """From COMPRESS_FROM bytes of msgpack the value is zlib-compressed with the
    journeys' dictionary, named in zlib's header: smaller than zlib alone makes it, and
    the same log once read. A value too short to gain stays plain msgpack."""
    tiny = JourneyLog(key="a-1", merged_into="c-1")
    plain = msgspec.msgpack.encode(tiny)
    assert len(plain) < COMPRESS_FROM and encode_log(tiny) == plain
    assert decode_log(plain) == tiny

    log = JourneyLog(key="c-2", customer_id="c-2")
    add_events(log, [event_of(decode_trusted(tp(f"e{n}", kind, n, customer="c-2")))
                     for n, kind in enumerate(["ad_click", "page_view", "product_viewed",
                                               "cart_updated", "page_view"])])
    fold(log)
    plain = msgspec.msgpack.encode(log)
    stored = encode_log(log)
    assert len(plain) >= COMPRESS_FROM and stored[0] == 0x78 and stored[1] & 0x20
    assert int.from_bytes(stored[2:6], "big") == zlib.adler32(JOURNEYS_1)
    inflater = zlib.decompressobj(zdict=JOURNEYS_1)
    assert inflater.decompress(stored) == plain and inflater.eof  # zlib's inflate
    assert len(stored) < 0.8 * len(zlib.compress(plain, 1))
    assert decode_log(stored) == decode_log(plain) == log


def test_a_journey_over_compress_up_to_is_kept_plain_and_reads_as_compressed_ones() -> None:
    """Inflating and compressing a long tail on every batch cost more than the batch's
    other work, so a log past COMPRESS_UP_TO bytes of msgpack stays msgpack; one just
    under it is compressed. Both read back the same log, and so does a long log
    compressed by an earlier version."""
    def log_of(touchpoints: int) -> JourneyLog:
        log = JourneyLog(key="c-9", customer_id="c-9")
        add_events(log, [event_of(decode_trusted(tp(f"e{n:05d}", "page_view", n,
                                                    customer="c-9")))
                         for n in range(touchpoints)])
        fold(log)
        return log

    sizes = {n: len(msgspec.msgpack.encode(log_of(n))) for n in range(150, 400)}
    under = max(n for n, size in sizes.items() if size <= COMPRESS_UP_TO)
    assert 150 < under < 399
    for n, compressed in ((under, True), (under + 1, False), (399, False)):
        log = log_of(n)
        plain = msgspec.msgpack.encode(log)
        stored = encode_log(log)
        assert (stored[0] == 0x78) is compressed, (n, len(plain))
        assert stored_msgpack(stored) == plain and decode_log(stored) == log
    long = log_of(399)
    packer = zlib.compressobj(1, zdict=JOURNEYS_1)
    before = packer.compress(msgspec.msgpack.encode(long)) + packer.flush()
    assert decode_log(before) == long


def test_values_compressed_without_a_dictionary_still_read_an_unknown_one_is_named() -> None:
    """What 6de8bcc-a5dce46 wrote (zlib, no dictionary) reads as before. A value naming
    a dictionary this version does not hold (written by a newer one) fails with its
    Adler-32 rather than as garbled msgpack."""
    log = JourneyLog(key="c-3", customer_id="c-3")
    add_events(log, [event_of(decode_trusted(tp(f"e{n}", "page_view", n, customer="c-3")))
                     for n in range(20)])
    older = zlib.compress(msgspec.msgpack.encode(log), 1)
    assert not older[1] & 0x20 and decode_log(older) == log

    other = b"another dictionary"
    packer = zlib.compressobj(1, zdict=other)
    newer = packer.compress(msgspec.msgpack.encode(log)) + packer.flush()
    with pytest.raises(ValueError, match=f"{zlib.adler32(other):#010x}"):
        decode_log(newer)


def test_the_journeys_dictionary_never_changes() -> None:
    """Stored values are readable only with the very bytes they were compressed with:
    changing JOURNEYS_1 would make every journey written with it unreadable. Add a new
    dictionary instead (stream_processors/dictionaries.py)."""
    assert (len(JOURNEYS_1), zlib.adler32(JOURNEYS_1)) == (1542, 199733536)
    assert DICTIONARIES[199733536] is JOURNEYS_1


def test_one_key_through_100_000_touchpoints_costs_the_same_per_event_and_stays_small(
        monkeypatch) -> None:
    """A bot: the fold steps per touchpoint and the stored value do not grow with the
    journey (the time per event is printed by tests/benchmarks/journey_state.py)."""
    steps = 0
    apply = FoldState.apply

    def counted(self: FoldState, e: JourneyEvent, stage_at_event: dict[str, str]) -> None:
        nonlocal steps
        steps += 1
        apply(self, e, stage_at_event)

    monkeypatch.setattr(FoldState, "apply", counted)
    stage = updater()
    journeys: dict[bytes, bytes] = {}
    key = b"bot"
    part = partition_for(key, P)
    kinds = [("page_view", {}), ("product_viewed", {"product_id": "p"}),
             ("cart_updated", {}), ("order_placed", None), ("survey_response", None)]
    per_batch, sizes, cost = 10, [], []
    for b in range(10_000):
        touchpoints = []
        for n in range(b * per_batch, (b + 1) * per_batch):
            kind, props = kinds[n % len(kinds)]
            if kind == "order_placed":
                props = {"order_id": f"o{n}", "revenue": 1}
            elif kind == "survey_response":
                props = {"survey": "nps", "score": n % 11}
            touchpoints.append(tp(f"e{n}", kind, n / 30, customer="bot", **props))
        before = steps
        stage.update([Message(part, b, key, Touch("bot", touchpoints))], journeys, {}, NOW, b)
        cost.append((steps - before) / per_batch)
        sizes.append(len(journeys[key]))
    log = decode_log(journeys[key])
    assert log.touchpoints == 100_000 and fold(log).orders == 20_000
    assert max(sizes) < 64 * 1024
    assert max(sizes[-100:]) <= 1.1 * sizes[999]  # no bigger than at 10,000 touchpoints
    # Steps per touchpoint: the first batch (a 10-event journey) against the last ones
    # (each touchpoint is folded into the tail's fold, and later into the summary).
    late = sum(cost[-1000:]) / 1000
    assert late <= 2 * cost[0]
    print(f"value {sizes[0]} B at 10 touchpoints, {sizes[-1]} B at 100,000; fold steps per "
          f"touchpoint {cost[0]:.1f} then {late:.2f}")
    # Its tail is over COMPRESS_UP_TO bytes of msgpack, so it is kept plain (read as is).
    assert len(journeys[key]) > COMPRESS_UP_TO and journeys[key][0] != 0x78
    assert stored_msgpack(journeys[key]) == journeys[key] == msgspec.msgpack.encode(log)


def test_with_compression_off_the_stage_writes_plain_msgpack_and_reads_compressed() -> None:
    """JOURNEY_COMPRESS_JOURNEYS=false, for a rolling upgrade from a version before
    compression: the same journeys are written as plain msgpack (which such a worker
    reads), and what a compressing worker wrote is read and rewritten plain."""
    key = b"c-7"
    part = partition_for(key, P)

    def batch(first: int) -> list[Message]:
        touchpoints = [tp(f"e{n}", "page_view", n, customer="c-7") for n in range(first,
                                                                              first + 20)]
        return [Message(part, first, key, Touch("c-7", touchpoints))]

    on, journeys = updater(), {}
    on.update(batch(0), journeys, {}, NOW, 1)
    assert journeys[key][0] == 0x78  # compressed by default

    off = updater()
    off.compress = False
    off.update(batch(20), journeys, {}, NOW, 2)
    plain = msgspec.msgpack.decode(journeys[key])  # no zlib: an older worker reads it
    assert plain["key"] == "c-7" and len(plain["events"]) == 40
    assert decode_log(journeys[key]).touchpoints == 40


def test_a_device_journeys_last_batch_before_its_merge_gets_its_rows_and_counts() -> None:
    """The device's touchpoints that arrive in the batch that merges it, one of them
    late enough to fold straight into its summary: each gets a touchpoint row, and each
    counts once in the CX windows (an NPS answer here). Before 28f3399 the merge carried
    only the tail and the batch's rows of the device were dropped, so neither held."""
    journeys: dict[bytes, bytes] = {}
    windows: dict[bytes, bytes] = {}
    stage = updater()
    stage.tail_touchpoints = 5
    anon = b"anon:d-1"
    part = partition_for(anon, P)
    for n in range(40):
        stage.update([Message(part, n, anon, Touch(None, [tp(f"v{n}", "page_view", 100 + n,
                                                             anon="d-1")]))],
                     journeys, windows, NOW, n)
    assert decode_log(journeys[anon]).base
    late = tp("late", "page_view", 1, anon="d-1")  # before the tail: into the summary
    answer = tp("nps", "survey_response", 150, anon="d-1", survey="nps", score=10)
    out = stage.update([Message(part, 40, anon, Touch(None, [late, answer])),
                        Message(part, 41, anon, MergeInto("c-1"))], journeys, windows, NOW, 41)
    rows = as_dicts(out.rows["touchpoints"], "touchpoints")
    latest: dict[int, dict] = {}  # the device's transitions, as ReplacingMergeTree keeps them
    for row in as_dicts(out.rows["journey_transitions"], "journey_transitions"):
        held = latest.get(row["seq"])
        assert held is None or held["row_version"] != row["row_version"]
        if held is None or row["row_version"] > held["row_version"]:
            latest[row["seq"]] = row
    assert latest and all(r["is_deleted"] for r in latest.values())
    [(_, to, key, value)] = out.sent(JOURNEY_EVENTS)
    out = stage.update([Message(to, 0, key, decode_command(value))], journeys, windows, NOW, 42)
    rows += as_dicts(out.rows["touchpoints"], "touchpoints")
    assert {"late", "nps"} <= {r["event_id"] for r in rows}
    answered = sum(window_state(windows, p, "nps", "1h", T0 + timedelta(minutes=150))[1]
                   for p in range(P) if f"{p}|nps|all".encode() in windows)  # from the answer
    assert answered == 1


def test_a_device_touchpoint_at_its_merged_journeys_marker_goes_on_to_the_customer() -> None:
    """The device's link can expire a sweep before the marker of its merged journey: its
    next touchpoint then comes to the marker. It goes on to the customer the marker
    names, and gets its row and its count there; the marker stays as it was (before,
    the touchpoint was added to the marker: no row, no count, and a marker that grew)."""
    journeys: dict[bytes, bytes] = {}
    windows: dict[bytes, bytes] = {}
    stage = updater()
    anon = b"anon:d-5"
    part = partition_for(anon, P)
    stage.update([Message(part, 0, anon, Touch(None, [tp("v0", "page_view", 0, anon="d-5")]))],
                 journeys, windows, NOW, 1)
    out = stage.update([Message(part, 1, anon, MergeInto("c-5"))], journeys, windows, NOW, 2)
    [(_, to, key, merge)] = out.sent(JOURNEY_EVENTS)
    stage.update([Message(to, 0, key, decode_command(merge))], journeys, windows, NOW, 3)
    marker = journeys[anon]

    answer = tp("a1", "survey_response", 30, anon="d-5", survey="nps", score=10)
    out = stage.update([Message(part, 2, anon, Touch(None, [answer]))], journeys, windows,
                       NOW, 4)
    assert not out.rows["touchpoints"] and not out.rows["customer_journeys"]
    assert decode_log(journeys[anon]) == decode_log(marker)
    [(_, to, key, value)] = out.sent(JOURNEY_EVENTS)
    assert (key, to) == (b"c-5", partition_for(b"c-5", P))
    out = stage.update([Message(to, 1, key, decode_command(value))], journeys, windows, NOW, 5)
    [row] = as_dicts(out.rows["touchpoints"], "touchpoints")
    assert (row["event_id"], row["journey_key"], row["customer_id"]) == ("a1", "c-5", "c-5")
    assert window_state(windows, to, "nps", "1h", T0 + timedelta(minutes=30))[1] == 1
    # Sent again (a replay of the device's hop): nothing more at the customer's journey.
    out = stage.update([Message(part, 2, anon, Touch(None, [answer]))], journeys, windows,
                       NOW, 6)
    [(_, to, key, value)] = out.sent(JOURNEY_EVENTS)
    out = stage.update([Message(to, 2, key, decode_command(value))], journeys, windows, NOW, 7)
    assert not out.rows["touchpoints"]
    assert window_state(windows, to, "nps", "1h", T0 + timedelta(minutes=30))[1] == 1


def test_a_pre_login_answer_sent_again_after_the_login_counts_once() -> None:
    """An SDK retries a pre-login NPS answer after the login: the device journey counted
    the first copy; the second must be a duplicate in the customer's journey, not a
    second count. Messages are delivered as the worker delivers them: what the device
    stage sends straight to the customer's journey is there before anything that takes
    one more hop through the journey stage (the merge). Before the retry went through
    the device's journey, it was counted in the customer's journey too: 2 answers."""
    journeys: dict[bytes, bytes] = {}
    windows: dict[bytes, bytes] = {}
    devices: dict[bytes, bytes] = {}
    stage, identity = updater(), IdentityResolver(P)
    anon = b"anon:d-8"
    answer = tp("a8", "survey_response", 20, anon="d-8", survey="nps", score=10)
    stage.update([Message(partition_for(anon, P), 0, anon, Touch(None, [answer]))], journeys,
                 windows, NOW, 1)
    out = identity.resolve([Message(partition_for(b"d-8", P), 0, b"d-8", Link("c-8")),
                            Message(partition_for(b"d-8", P), 1, b"d-8",
                                    Touch(None, [answer]))], devices, NOW)
    offsets: dict[int, int] = {}

    def deliver(sent: list[tuple[str, int, bytes, bytes]], version: int) -> list:
        messages = []
        for _, partition, key, value in sent:
            offsets[partition] = offsets.get(partition, 0) + 1
            messages.append(Message(partition, offsets[partition], key, decode_command(value)))
        return stage.update(messages, journeys, windows, NOW, version).sent(JOURNEY_EVENTS)

    sent = out.sent(JOURNEY_EVENTS)
    straight = [m for m in sent if not m[2].startswith(b"anon:")]
    deliver(straight, 2)  # one hop: first
    onwards = deliver([m for m in sent if m not in straight], 3)
    assert not deliver(onwards, 4)
    answered = sum(window_state(windows, p, "nps", "1h", T0 + timedelta(minutes=20))[1]
                   for p in range(P) if f"{p}|nps|all".encode() in windows)
    assert answered == 1
    assert [decode_command(value).__class__ for _, _, _, value in onwards] == [Merge, Touch]
    assert [e.event_id for e in decode_log(journeys[b"c-8"]).events] == ["a8"]


def _bot_batches(batches: int, per_batch: int = 5) -> list[list[bytes]]:
    """A bot's batches: every seventh touchpoint three minutes late (inside the tail),
    and each batch sending one earlier id again."""
    out, n = [], 0
    for _ in range(batches):
        batch = []
        for _ in range(per_batch):
            late = 3 if n % 7 == 6 else 0
            batch.append(tp(f"e{n:05d}", ["page_view", "cart_updated"][n % 2], n - late,
                            customer="bot"))
            n += 1
        batch.append(tp(f"e{n // 2:05d}", ["page_view", "cart_updated"][n // 2 % 2],
                        n // 2, customer="bot"))
        out.append(batch)
    return out


#: Logs past 2 KB count as long in these tests, so their journeys get there quickly.
SMALL_CAP = 2048


def _keeping(budget: int | None = None) -> JourneyUpdater:
    """The journey stage with logs past SMALL_CAP plain; ``budget`` 0: none kept decoded."""
    stage = updater()
    stage.compress_up_to = SMALL_CAP
    if budget is not None:
        stage.decoded = PerPartition(lambda _partition: Decoded(budget))
    return stage


def test_a_long_journey_kept_decoded_writes_what_one_decoded_every_batch_does(
        monkeypatch) -> None:
    """A log past COMPRESS_UP_TO stays decoded between batches, and the stage writes
    the same value and rows, batch by batch, as a stage that decodes it every time."""
    import stream_processors.stages.journeys as stage_module
    decodes = 0

    def counted(stored: bytes) -> JourneyLog:
        nonlocal decodes
        decodes += 1
        return decode_log(stored)

    monkeypatch.setattr(stage_module, "decode_log", counted)
    key, kept, plain = b"bot", _keeping(), _keeping(budget=0)
    part = partition_for(key, P)
    kept_table: dict[bytes, bytes] = {}
    plain_table: dict[bytes, bytes] = {}
    decoded = {"kept": 0, "plain": 0}
    long_batches = 0
    for b, batch in enumerate(_bot_batches(80)):
        long_batches += len(kept_table.get(key, b"")) > SMALL_CAP
        outs = []
        for name, stage, table in (("kept", kept, kept_table), ("plain", plain, plain_table)):
            before = decodes
            outs.append(stage.update([Message(part, b, key, Touch("bot", batch))], table, {},
                                     NOW, b))
            if len(table[key]) > SMALL_CAP and before != decodes:
                decoded[name] += 1
        assert kept_table == plain_table, b
        assert outs[0].rows == outs[1].rows, b
    assert kept_table[key][0] != 0x78 and len(kept.decoded[part]) == 1
    # Once long: the stage that keeps it decoded never decodes it again, the other does
    # so every batch (the first long batch found it compressed in both).
    assert long_batches > 20 and decoded == {"kept": 1, "plain": long_batches + 1}
    assert decode_log(kept_table[key]).touchpoints == 80 * 5


def _sixty_batches_kept() -> tuple[JourneyUpdater, JourneyUpdater, int, dict[bytes, bytes]]:
    """A stage that keeps long logs, one that keeps none, the bot's partition, and the
    table after the bot's first 60 batches through the first stage."""
    kept, plain = _keeping(), _keeping(budget=0)
    part = partition_for(b"bot", P)
    table: dict[bytes, bytes] = {}
    for b, batch in enumerate(_bot_batches(60)):
        kept.update([Message(part, b, b"bot", Touch("bot", batch))], table, {}, NOW, b)
    return kept, plain, part, table


def test_a_kept_log_is_not_used_once_the_table_holds_other_bytes() -> None:
    """After a failed commit or a partition taken back and given again, the table may
    hold a value other than the one last encoded: the stage then reads the table."""
    kept, plain, part, table = _sixty_batches_kept()
    key, batches = b"bot", _bot_batches(62)
    earlier = dict(table)
    kept.update([Message(part, 60, key, Touch("bot", batches[60]))], table, {}, NOW, 60)
    assert len(kept.decoded[part]) == 1 and table != earlier
    assert len(earlier[key]) > SMALL_CAP
    other = dict(earlier)  # the write of batch 60 never landed
    kept.update([Message(part, 61, key, Touch("bot", batches[61]))], other, {}, NOW, 61)
    reference = dict(earlier)
    plain.update([Message(part, 61, key, Touch("bot", batches[61]))], reference, {}, NOW, 61)
    assert other == reference
    assert decode_log(other[key]).touchpoints == 60 * 5 + 5


def test_a_batch_that_fails_after_taking_a_kept_log_leaves_nothing_kept_behind(
        monkeypatch) -> None:
    """A batch changes the log it took before anything is written; if it fails there,
    its retry reads the table again (what the batch runner does even if the stage's
    memory were not forgotten)."""
    kept, plain, part, table = _sixty_batches_kept()
    key, batches = b"bot", _bot_batches(61)
    assert len(kept.decoded[part]) == 1
    reference = dict(table)
    emit = kept._emit

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the batch fails after the log took its touchpoints")

    monkeypatch.setattr(kept, "_emit", failing)
    message = Message(part, 60, key, Touch("bot", batches[60]))
    with pytest.raises(RuntimeError):
        kept.update([message], table, {}, NOW, 60)
    monkeypatch.setattr(kept, "_emit", emit)
    retried = kept.update([message], table, {}, NOW, 60)
    expected = plain.update([message], reference, {}, NOW, 60)
    assert table == reference and retried.rows == expected.rows
    assert len(retried.rows["touchpoints"]) == 5  # the batch's new ones; one is a repeat
