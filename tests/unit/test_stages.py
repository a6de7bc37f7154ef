"""Each stage of the topology on its own, with plain dicts for tables and no broker.

Expected values are counted by hand from the inputs (how many touchpoints, which of
them on time), never read back from the code under test.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from schemas.partitioning import partition_for
from stream_processors.batches import BatchRunner
from stream_processors.clickhouse.rows import COLUMNS
from stream_processors.commands import (
    WATERMARK_KEY,
    Expire,
    Link,
    Marks,
    Merge,
    MergeInto,
    Partial,
    Tick,
    Touch,
    Watermark,
    decode_command,
    decode_partial,
)
from stream_processors.effects import (
    BY_DEVICE,
    CX_PARTIALS,
    DEAD_LETTERS,
    JOURNEY_EVENTS,
    Committer,
    Message,
    Output,
    Staged,
)
from stream_processors.journey import JourneyLog, decode_log
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages import (
    Aggregator,
    IdentityResolver,
    JourneyUpdater,
    PartitionWindows,
    Router,
)
from stream_processors.stages.identity import decode_link
from stream_processors.stages.journeys import past_retention
from stream_processors.windows import Contribution, OpenWindows, spec_named

P = 4
T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 5, 2, 9, 0, tzinfo=UTC)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def tp(event_id: str, type_: str, minutes: float, *, customer: str | None = None,
       anon: str | None = None, **props: object) -> bytes:
    body = {"event_id": event_id, "type": type_,
            "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
            "properties": props}
    if customer:
        body["customer_id"] = customer
    if anon:
        body["anonymous_id"] = anon
    return msgspec.json.encode(body)


def new_metrics() -> WorkerMetrics:
    return WorkerMetrics.create(CollectorRegistry())


def as_dicts(rows: list[tuple], table: str) -> list[dict]:
    return [dict(zip(COLUMNS[table], row, strict=True)) for row in rows]


def updater(clock: Clock | None = None) -> JourneyUpdater:
    metrics = new_metrics()
    windows = PartitionWindows(metrics, P, timedelta(hours=1), 5.0, clock or Clock())
    return JourneyUpdater(metrics, P, windows, lateness=timedelta(hours=1),
                          first_response_sla=timedelta(hours=4), inactive_after=None,
                          churn_risk_alert=60)


def window_state(store: dict, partition: int, metric: str, spec: str,
                 start: datetime) -> tuple[float, float]:
    windows = msgspec.msgpack.decode(store[f"{partition}|{metric}|all".encode()],
                                     type=OpenWindows)
    state = windows.get((spec, start))
    return state.numerator, state.denominator


# ── routing ───────────────────────────────────────────────────────────────────
def test_router_sends_the_anonymous_to_their_device_the_identified_to_their_journey() -> None:
    clock = Clock()
    router = Router(new_metrics(), P, "shop.touchpoints", clock=clock)
    anonymous = tp("e1", "page_view", 0, anon="d-1")
    by_customer = tp("e2", "page_view", 3, customer="c-1")
    login = tp("e3", "identify", 4, customer="c-2", anon="d-2")
    again = tp("e4", "page_view", 5, customer="c-2", anon="d-2")
    out = router.route([Message(0, 10, None, anonymous), Message(0, 11, None, by_customer),
                        Message(1, 5, b"k", b'{"event_id": 1}'), Message(1, 6, None, login),
                        Message(1, 7, None, again)], NOW)

    to_devices = [(partition, key, decode_command(value))
                  for _, partition, key, value in out.sent(BY_DEVICE)]
    assert sorted(to_devices, key=repr) == sorted([
        (partition_for(b"d-1", P), b"d-1", Touch(None, [anonymous])),
        (partition_for(b"d-2", P), b"d-2", Link("c-2"))], key=repr)  # one link per batch
    to_journeys = [(partition, key, decode_command(value))
                   for _, partition, key, value in out.sent(JOURNEY_EVENTS)]
    assert sorted(to_journeys, key=repr) == sorted([
        (partition_for(b"c-1", P), b"c-1", Touch("c-1", [by_customer])),
        (partition_for(b"c-2", P), b"c-2", Touch("c-2", [login])),
        (partition_for(b"c-2", P), b"c-2", Touch("c-2", [again]))], key=repr)
    [(_, _, _, letter)] = out.sent(DEAD_LETTERS)
    assert msgspec.json.decode(letter)["offset"] == 5
    [row] = as_dicts(out.rows["dead_letters"], "dead_letters")
    assert (row["topic"], row["partition"], row["offset"]) == ("shop.touchpoints", 1, 5)


def test_only_an_identify_links_a_device_to_a_customer() -> None:
    router = Router(new_metrics(), P, "t", clock=Clock())
    forged = tp("e1", "order_placed", 0, customer="victim", anon="d-attacker", order_id="o",
                revenue=1.0)
    login = tp("e2", "identify", 1, customer="c-1", anon="d-1")
    out = router.route([Message(0, 1, None, forged), Message(0, 2, None, login)], NOW)
    links = [(key, decode_command(value)) for _, _, key, value in out.sent(BY_DEVICE)]
    assert links == [(b"d-1", Link("c-1"))]  # the order goes to its customer, links nothing
    assert [key for _, _, key, _ in out.sent(JOURNEY_EVENTS)].count(b"victim") == 1


def test_times_out_of_bounds_go_to_the_dead_letters_and_progress_stops_at_receipt() -> None:
    clock = Clock()
    router = Router(new_metrics(), P, "t", clock=clock)
    year_1900 = msgspec.json.encode({"event_id": "old", "type": "page_view", "anonymous_id": "d",
                                     "occurred_at": "1900-01-01T00:00:00+00:00"})
    ahead = msgspec.json.encode({"event_id": "ahead", "type": "page_view", "anonymous_id": "d",
                                 "occurred_at": (NOW + timedelta(minutes=50)).isoformat()})
    received = msgspec.json.encode({
        "event_id": "received", "type": "page_view", "anonymous_id": "d",
        "occurred_at": (NOW - timedelta(minutes=5)).isoformat(),
        "received_at": (NOW - timedelta(minutes=20)).isoformat()})
    out = router.route([Message(0, 1, None, year_1900), Message(0, 2, None, ahead),
                        Message(1, 3, None, received)], NOW)
    [row] = as_dicts(out.rows["dead_letters"], "dead_letters")
    assert (row["reason"], row["offset"]) == ("out_of_bounds", 1)
    for callback in out.callbacks:
        callback()
    marks = {m.channel: m.at for m in router.watermarks([0, 1], 10.0, lambda p, d: False)[0]}
    # 50 min ahead is within the bounds (1 h) and kept, but progress stops at now; and
    # at its receipt for a touchpoint that says when it was received.
    assert marks == {"t0": NOW, "t1": NOW - timedelta(minutes=20)}


def test_router_progress_moves_only_once_the_batch_is_committed() -> None:
    clock = Clock()
    router = Router(new_metrics(), P, "t", clock=clock)
    asked: list[tuple[int, int]] = []

    def caught_up(partition: int, done: int) -> bool:
        asked.append((partition, done))
        return True

    out = router.route([Message(0, 10, None, tp("e1", "page_view", 7, anon="d")),
                        Message(0, 11, None, tp("e2", "page_view", 2, anon="d"))], NOW)
    clock.t += 60
    [mark] = router.watermarks([0], 10.0, caught_up)[0]
    assert (mark.channel, mark.at) == ("t0", None)  # not committed: nothing passed yet
    assert mark.idle  # quiet for 60 s, and the consumer says caught up
    for callback in out.callbacks:  # what Committer.commit does last
        callback()
    [mark] = router.watermarks([0], 10.0, caught_up)[0]
    assert mark.at == T0 + timedelta(minutes=7)  # the furthest event time of the batch
    assert not mark.idle  # the commit just happened: not quiet
    assert asked == [(0, 0)]  # asked only while quiet
    clock.t += 11
    [mark] = router.watermarks([0], 10.0, caught_up)[0]
    assert mark.idle and asked[-1] == (0, 12)  # done: the offset after the last one


def test_a_touchpoint_partition_is_committed_only_as_far_as_a_sent_marker_covers() -> None:
    """The router's event time reaches the windows only in a marker: its records are
    committed up to what an acknowledged marker covered, so a handover after a commit
    cannot lose it (the next owner routes the rest again)."""
    router = Router(new_metrics(), P, "touchpoints")
    router.sources.assign([0])
    assert router.commit_limit(0) is None  # no marker yet: hold every offset
    out = router.route([Message(0, 10, None, tp("e1", "page_view", 7, anon="d"))], NOW)
    for callback in out.callbacks:
        callback()
    marks, covered = router.watermarks([0], 10.0, lambda p, d: False)
    assert covered == {0: 11} and marks[0].at == T0 + timedelta(minutes=7)
    assert router.commit_limit(0) is None  # built, not acknowledged
    later = router.route([Message(0, 11, None, tp("e2", "page_view", 9, anon="d"))], NOW)
    for callback in later.callbacks:
        callback()
    router.marked(covered)  # the broker has the first marker: e2 is not in it
    assert router.commit_limit(0) == 11
    router.marked(router.watermarks([0], 10.0, lambda p, d: False)[1])
    assert router.commit_limit(0) == 12
    router.sources.revoke([0])
    router.marked({0: 12})  # acknowledged after the partition went: not this worker's
    assert router.commit_limit(0) is None and 0 not in router.sources


# ── identity ──────────────────────────────────────────────────────────────────
def test_the_first_link_merges_the_device_and_later_visits_follow_the_login() -> None:
    identity = IdentityResolver(P)
    devices: dict[bytes, bytes] = {}
    anonymous = tp("e1", "page_view", 0, anon="d-1")
    later = tp("e3", "page_view", 2, anon="d-1")
    out = identity.resolve([Message(0, 1, b"d-1", Touch(None, [anonymous])),
                            Message(0, 2, b"d-1", Link("c-1")),
                            Message(0, 3, b"d-1", Touch(None, [later]))], devices, NOW)
    sent = [(key, decode_command(value)) for _, _, key, value in out.sent(JOURNEY_EVENTS)]
    # The later visit goes to c-1 through the device's journey, after the merge it was
    # sent (the journey stage sends it on: test_bounded_journey).
    assert sent == [(b"anon:d-1", Touch(None, [anonymous])),
                    (b"anon:d-1", MergeInto("c-1")),
                    (b"anon:d-1", Touch("c-1", [later]))]
    assert list(devices) == [b"d-1"] and decode_link(devices[b"d-1"])[0] == b"c-1"
    again = identity.resolve([Message(0, 4, b"d-1", Link("c-1"))], devices, NOW)
    assert again.sent() == []  # linked already: nothing to merge, nothing to save
    # The format before Link: an identified touchpoint through the device, still taken.
    login = tp("e4", "identify", 3, anon="d-2", customer="c-2")
    old = identity.resolve([Message(0, 5, b"d-2", Touch("c-2", [login]))], devices, NOW)
    assert [(key, decode_command(v)) for _, _, key, v in old.sent()] == [
        (b"anon:d-2", MergeInto("c-2")), (b"anon:d-2", Touch("c-2", [login]))]


def test_a_login_as_someone_else_never_moves_the_first_customers_history() -> None:
    identity = IdentityResolver(P)
    devices: dict[bytes, bytes] = {}
    identity.resolve([Message(0, 1, b"d-1", Touch(None, [tp("e1", "page_view", 0, anon="d-1")])),
                      Message(0, 2, b"d-1", Link("c-1"))], devices, NOW)
    later = tp("e3", "page_view", 2, anon="d-1")
    out = identity.resolve([Message(0, 3, b"d-1", Link("c-2")),
                            Message(0, 4, b"d-1", Touch(None, [later]))], devices, NOW)
    # No MergeInto: c-1's journey keeps the device's past; only later visits follow c-2.
    assert [(key, decode_command(v)) for _, _, key, v in out.sent(JOURNEY_EVENTS)] == [
        (b"anon:d-1", Touch("c-2", [later]))]
    assert decode_link(devices[b"d-1"])[0] == b"c-2"


def test_identity_forwards_the_minimum_of_its_inputs_after_the_touchpoints() -> None:
    identity = IdentityResolver(P)
    marks = [Message(2, i, WATERMARK_KEY, Watermark(f"t{i}", T0 + timedelta(minutes=10 - i)))
             for i in range(P)]
    touch = Message(2, 9, b"d", Touch(None, [tp("e1", "page_view", 0, anon="d")]))
    out = identity.resolve([*marks[:2], touch, *marks[2:]], {}, NOW)
    sent = out.sent(JOURNEY_EVENTS)
    assert decode_command(sent[0][3]) == touch.value
    assert [partition for _, partition, _, _ in sent[1:]] == list(range(P))
    assert [decode_command(v) for *_, v in sent[1:]] == [
        Marks([Watermark("d2", T0 + timedelta(minutes=10 - (P - 1)))])] * P


# ── journeys ──────────────────────────────────────────────────────────────────
def deliveries(customer: str) -> Message:
    """Two deliveries, one on time, and a redelivered duplicate of it."""
    on_time = tp("e1", "delivery_updated", 0, customer=customer, order_id="o", status="on_time")
    late = tp("e2", "delivery_updated", 30, customer=customer, order_id="o", status="late")
    return Message(partition_for(customer.encode(), P), 7, customer.encode(),
                   Touch(customer, [on_time, late, on_time]))


def test_a_journey_writes_its_rows_and_saves_its_windows_before_itself() -> None:
    journeys: dict[bytes, bytes] = {}
    windows: dict[bytes, bytes] = {}
    message = deliveries("c-1")
    out = updater().update([message], journeys, windows, NOW, 1)

    assert sorted(r["event_id"] for r in as_dicts(out.rows["touchpoints"], "touchpoints")) == [
        "e1", "e2"]
    [journey] = as_dicts(out.rows["customer_journeys"], "customer_journeys")
    assert (journey["journey_key"], journey["deliveries_on_time"], journey["deliveries_late"]) \
        == ("c-1", 1, 1)
    assert [e.event_id for e in decode_log(journeys[b"c-1"]).events] == ["e1", "e2"]
    assert window_state(windows, message.partition, "on_time_rate", "1h", T0) == (1.0, 2.0)
    # The windows are saved first: the journey's event ids mark the work as done.
    assert out.saves[0] == (windows,) and out.saves[0][0] is windows
    assert out.saves[-1][-1] is journeys and len(out.saves) == 2


def test_a_replay_after_a_crash_between_the_two_saves_counts_nothing_twice() -> None:
    journeys: dict[bytes, bytes] = {}
    windows: dict[bytes, bytes] = {}
    message = deliveries("c-1")
    updater().update([message], journeys, windows, NOW, 1)
    # Crash after the windows were saved and before the journeys were: a new process
    # replays the batch against the old journey state and the new windows.
    out = updater().update([message], {}, windows, NOW, 2)
    assert len(out.rows["touchpoints"]) == 2  # rows are redone (idempotent)
    assert window_state(windows, message.partition, "on_time_rate", "1h", T0) == (1.0, 2.0)
    # Crash after both saves, before the offsets were committed: nothing new at all.
    out = updater().update([message], journeys, windows, NOW, 3)
    assert out.rows["touchpoints"] == []
    assert window_state(windows, message.partition, "on_time_rate", "1h", T0) == (1.0, 2.0)


def test_an_identified_device_journey_moves_to_the_customer_with_its_touchpoints() -> None:
    journeys: dict[bytes, bytes] = {}
    stage = updater()
    anon_key = b"anon:d-1"
    partition = partition_for(anon_key, P)
    visit = tp("e1", "page_view", 0, anon="d-1")
    stage.update([Message(partition, 1, anon_key, Touch(None, [visit]))], journeys, {}, NOW, 1)
    out = stage.update([Message(partition, 2, anon_key, MergeInto("c-1"))], journeys, {}, NOW, 2)

    [(_, to, key, value)] = out.sent(JOURNEY_EVENTS)
    merge = decode_command(value)
    assert (to, key) == (partition_for(b"c-1", P), b"c-1") and isinstance(merge, Merge)
    assert [e.event_id for e in merge.log.events] == ["e1"]
    [row] = as_dicts(out.rows["customer_journeys"], "customer_journeys")
    assert (row["journey_key"], row["customer_id"]) == ("anon:d-1", "c-1")
    assert decode_log(journeys[anon_key]).merged_into == "c-1"

    out = stage.update([Message(to, 1, b"c-1", merge)], journeys, {}, NOW, 3)
    [row] = as_dicts(out.rows["touchpoints"], "touchpoints")
    assert (row["event_id"], row["journey_key"], row["customer_id"]) == ("e1", "c-1", "c-1")


def test_only_transition_and_ticket_rows_that_changed_are_written_again() -> None:
    journeys: dict[bytes, bytes] = {}
    stage = updater()
    key = b"c-1"
    partition = partition_for(key, P)

    def batch(offset: int, *touchpoints: bytes) -> dict[str, list[dict]]:
        out = stage.update([Message(partition, offset, key, Touch("c-1", list(touchpoints)))],
                           journeys, {}, NOW, offset)
        return {table: as_dicts(out.rows[table], table)
                for table in ("journey_transitions", "support_tickets", "customer_journeys")}

    first = batch(1, tp("e1", "page_view", 0, customer="c-1"),
                  tp("e2", "order_placed", 10, customer="c-1", order_id="o", revenue=20),
                  tp("e3", "support_ticket_opened", 20, customer="c-1", ticket_id="t",
                     channel="chat"))
    assert len(first["journey_transitions"]) >= 2 and len(first["support_tickets"]) == 1
    # Another page view changes the journey's snapshot, not its path nor its ticket.
    second = batch(2, tp("e4", "page_view", 30, customer="c-1"))
    assert (len(second["customer_journeys"]), second["journey_transitions"],
            second["support_tickets"]) == (1, [], [])
    # An agent's answer changes the ticket only.
    third = batch(3, tp("e5", "support_message", 40, customer="c-1", ticket_id="t",
                        author="agent"))
    [ticket] = third["support_tickets"]
    assert ticket["first_response_at"] == T0 + timedelta(minutes=40)
    assert third["journey_transitions"] == []
    # An earlier ad click, arriving late, comes before everything: the path is rewritten.
    fourth = batch(4, tp("e0", "ad_click", -60, customer="c-1"))
    assert fourth["journey_transitions"] and fourth["support_tickets"] == []
    assert fourth["journey_transitions"][0]["to_stage"] == "awareness"


def test_a_device_identified_before_any_anonymous_visit_leaves_no_state() -> None:
    journeys: dict[bytes, bytes] = {}
    key = b"anon:d-9"
    out = updater().update([Message(partition_for(key, P), 1, key, MergeInto("c-9"))],
                           journeys, {}, NOW, 1)
    assert (journeys, out.sent(), dict(out.rows)) == ({}, [], {})


# ── retention ─────────────────────────────────────────────────────────────────
def test_an_anonymous_journey_past_its_retention_goes_and_comes_back_newer() -> None:
    journeys: dict[bytes, bytes] = {}
    stage = JourneyUpdater(new_metrics(), P, PartitionWindows(new_metrics(), P,
                                                              timedelta(hours=1), 5.0),
                           lateness=timedelta(hours=1), first_response_sla=timedelta(hours=4),
                           inactive_after=None, churn_risk_alert=60,
                           anonymous_retention=timedelta(days=30))
    key = b"anon:d-1"
    partition = partition_for(key, P)

    def send(command: object, now: datetime) -> Output:
        return stage.update([Message(partition, 1, key, command)], journeys, {}, now, 1)

    first = send(Touch(None, [tp("e1", "page_view", 0, anon="d-1")]), NOW)
    [old_row] = as_dicts(first.rows["customer_journeys"], "customer_journeys")
    assert past_retention(decode_log(journeys[key]), NOW + timedelta(days=31),
                          anonymous=timedelta(days=30), merged=None)
    send(Expire(), NOW + timedelta(days=29))  # the sweep saw it late; not past it now
    assert key in journeys
    send(Expire(), NOW + timedelta(days=31))
    assert journeys == {}
    back = send(Touch(None, [tp("e2", "page_view", 0, anon="d-1")]), NOW + timedelta(days=40))
    [new_row] = as_dicts(back.rows["customer_journeys"], "customer_journeys")
    assert new_row["touchpoints"] == 1 and new_row["version"] > old_row["version"]


def test_merged_markers_expire_identified_journeys_never_and_old_state_is_stamped() -> None:
    merged = JourneyLog(key="anon:d", merged_into="c", updated_at=NOW)
    customer = JourneyLog(key="c", customer_id="c", updated_at=NOW)
    later = NOW + timedelta(days=8)
    assert past_retention(merged, later, anonymous=None, merged=timedelta(days=7))
    assert not past_retention(merged, later, anonymous=None, merged=None)
    assert not past_retention(customer, NOW + timedelta(days=9999),
                              anonymous=timedelta(days=1), merged=timedelta(days=1))
    # A journey from before retention: Expire starts its clock instead of deleting it.
    journeys = {b"anon:d": msgspec.msgpack.encode(msgspec.structs.replace(merged,
                                                                          updated_at=None))}
    stage = JourneyUpdater(new_metrics(), P, PartitionWindows(new_metrics(), P,
                                                              timedelta(hours=1), 5.0),
                           lateness=timedelta(hours=1), first_response_sla=timedelta(hours=4),
                           inactive_after=None, churn_risk_alert=60,
                           merged_retention=timedelta(days=7))
    stage.update([Message(0, 1, b"anon:d", Expire())], journeys, {}, later, 1)
    assert decode_log(journeys[b"anon:d"]).updated_at == later
    stage.update([Message(0, 2, b"anon:d", Expire())], journeys, {}, later + timedelta(days=8), 2)
    assert journeys == {}


def test_a_device_link_unused_past_its_retention_is_forgotten() -> None:
    identity = IdentityResolver(P, retention=timedelta(days=10))
    devices: dict[bytes, bytes] = {}
    visit = Touch(None, [tp("e1", "page_view", 0, anon="d")])
    identity.resolve([Message(0, 1, b"d", Link("c"))], devices, NOW)
    assert decode_link(devices[b"d"]) == (b"c", int(NOW.timestamp()))
    # Used again 5 days later: its last use moves (once a day at most).
    day5 = NOW + timedelta(days=5)
    identity.resolve([Message(0, 2, b"d", visit)], devices, day5)
    assert decode_link(devices[b"d"]) == (b"c", int(day5.timestamp()))
    identity.resolve([Message(0, 3, b"d", Expire())], devices, NOW + timedelta(days=14))
    assert b"d" in devices  # 9 days unused: kept
    identity.resolve([Message(0, 4, b"d", Expire())], devices, NOW + timedelta(days=16))
    assert devices == {}
    out = identity.resolve([Message(0, 5, b"d", visit)], devices, NOW + timedelta(days=17))
    assert [key for _, _, key, _ in out.sent()] == [b"anon:d"]  # anonymous again
    # A link from before retention (the bare customer id) is stamped, not dropped.
    devices[b"old"] = b"c-old"
    assert identity.past_retention(devices[b"old"], NOW)
    identity.resolve([Message(0, 6, b"old", Expire())], devices, NOW)
    assert decode_link(devices[b"old"]) == (b"c-old", int(NOW.timestamp()))


# ── a journey partition's windows ─────────────────────────────────────────────
def all_inputs_at(partition: int, at: datetime) -> list[tuple[int, Watermark]]:
    """Every input of a journey partition (each touchpoint and by-device partition)."""
    return [(partition, Watermark(f"{kind}{i}", at)) for kind in "td" for i in range(P)]


def test_a_closing_window_sends_its_final_part_then_the_horizon() -> None:
    metrics = new_metrics()
    clock = Clock()
    windows = PartitionWindows(metrics, P, timedelta(hours=1), 5.0, clock)
    store: dict[bytes, bytes] = {}
    on_time = [(3, Contribution("on_time_rate", "all", T0, 1.0)),
               (4, Contribution("on_time_rate", "all", T0 + timedelta(seconds=20), 0.0))]
    out = Output(P)
    windows.process(out, store, [], {1: on_time})
    first_minute = b"on_time_rate|all|1m|" + str(int(T0.timestamp())).encode()
    parts = {key: decode_partial(v) for _, _, key, v in out.sent(CX_PARTIALS)}
    assert parts[first_minute] == Partial(1, 1.0, 2.0, 2)  # open, sent once (first time)

    out = Output(P)  # one more, then the watermark passes: sent at once, not in 5 s
    late = [(5, Contribution("on_time_rate", "all", T0 + timedelta(seconds=40), 1.0))]
    windows.process(out, store, all_inputs_at(1, T0 + timedelta(hours=1, minutes=2)), {1: late})
    sent = out.sent(CX_PARTIALS)
    keys = [key for _, _, key, _ in sent]
    assert decode_partial(sent[keys.index(first_minute)][3]) == Partial(1, 2.0, 3.0, 3)
    horizon = [decode_command(v) for _, _, key, v in sent if key == WATERMARK_KEY]
    assert horizon == [Marks([Watermark("j1", T0 + timedelta(minutes=2))])] * P
    assert keys.index(WATERMARK_KEY) > keys.index(first_minute)  # after the parts it closes


def test_open_windows_parts_go_at_most_a_bound_a_batch_the_rest_with_the_next() -> None:
    """Three contributions touch every window spec's windows around them; at most five
    parts a batch, the next batches (each brought by a watermark) send the rest, and
    together they are what an unbounded stage sends at once."""
    contributions = {1: [(3, Contribution("csat", "all", T0, 1.0)),
                         (4, Contribution("csat", "email", T0, 0.0)),
                         (5, Contribution("nps", "all", T0 + timedelta(days=3), 1.0))]}
    unbounded = Output(P)
    PartitionWindows(new_metrics(), P, timedelta(hours=1), 5.0, Clock()).process(
        unbounded, {}, [], contributions)
    expected = sorted((key, decode_partial(v)) for _, _, key, v in unbounded.sent(CX_PARTIALS))
    bounded = PartitionWindows(new_metrics(), P, timedelta(hours=1), 5.0, Clock(),
                               windows_per_batch=5)
    store: dict[bytes, bytes] = {}
    batches = []
    out = Output(P)
    bounded.process(out, store, [], contributions)
    while sent := out.sent(CX_PARTIALS):
        batches.append([(key, decode_partial(v)) for _, _, key, v in sent])
        out = Output(P)
        bounded.process(out, store, [(1, Watermark("t0", T0))], {})  # moves no horizon
    assert len(expected) > 10  # several batches' worth
    assert all(len(parts) <= 5 for parts in batches)
    assert sorted(part for parts in batches for part in parts) == expected  # each once


def test_a_replay_in_smaller_batches_counts_each_contribution_once() -> None:
    """A worker killed after saving the windows of offsets 55 and 59 (its batch's offsets
    not yet committed): the next owner reads them again, and its first batch may end
    at 55. Measured in the fault suite: that batch set the mark back to 55, the next one
    applied 59 again, and 200 to 636 windows were wrong."""
    store: dict[bytes, bytes] = {}
    order = Contribution("contact_rate", "all", T0, 0.0, 1.0)
    first = PartitionWindows(new_metrics(), P, timedelta(hours=1), 5.0, Clock())
    first.process(Output(P), store, [], {1: [(55, order), (59, order)]})
    again = PartitionWindows(new_metrics(), P, timedelta(hours=1), 5.0, Clock())  # a new owner
    again.process(Output(P), store, [], {1: [(55, order)]})  # in already: skipped
    again.process(Output(P), store, [], {1: [(59, order), (62, order)]})  # 59 is in too
    orders = len({55, 59, 62})
    assert window_state(store, 1, "contact_rate", "1h", T0 - timedelta(minutes=5))[1] == orders


def test_a_late_contribution_sends_the_revised_part_of_a_closed_window_at_once() -> None:
    metrics = new_metrics()
    clock = Clock()
    windows = PartitionWindows(metrics, P, timedelta(hours=1), 5.0, clock,
                               revision=timedelta(days=2))
    store: dict[bytes, bytes] = {}
    first_minute = b"on_time_rate|all|1m|" + str(int(T0.timestamp())).encode()
    windows.process(Output(P), store, [], {1: [(3, Contribution("on_time_rate", "all", T0,
                                                                1.0))]})
    windows.process(Output(P), store, all_inputs_at(1, T0 + timedelta(hours=3)), {})
    clock.t += 1  # not yet due for an open window's refresh
    out = Output(P)
    windows.process(out, store, [], {1: [(4, Contribution("on_time_rate", "all", T0, 0.0))]})
    parts = {key: decode_partial(v) for _, _, key, v in out.sent(CX_PARTIALS)}
    assert parts[first_minute] == Partial(1, 1.0, 2.0, 2)  # its whole part, revised
    assert all(int(key.rsplit(b"|", 1)[1]) + spec_named(key.split(b"|")[2].decode())
               .size.total_seconds() <= (T0 + timedelta(hours=2)).timestamp()
               for key in parts)  # closed windows only: the open ones wait their turn
    assert metrics.cx_late_contributions._value.get() == 1
    assert any(b"|#" in key for key in store)  # settled panes, apart from the open ones
    assert all(key.startswith(b"1|") for key in store)  # the worker reads the partition
    # Past the horizon: counted as missed, nothing sent for the short windows.
    windows.process(Output(P), store, all_inputs_at(1, T0 + timedelta(days=3)), {})
    out = Output(P)
    windows.process(out, store, [], {1: [(5, Contribution("on_time_rate", "all", T0, 1.0))]})
    assert first_minute not in {key for _, _, key, _ in out.sent(CX_PARTIALS)}
    assert metrics.cx_window_too_late._value.get() == 1
    # ... and recorded, with the end of the last window that lacks it (horizon - 2 days).
    [missed] = as_dicts(out.rows["cx_missed"], "cx_missed")
    assert (missed["metric"], missed["occurred_at"], missed["samples"], missed["partition"],
            missed["offset"], missed["lacking_through"]) == (
        "on_time_rate", T0, 1, 1, 5, T0 + timedelta(days=1, hours=-1))
    windows.process(Output(P), store, all_inputs_at(1, T0 + timedelta(days=40)), {})
    assert list(store) == [b"1|"]  # every pane past the horizon: the entry has gone


# ── aggregator ────────────────────────────────────────────────────────────────
def horizons(partition: int, at: datetime, offset: int = 100) -> list[Message]:
    return [Message(partition, offset + j, WATERMARK_KEY, Watermark(f"j{j}", at))
            for j in range(P)]


def test_the_aggregator_sums_the_partitions_parts_and_finalises_once_all_passed() -> None:
    aggregator = Aggregator(new_metrics(), P, 5.0, Clock())
    store: dict[bytes, bytes] = {}
    window = b"on_time_rate|all|1m|" + str(int(T0.timestamp())).encode()
    parts = [Message(2, 1, window, Partial(0, 1.0, 2.0, 2)),
             Message(2, 2, window, Partial(3, 0.0, 1.0, 1)),
             Message(2, 3, window, Partial(0, 2.0, 3.0, 3))]  # partition 0's newer part
    aggregator.aggregate(parts, store, NOW, 1)
    out = aggregator.aggregate(horizons(2, T0 + timedelta(minutes=1)), store, NOW, 2)
    [row] = as_dicts(out.rows["cx_metrics"], "cx_metrics")
    # Partition 0's latest part (2 of 3) and partition 3's (0 of 1): 2 of 4 on time.
    assert (row["final"], row["numerator"], row["denominator"], row["value"]) == (
        1, 2.0, 4.0, 50.0)
    assert list(store) == [b"2|"]  # only the clock is left: the window is gone


def test_a_late_part_revises_a_final_window_until_the_horizon_passes() -> None:
    metrics = new_metrics()
    aggregator = Aggregator(metrics, P, 5.0, Clock(), revision=timedelta(days=1))
    store: dict[bytes, bytes] = {}
    window = b"nps|all|1h|" + str(int(T0.timestamp())).encode()
    aggregator.aggregate([Message(2, 1, window, Partial(0, 1.0, 2.0, 2))], store, NOW, 1)
    out = aggregator.aggregate(horizons(2, T0 + timedelta(hours=2)), store, NOW, 2)
    [final] = as_dicts(out.rows["cx_metrics"], "cx_metrics")
    assert (final["final"], final["revision"], final["late_samples"], final["value"]) == (
        1, 0, 0, 50.0)
    # Partition 3 had a late answer: the row is revised in the same batch, above the final.
    out = aggregator.aggregate([Message(2, 20, window, Partial(3, -1.0, 1.0, 1))], store,
                               NOW, 3)
    [revised] = as_dicts(out.rows["cx_metrics"], "cx_metrics")
    assert (revised["metric"], revised["dimension"], revised["final"], revised["revision"],
            revised["late_samples"], revised["samples"], revised["value"]) == (
        "nps", "all", 1, 1, 1, 3, 0.0)
    # Closed windows are kept apart from the open ones of their span.
    assert [key for key in store if key != b"2|"] == [b"2|#nps|all|1h@" + str(
        int(T0.timestamp()) // (6 * 3600)).encode()]
    assert revised["version"] > final["version"]
    # The same part again (a restart's resend): nothing to revise.
    out = aggregator.aggregate([Message(2, 21, window, Partial(3, -1.0, 1.0, 1))], store,
                               NOW, 4)
    assert out.rows["cx_metrics"] == []
    # Once the horizon passed its end by a day, the window leaves; later parts are missed.
    aggregator.aggregate(horizons(2, T0 + timedelta(days=1, hours=1, minutes=1), 200), store,
                         NOW, 5)
    assert list(store) == [b"2|"]
    out = aggregator.aggregate([Message(2, 300, window, Partial(1, 1.0, 1.0, 1))], store,
                               NOW, 6)
    assert out.rows["cx_metrics"] == [] and list(store) == [b"2|"]
    assert metrics.cx_window_too_late._value.get() == 1
    assert metrics.cx_window_revisions._value.get() == 1


def test_a_window_empty_when_it_closed_gets_its_first_row_from_late_data() -> None:
    aggregator = Aggregator(new_metrics(), P, 5.0, Clock(), revision=timedelta(days=1))
    store: dict[bytes, bytes] = {}
    aggregator.aggregate(horizons(2, T0 + timedelta(hours=2)), store, NOW, 1)
    window = b"csat|all|1m|" + str(int(T0.timestamp())).encode()
    out = aggregator.aggregate([Message(2, 9, window, Partial(1, 1.0, 1.0, 1))], store, NOW, 2)
    [row] = as_dicts(out.rows["cx_metrics"], "cx_metrics")
    assert (row["final"], row["revision"], row["late_samples"], row["value"]) == (
        1, 1, 1, 100.0)
    aggregator.held.revoke([2])  # what leaves when is rebuilt from the table
    aggregator.held.assign([2])
    aggregator.aggregate(horizons(2, T0 + timedelta(days=1, hours=1), 50), store, NOW, 3)
    assert list(store) == [b"2|"]


def test_parts_that_came_between_updates_are_written_by_a_tick_once_input_stops() -> None:
    """The hour's window's second part came 1 s after the rows were written (the
    interval is 5 s) and nothing else comes: without a tick its row would keep the
    first part's value for good."""
    clock = Clock()
    aggregator = Aggregator(new_metrics(), P, 5.0, clock)
    store: dict[bytes, bytes] = {}
    window = b"csat|all|1h|" + str(int(T0.timestamp())).encode()
    out = aggregator.aggregate([Message(2, 1, window, Partial(0, 1.0, 2.0, 2))], store, NOW, 1)
    [first] = as_dicts(out.rows["cx_metrics"], "cx_metrics")
    assert (first["final"], first["value"]) == (0, 50.0)
    clock.t += 1
    out = aggregator.aggregate([Message(2, 2, window, Partial(1, 3.0, 3.0, 3))], store, NOW, 2)
    assert out.rows["cx_metrics"] == []  # not due: it waits
    assert aggregator.waiting([1, 2, 3]) == [1, 3]  # held, never published: their rows
    aggregator.aggregate([Message(p, 1, WATERMARK_KEY, Tick()) for p in (1, 3)], store, NOW, 3)
    clock.t += 3.9
    assert aggregator.waiting([1, 2, 3]) == []  # 4.9 s since the rows: not yet
    clock.t += 0.1
    assert aggregator.waiting([1, 2, 3]) == [2]
    out = aggregator.aggregate([Message(2, 3, WATERMARK_KEY, Tick())], store, NOW, 4)
    [row] = as_dicts(out.rows["cx_metrics"], "cx_metrics")
    # Partition 0's 1 of 2 and partition 1's 3 of 3: 4 of 5 satisfied.
    assert (row["final"], row["numerator"], row["denominator"], row["value"]) == (
        0, 4.0, 5.0, 80.0)
    assert aggregator.waiting([2]) == []  # written: nothing to tick for
    assert store[b"2|"] == out.saves[0][0][b"2|"]  # a tick moves no clock


def _run_with_ticks(aggregator: Aggregator, batch: list[Message], store: dict,
                    version: int) -> list[list[dict]]:
    """``batch``, then the ticks each batch sends its partition until none is sent: the
    rows of each batch."""
    written = []
    while batch:
        out = aggregator.aggregate(batch, store, NOW, version)
        written.append(as_dicts(out.rows["cx_metrics"], "cx_metrics"))
        batch = [Message(s.partition, 0, s.key, decode_command(s.value))
                 for s in out.messages if s.topic == CX_PARTIALS]
        assert all(isinstance(m.value, Tick) for m in batch)
        version += 1
    return written


def test_a_batch_writes_at_most_its_rows_and_ticks_itself_through_the_rest() -> None:
    """Eight windows in eight table entries (one dimension each), three rows a batch:
    the open windows' rows, then the final ones, come three at a time, each once."""
    aggregator = Aggregator(new_metrics(), P, 5.0, Clock(), rows_per_batch=3)
    store: dict[bytes, bytes] = {}
    start = str(int(T0.timestamp())).encode()
    parts = [Message(2, k, b"on_time_rate|d%d|1m|%s" % (k, start), Partial(0, k, 8.0, 8))
             for k in range(8)]
    expected = {f"d{k}": 100.0 * k / 8 for k in range(8)}  # k of 8 on time
    refreshed = _run_with_ticks(aggregator, parts, store, 1)
    assert [len(rows) for rows in refreshed] == [3, 3, 2]
    assert {r["dimension"]: r["value"] for rows in refreshed for r in rows} == expected
    assert all(r["final"] == 0 for rows in refreshed for r in rows)
    assert aggregator.waiting([2]) == []
    closed = _run_with_ticks(aggregator, horizons(2, T0 + timedelta(minutes=1)), store, 10)
    assert [len(rows) for rows in closed] == [3, 3, 2]
    finals = [(r["dimension"], r["value"]) for rows in closed for r in rows]
    assert sorted(finals) == sorted(expected.items())  # each window's final row once
    assert all(r["final"] == 1 for rows in closed for r in rows)
    assert list(store) == [b"2|"] and aggregator.waiting([2]) == []


def test_closings_left_for_later_are_a_ticks_work_once_the_input_stops() -> None:
    """The tick the batch sent was lost (say the worker restarted): the timer's tick,
    from ``waiting``, finds the closings left; a new holder, from the table."""
    aggregator = Aggregator(new_metrics(), P, 5.0, Clock(), rows_per_batch=2)
    store: dict[bytes, bytes] = {}
    start = str(int(T0.timestamp())).encode()
    parts = [Message(1, k, b"csat|d%d|1m|%s" % (k, start), Partial(3, 1.0, 1.0, 1))
             for k in range(5)]
    _run_with_ticks(aggregator, parts, store, 1)
    out = aggregator.aggregate(horizons(1, T0 + timedelta(minutes=1)), store, NOW, 5)
    assert len(out.rows["cx_metrics"]) == 2
    assert aggregator.waiting([1]) == [1]  # closings left, though no open row is due
    out = aggregator.aggregate([Message(1, 0, WATERMARK_KEY, Tick())], store, NOW, 6)
    assert len(out.rows["cx_metrics"]) == 2
    after = Aggregator(new_metrics(), P, 5.0, Clock(), rows_per_batch=2)
    [last] = as_dicts(after.aggregate([Message(1, 0, WATERMARK_KEY, Tick())], store, NOW, 7)
                      .rows["cx_metrics"], "cx_metrics")
    assert (last["final"], last["value"]) == (1, 100.0)
    assert list(store) == [b"1|"]


def test_a_new_holder_writes_every_open_window_the_last_one_may_not_have() -> None:
    """Which rows the last holder had not written yet was in its memory only."""
    clock = Clock()
    before = Aggregator(new_metrics(), P, 5.0, clock)
    store: dict[bytes, bytes] = {}
    start = str(int(T0.timestamp())).encode()
    before.aggregate([Message(2, 1, b"nps|all|1h|" + start, Partial(0, 1.0, 1.0, 1))], store,
                     NOW, 1)
    clock.t += 1
    out = before.aggregate([Message(2, 2, b"nps|all|1h|" + start, Partial(1, -1.0, 1.0, 1)),
                            Message(2, 3, b"csat|all|24h|" + start, Partial(1, 0.0, 1.0, 1))],
                           store, NOW, 2)
    assert out.rows["cx_metrics"] == []  # not due; then the worker dies
    after = Aggregator(new_metrics(), P, 5.0, clock)
    assert after.waiting([2]) == [2]
    out = after.aggregate([Message(2, 4, WATERMARK_KEY, Tick())], store, NOW, 3)
    rows = {(r["metric"], r["window"]): (r["final"], r["samples"], r["value"])
            for r in as_dicts(out.rows["cx_metrics"], "cx_metrics")}
    assert rows == {("nps", "1h"): (0, 2, 0.0), ("csat", "24h"): (0, 1, 0.0)}


def test_a_partition_taken_back_rebuilds_what_it_knew_from_its_table() -> None:
    aggregator = Aggregator(new_metrics(), P, 5.0, Clock())
    store: dict[bytes, bytes] = {}
    window = b"csat|all|1m|" + str(int(T0.timestamp())).encode()
    aggregator.aggregate([Message(1, 1, window, Partial(2, 3.0, 4.0, 4))], store, NOW, 1)
    aggregator.held.revoke([1])
    assert 1 not in aggregator.held
    aggregator.held.assign([1])  # back, with nothing in memory: the closing comes from the table
    out = aggregator.aggregate(horizons(1, T0 + timedelta(minutes=5)), store, NOW, 2)
    [row] = as_dicts(out.rows["cx_metrics"], "cx_metrics")
    assert (row["final"], row["value"]) == (1, 75.0)


class _RunAggregator:
    """The aggregator as its agent runs it: through the BatchRunner, on a table. Its
    ClickHouse refuses each batch with rows while ``failures`` holds errors."""

    WINDOW = b"csat|all|1m|" + str(int(T0.timestamp())).encode()

    def __init__(self, clock: Clock) -> None:
        self.aggregator = Aggregator(new_metrics(), P, 5.0, clock)
        self.table = _Table(ack_after=0)
        self.rows: list = []
        self.failures: list[Exception] = []
        self.dead: list = []
        self.runner = BatchRunner(
            Committer(self._write, {DEAD_LETTERS: _Topic(DEAD_LETTERS, self.dead)}),
            new_metrics(), P)

    async def _write(self, batch: dict) -> None:
        if self.failures and batch.get("cx_metrics"):
            raise self.failures.pop()
        self.rows.extend(as_dicts(batch.get("cx_metrics", []), "cx_metrics"))

    async def run(self, batch: list[Message]) -> None:
        class Event:
            class message:
                partition = 1

        await self.runner.run(
            "aggregate_cx", "t.cx-partials", batch,
            lambda b: self.aggregator.aggregate(b, Staged(self.table, lambda k: Event()),
                                                NOW, 1),
            forget=self.aggregator.held.clear)

    def values(self) -> list[tuple[int, float]]:
        return [(r["final"], r["value"]) for r in self.rows]


def test_a_failed_batch_leaves_no_closing_forgotten_in_memory() -> None:
    """The attempt that failed took the window's entry off the closing schedule; the retry,
    one message at a time, must still close it (the runner makes the stage forget)."""
    stage = _RunAggregator(Clock())

    async def scenario() -> None:
        await stage.run([Message(1, 1, stage.WINDOW, Partial(2, 3.0, 4.0, 4))])  # saved, open
        stage.failures.append(ValueError("a row the table refuses"))
        await stage.run(horizons(1, T0 + timedelta(minutes=5)))  # fails once, then one by one

    asyncio.run(scenario())
    assert stage.values() == [(0, 75.0), (1, 75.0)]


def test_a_part_that_went_to_the_dead_letters_is_not_kept_in_the_decoded_entries() -> None:
    """The aggregator keeps entries decoded between batches. A batch whose commit failed
    had changed one: kept, that change would reach the next rows although the table
    never got it."""
    clock = Clock()
    stage = _RunAggregator(clock)

    async def scenario() -> None:
        await stage.run([Message(1, 1, stage.WINDOW, Partial(2, 3.0, 4.0, 4))])  # 3 of 4
        clock.t += 5
        # Refused twice (the batch, then the message alone): to the dead letters.
        stage.failures.extend([ValueError("refused"), ValueError("refused")])
        await stage.run([Message(1, 2, stage.WINDOW, Partial(3, 0.0, 4.0, 4))])
        clock.t += 5
        await stage.run([Message(1, 3, WATERMARK_KEY, Tick())])  # rows due, no input

    asyncio.run(scenario())
    assert stage.dead == [("send", DEAD_LETTERS)]
    # The table has only partition 2's part: 3 of 4, not 3 of 8.
    assert stage.values() == [(0, 75.0), (0, 75.0)]


# ── output and commit ─────────────────────────────────────────────────────────
def test_a_message_sent_alone_splits_the_keyed_messages_and_marks_go_last() -> None:
    out = Output(P)
    out.add(CX_PARTIALS, b"a", b"1")
    out.mark(CX_PARTIALS, Watermark("j0", T0))
    out.send(CX_PARTIALS, b"alone", b"x", partition=0)
    out.add(CX_PARTIALS, b"b", b"2")
    out.mark(CX_PARTIALS, Watermark("j1", T0))
    sent = out.sent()
    assert [key for _, _, key, _ in sent] == [b"a", b"alone", b"b", *[WATERMARK_KEY] * P]
    # One message per partition carries every mark: O(P) per batch, not O(P²).
    assert [decode_command(v) for *_, v in sent[3:]] == [
        Marks([Watermark("j0", T0), Watermark("j1", T0)])] * P


class _Table(dict):
    """A Faust table as far as Staged sees it: a write queues its changelog record
    through ``send_changelog``, and the broker acknowledges it a little later."""

    name = "t"

    def __init__(self, log: list | None = None, ack_after: float | None = 0.01) -> None:
        super().__init__()
        self.log = [] if log is None else log
        self.ack_after = ack_after

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self.send_changelog(0, key, value)

    def send_changelog(self, partition: int, key: bytes, value: bytes) -> asyncio.Future:
        self.log.append(("queued", key))
        future = asyncio.get_running_loop().create_future()
        if self.ack_after is not None:
            def ack() -> None:
                self.log.append(("acked", key))
                future.set_result(None)
            asyncio.get_running_loop().call_later(self.ack_after, ack)
        return future


class _Topic:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    async def send(self, key: bytes, value: bytes, partition: int | None) -> asyncio.Future:
        self.log.append(("send", self.name))
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_commit_inserts_rows_then_sends_then_saves_group_by_group() -> None:
    """Each group's changelog records are acknowledged before the next group is written,
    and the last group's before the bookkeeping runs (and so before Faust may commit the
    batch's offsets: its own flush does not wait for queued changelog records)."""
    calls: list = []

    async def write(rows: object) -> None:
        calls.append(("rows",))

    first, second = _Table(calls), _Table(calls)

    class Event:  # what Staged makes Faust's current event while it writes
        class message:
            partition = 0

    a, b = Staged(first, lambda key: Event()), Staged(second, lambda key: Event())
    a[b"x"], b[b"y"] = b"1", b"2"
    assert (a.get(b"x"), b"x" in first) == (b"1", False)  # the batch sees it; the table not yet
    out = Output(P)
    out.rows["touchpoints"].append(())
    out.add(JOURNEY_EVENTS, b"k", b"v")
    out.save(a)
    out.save(b)
    out.then(lambda: calls.append(("then", dict(first), dict(second))))
    committer = Committer(write, {JOURNEY_EVENTS: _Topic(JOURNEY_EVENTS, calls)})
    asyncio.run(committer.commit(out))
    assert calls == [("rows",), ("send", JOURNEY_EVENTS), ("queued", b"x"), ("acked", b"x"),
                     ("queued", b"y"), ("acked", b"y"), ("then", {b"x": b"1"}, {b"y": b"2"})]
    assert "send_changelog" not in vars(first)  # the table is left as it was


def test_a_changelog_record_never_acknowledged_stops_the_batch_before_it_is_done() -> None:
    calls: list = []

    async def write(rows: object) -> None:
        pass

    table = _Table(calls, ack_after=None)  # the broker never answers

    class Event:
        class message:
            partition = 0

    staged = Staged(table, lambda key: Event())
    staged[b"x"] = b"1"
    out = Output(P)
    out.save(staged)
    out.then(lambda: calls.append(("then",)))
    committer = Committer(write, {}, broker_timeout=0.05)
    with pytest.raises(asyncio.TimeoutError):  # a transient error: the worker replays
        asyncio.run(committer.commit(out))
    assert calls == [("queued", b"x")]


# ── collector rejects ─────────────────────────────────────────────────────────
def test_the_collectors_rejects_become_dead_letter_rows_the_workers_own_are_skipped() -> None:
    from stream_processors.stages.rejects import CollectorRejects

    collector = json.dumps({"letter": 7, "reason": "unknown_type", "field": "$.event",
                            "error": "no such",
                            "source": "shop", "received_at": "2026-06-01T11:59:00+00:00",
                            "payload": '{"event": "Teleported"}'}).encode()
    own = json.dumps({"reason": "invalid_json", "field": "$", "error": "x", "topic": "t",
                      "partition": 0, "offset": 5, "payload": "{"}).encode()
    unnumbered = json.dumps({"reason": "too_large", "source": "shop"}).encode()
    out = CollectorRejects(P).record([Message(2, 40, b"m-1", collector),
                                      Message(2, 41, None, own),
                                      Message(2, 42, None, b"\xff not json"),
                                      Message(2, 43, b"m-1", collector),  # a retried send
                                      Message(2, 44, None, unnumbered)], NOW)
    letter = (datetime(2026, 6, 1, 11, 59, tzinfo=UTC), "collector:shop", 2, 7, "unknown_type",
              "$.event", "no such", '{"event": "Teleported"}')
    # One row key for both records of letter 7; the unnumbered one keyed by its offset.
    assert out.rows["dead_letters"][:2] == [letter, letter]
    assert out.rows["dead_letters"][2][1:5] == ("collector:shop", 2, 44, "too_large")
    assert out.sent() == [] and out.saves == []


# ── forgetting ────────────────────────────────────────────────────────────────
def forget_everywhere(request: str, *, customers: tuple[str, ...] = (),
                      devices: tuple[str, ...] = (), key: str = "k") -> list[Message]:
    """A Forget to every partition, as stream_processors/privacy.py sends it."""
    from schemas.privacy import id_hash
    from stream_processors.commands import Forget

    command = Forget(request, [id_hash(i, key) for i in (*customers, *devices)],
                     customers=list(customers), devices=list(devices),
                     journeys=[*customers, *(f"anon:{d}" for d in devices)])
    return [Message(p, 900 + p, b"\x00privacy", command) for p in range(P)]


def test_a_forget_erases_links_of_its_partition_and_drops_what_names_them_after() -> None:
    from stream_processors.commands import Unsuppress

    metrics = new_metrics()
    identity = IdentityResolver(P, privacy_key="k", metrics=metrics)
    devices: dict[bytes, bytes] = {}
    suppressed: dict[bytes, bytes] = {}
    # d-1 and d-2 belong to c-1 (identified), d-3 to c-2.
    for n, (device, customer) in enumerate((("d-1", "c-1"), ("d-2", "c-1"), ("d-3", "c-2"))):
        identity.resolve([Message(partition_for(device.encode(), P), n, device.encode(),
                                  Link(customer))], devices, NOW, suppressed)
    assert len(devices) == 3
    # The customer first: every link to them goes, wherever the device lives.
    out = identity.resolve(forget_everywhere("r/1", customers=("c-1",)), devices, NOW,
                           suppressed)
    assert list(devices) == [b"d-3"]
    acks = out.rows["privacy_acks"]
    assert sorted(a[2] for a in acks) == list(range(P)) and sum(a[3] for a in acks) == 2
    assert {a[0] for a in acks} == {"r/1"} and {a[1] for a in acks} == {"by-device"}
    # Afterwards a link to c-1 (an identify routed before the forget) makes no link, and
    # the other customer's device works as before.
    late = identity.resolve([Message(partition_for(b"d-9", P), 20, b"d-9", Link("c-1")),
                             Message(partition_for(b"d-3", P), 21, b"d-3",
                                     Touch(None, [tp("e1", "page_view", 0, anon="d-3")]))],
                            devices, NOW, suppressed)
    assert b"d-9" not in devices
    assert [(key, decode_command(v).customer_id)
            for _, _, key, v in late.sent(JOURNEY_EVENTS)] == [(b"anon:d-3", "c-2")]
    # The devices: their later anonymous touchpoints are dropped and counted.
    identity.resolve(forget_everywhere("r/2", devices=("d-1", "d-2")), devices, NOW,
                     suppressed)
    gone = identity.resolve([Message(partition_for(b"d-1", P), 30, b"d-1", Touch(
        None, [tp("e2", "page_view", 1, anon="d-1"), tp("e3", "page_view", 2, anon="d-1")]))],
        devices, NOW, suppressed)
    assert gone.sent() == [] and b"d-1" not in devices
    assert metrics.suppressed_touchpoints.labels("by-device")._value.get() == 3  # 1 link + 2
    # Allowed again: the same touchpoint goes to the device's anonymous journey.
    from schemas.privacy import id_hash

    allowed = [Message(p, 40, b"\x00privacy", Unsuppress("r/3", [id_hash("d-1", "k")]))
               for p in range(P)]
    identity.resolve(allowed, devices, NOW, suppressed)
    back = identity.resolve([Message(partition_for(b"d-1", P), 41, b"d-1", Touch(
        None, [tp("e4", "page_view", 3, anon="d-1")]))], devices, NOW, suppressed)
    assert [key for _, _, key, _ in back.sent(JOURNEY_EVENTS)] == [b"anon:d-1"]


def test_a_forget_erases_journeys_and_a_merge_still_under_way_never_lands() -> None:
    stage = updater()
    stage.suppression.key = "k"
    journeys: dict[bytes, bytes] = {}
    suppressed: dict[bytes, bytes] = {}
    c1, anon = b"c-1", b"anon:d-1"
    # c-1 has an order; d-1 browsed anonymously, and its identify is under way: the
    # MergeInto has not reached the device's journey when the forget comes.
    stage.update([Message(partition_for(c1, P), 1, c1, Touch("c-1", [
        tp("e1", "order_placed", 0, customer="c-1", order_id="o-1", revenue=5.0)])),
                  Message(partition_for(anon, P), 1, anon, Touch(None, [
                      tp("e2", "page_view", 1, anon="d-1")]))],
                 journeys, {}, NOW, 1, suppressed)
    assert set(journeys) == {c1, anon}
    out = stage.update(forget_everywhere("r/1", customers=("c-1",), devices=("d-1",)),
                       journeys, {}, NOW, 2, suppressed)
    assert journeys == {}
    assert sum(a[3] for a in out.rows["privacy_acks"]) == 2
    assert not any(out.rows[t] for t in ("touchpoints", "customer_journeys"))
    # What was under way: the MergeInto, a Merge, the customer's and the device's
    # touchpoints, and another customer's touchpoint that names the forgotten device.
    merge = Merge(JourneyLog(key="anon:d-1", events=[]))
    other = tp("e5", "page_view", 5, customer="c-2", anon="d-1")
    kept = tp("e6", "page_view", 6, customer="c-2")
    after = stage.update([
        Message(partition_for(anon, P), 5, anon, MergeInto("c-1")),
        Message(partition_for(c1, P), 6, c1, merge),
        Message(partition_for(c1, P), 7, c1, Touch("c-1", [tp("e3", "page_view", 3,
                                                              customer="c-1")])),
        Message(partition_for(anon, P), 8, anon, Touch(None, [tp("e4", "page_view", 4,
                                                                 anon="d-1")])),
        Message(partition_for(b"c-2", P), 9, b"c-2", Touch("c-2", [other, kept]))],
        journeys, {}, NOW, 3, suppressed)
    assert after.sent(JOURNEY_EVENTS) == []
    assert set(journeys) == {b"c-2"}
    assert [r["event_id"] for r in as_dicts(after.rows["touchpoints"], "touchpoints")] == ["e6"]
    assert stage.metrics.suppressed_touchpoints.labels("journey")._value.get() == 5


def test_forgotten_ids_are_read_from_the_table_after_a_restart_or_a_failed_batch() -> None:
    from schemas.privacy import id_hash
    from stream_processors.commands import Forget
    from stream_processors.suppression import Suppression

    p = partition_for(b"d-1", P)
    saved = {f"{p}|{id_hash('d-1', 'k')}".encode(): b"1"}  # as a changelog restores it
    suppression = Suppression("k", "by-device")
    assert suppression.holds(saved, p, ["d-1"]) and not suppression.holds(saved, p, ["d-2"])
    assert not suppression.holds(saved, (p + 1) % P, ["d-1"])  # each partition its own
    # A batch that failed after staging a forget: what memory saw is dropped, the table
    # (without the batch's writes) is read again.
    staged = dict(saved)
    suppression.apply(staged, p, Forget("r", [id_hash("d-2", "k")]))
    assert suppression.holds(staged, p, ["d-2"])
    suppression.known.clear()
    assert not suppression.holds(saved, p, ["d-2"]) and suppression.holds(saved, p, ["d-1"])
