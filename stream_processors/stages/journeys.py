"""Third hop, keyed by journey (a customer, or ``anon:<device>``): each journey's log.

A journey's state is a summary of its older touchpoints and the tail of its latest
ones (stream_processors/journey.py folds them; :func:`compact` keeps the tail bounded
after each batch's rows are built). For each batch, a journey takes in its commands:

- ``Touch``: new touchpoints (duplicates by event id change nothing). To a device's
  journey, a touchpoint the device stage resolved to a customer, or one that reaches
  the marker of a merged device journey, goes on to that customer (see below);
- ``MergeInto`` (to an anonymous journey): its device was identified; the log moves to
  the customer's journey as a ``Merge``, and its own rows are retracted;
- ``Merge`` (to a customer's journey): a device journey joins it;
- ``Sweep``: fold again with today's clock (inactivity churn, no touchpoint to say so).

Then every changed journey is folded once (only its new touchpoints, when they come
in time order and it keeps its fold) and written: its snapshot, the transitions and
tickets that changed, its new touchpoints' rows, the alerts they raise for the first
time, and what they contribute to the CX windows (handed to :class:`PartitionWindows`).

**A device's touchpoints after its link** come through the device's journey, which
sends them on to the customer's: so they reach it after the ``Merge`` the link caused
(sent from there before them), and a copy of a touchpoint the device journey had (an
SDK's retry of a pre-login event, sent again after the login) is a duplicate there,
not a second count. Sent straight to the customer's journey, such a copy usually came
before the merge, and counted in the CX windows once in each journey. A touchpoint that
reaches a merged journey's marker without a customer (the device's link expired a
sweep before the marker) goes on to the customer the marker names, as the link would
have sent it.

Saving order: the CX windows (``cx-partials``) first, then ``journeys``: the journeys'
known event ids are what keeps a replay from contributing again, so they are saved
only once the windows hold the contributions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from schemas import Touchpoint, decode_trusted
from schemas.partitioning import partition_for
from stream_processors.clickhouse.rows import (
    COLUMNS,
    alert_row,
    changed_rows,
    deleted_transitions,
    journey_row,
    merged_row,
    ticket_rows,
    touchpoint_row,
    transition_rows,
)
from stream_processors.commands import (
    Command,
    Expire,
    Forget,
    Merge,
    MergeInto,
    Sweep,
    Touch,
    Unsuppress,
    Watermark,
    encode_command,
)
from stream_processors.contributions import (
    answer_category,
    contributions_of_new,
    resolve_pending,
)
from stream_processors.cx_metrics import csat_satisfied, nps_category
from stream_processors.effects import ALERTS, JOURNEY_EVENTS, Message, Output, Store
from stream_processors.journey import (
    COMPRESS_UP_TO,
    Alert,
    Journey,
    JourneyLog,
    add_events,
    alerts_for,
    behind_summary,
    compact,
    decode_log,
    encode_log,
    event_of,
    fold,
    for_customer,
    merge_logs,
    touchpoint_of,
)
from stream_processors.metrics import WorkerMetrics
from stream_processors.stages.partials import Numbered, PartitionWindows
from stream_processors.stages.per_partition import Decoded, PerPartition
from stream_processors.suppression import Suppression

__all__ = ["JourneyUpdater", "needs_sweep", "past_retention"]

#: Per partition, the encoded bytes of long journeys (stored plain, past
#: ``compress_up_to``: a bot's, a kiosk's) kept decoded between batches. Decoding such a
#: log on every batch was a quarter of its batch (the journey_state bench); the
#: simulated customers' logs are all shorter, so on the full bench nothing is kept.
DECODED_JOURNEY_BYTES = 256 * 1024


def needs_sweep(journey_log: JourneyLog, now: datetime, inactive_after: timedelta) -> bool:
    """Whether the inactivity sweep should fold this journey again: quiet for longer
    than ``inactive_after``, and not swept since its last change."""
    return not (journey_log.merged_into or not journey_log.events
                or journey_log.swept_version == journey_log.version
                or now - journey_log.events[-1].at <= inactive_after)


def past_retention(journey_log: JourneyLog, now: datetime, *, anonymous: timedelta | None,
                   merged: timedelta | None) -> bool:
    """Whether a journey's state may go: a device journey merged into its customer's, or
    an anonymous one, unchanged for longer than its retention (an identified journey
    stays). A journey whose last change is not known counts as past it: the ``Expire``
    it is sent then stamps it instead of deleting it."""
    retention = (merged if journey_log.merged_into
                 else anonymous if journey_log.customer_id is None else None)
    return retention is not None and (journey_log.updated_at is None
                                      or now - journey_log.updated_at > retention)


class _Batch:
    """What one batch gathers before the journeys are folded and written."""

    def __init__(self) -> None:
        self.logs: dict[bytes, JourneyLog] = {}
        self.fresh: dict[bytes, list[Touchpoint]] = defaultdict(list)
        #: event id → offset of the message that brought it.
        self.offsets: dict[str, int] = {}
        #: a journey's last message: its partition and offset.
        self.last: dict[bytes, tuple[int, int]] = {}
        #: event ids counted in another journey (merged in from a device's).
        self.counted: set[str] = set()
        #: The partitions' forgotten ids (stream_processors/suppression.py).
        self.suppressed: Store = {}
        #: Per partition, what new touchpoints contribute to CX windows.
        self.contributions: dict[int, list[Numbered]] = defaultdict(list)


class JourneyUpdater:
    def __init__(self, metrics: WorkerMetrics, partitions: int, windows: PartitionWindows, *,
                 lateness: timedelta, first_response_sla: timedelta,
                 inactive_after: timedelta | None, churn_risk_alert: int,
                 anonymous_retention: timedelta | None = None,
                 merged_retention: timedelta | None = None, privacy_key: str = "",
                 tail: timedelta = timedelta(days=90), tail_touchpoints: int = 128,
                 compress: bool = True, compress_up_to: int = COMPRESS_UP_TO) -> None:
        self.metrics = metrics
        self.compress = compress
        self.compress_up_to = compress_up_to
        self.suppression = Suppression(privacy_key, "journey")
        self.partitions = partitions
        self.windows = windows
        self.lateness = lateness
        self.sla = first_response_sla
        self.inactive_after = inactive_after
        self.churn_risk_alert = churn_risk_alert
        self.anonymous_retention = anonymous_retention
        self.merged_retention = merged_retention
        self.tail = tail
        self.tail_touchpoints = tail_touchpoints
        #: Long logs as last written, with the bytes written (see DECODED_JOURNEY_BYTES).
        #: A batch takes a log out before it changes it and puts it back only once it is
        #: encoded, so what is here always decodes from the bytes beside it; a failed
        #: batch (``forget``) or a revocation drops a partition's.
        self.decoded: PerPartition[Decoded[tuple[JourneyLog, bytes]]] = PerPartition(
            lambda _partition: Decoded(DECODED_JOURNEY_BYTES))

    @property
    def changes_with_time(self) -> bool:
        """Whether journeys may need a command with no touchpoint (churn, retention)."""
        return (self.inactive_after is not None or self.anonymous_retention is not None
                or self.merged_retention is not None)

    def due(self, journey_log: JourneyLog, now: datetime) -> Sweep | Expire | None:
        """The command the sweep sends a journey, if time alone changed it: fold again as
        churned, or forget it past its retention."""
        if self.inactive_after is not None and needs_sweep(journey_log, now,
                                                           self.inactive_after):
            return Sweep()
        if past_retention(journey_log, now, anonymous=self.anonymous_retention,
                          merged=self.merged_retention):
            return Expire()
        return None

    def update(self, batch: Sequence[Message], journeys: Store, cx_partials: Store,
               now: datetime, version: int, suppressed: Store | None = None) -> Output:
        """``batch``: decoded commands (and watermarks); ``version``: the rows' version
        (later writes of the same fact win); ``suppressed``: the partitions' forgotten
        ids."""
        out = Output(self.partitions)
        b = _Batch()
        if suppressed is not None:
            b.suppressed = suppressed
        marks: list[tuple[int, Watermark]] = []
        for message in batch:
            if isinstance(message.value, Watermark):
                marks.append((message.partition, message.value))
                continue
            if isinstance(message.value, Forget | Unsuppress):
                self._privacy(b, out, journeys, message.partition, message.value, now)
                continue
            if self._suppressed(b, message):
                continue
            self._apply(b, out, journeys, message, now, version)
        for key, journey_log in b.logs.items():
            if not (journey_log.events or journey_log.merged_into or key in journeys):
                continue  # e.g. told to merge a device that had no anonymous visit: no state
            partition, offset = b.last[key]
            if journey_log.events and not journey_log.merged_into:
                self._emit(b, out, key, journey_log, now, version, b.contributions[partition],
                           offset)
            stored = journeys[key] = encode_log(journey_log, self.compress,
                                                self.compress_up_to)
            if len(stored) > self.compress_up_to:  # long, so plain: see encode_log
                self.decoded[partition].put(key, (journey_log, stored), len(stored))
        self.metrics.kept_decoded_bytes.set(sum(self.decoded[p].size for p in self.decoded))
        self.windows.process(out, cx_partials, marks, b.contributions, now)
        out.save(cx_partials)
        out.save(b.suppressed, journeys)
        return out

    def _privacy(self, b: _Batch, out: Output, journeys: Store, partition: int,
                 command: Forget | Unsuppress, now: datetime) -> None:
        """Suppress (or allow again) the command's ids in this partition; a ``Forget``
        also erases the journeys it names that live here, with whatever this batch had
        gathered for them (their rows are not written: they would only be deleted)."""
        self.suppression.apply(b.suppressed, partition, command)
        erased = 0
        if isinstance(command, Forget):
            for name in command.journeys:
                key = name.encode()
                if partition_for(key, self.partitions) != partition:
                    continue
                held = b.logs.pop(key, None)
                self.decoded[partition].drop(key)
                b.fresh.pop(key, None)
                b.last.pop(key, None)
                if journeys.get(key) is not None:
                    del journeys[key]
                    erased += 1
                elif held is not None and held.events:
                    erased += 1
        self.suppression.ack(out, command, partition, erased, now)

    def _suppressed(self, b: _Batch, message: Message) -> bool:
        """Whether the message is dropped as naming a forgotten id: its journey's, a
        merge's customer; a touch loses only the touchpoints from a forgotten device."""
        command = message.value
        if isinstance(command, Sweep | Expire):
            return False
        key: bytes = message.key
        own = key[5:] if key.startswith(b"anon:") else key
        ids: list[str | None] = [own.decode(errors="replace")]
        if isinstance(command, MergeInto):
            ids.append(command.customer_id)
        if not self.suppression.holds(b.suppressed, message.partition, ids):
            return False  # a touch's own devices are checked as it is decoded (_command)
        self.metrics.suppressed_touchpoints.labels("journey").inc(
            len(command.touchpoints) if isinstance(command, Touch) else 1)
        return True

    def _apply(self, b: _Batch, out: Output, journeys: Store, message: Message,
               now: datetime, version: int) -> None:
        key: bytes = message.key
        command: Command = message.value
        if isinstance(command, Touch) and command.customer_id and key.startswith(b"anon:"):
            self._send_on(out, command.customer_id, command)  # the device stage's link
            return
        journey_log = b.logs.get(key) or self._load(journeys, key, message.partition, now)
        if isinstance(command, Touch) and journey_log.merged_into:  # a merged journey's
            self._send_on(out, journey_log.merged_into, command)
            return
        b.logs[key] = journey_log
        b.last[key] = (message.partition, message.offset)
        before = journey_log.version
        self._command(b, out, journeys, key, journey_log, command, message, now, version)
        if journey_log.version != before:
            journey_log.updated_at = now

    def _load(self, journeys: Store, key: bytes, partition: int,
              now: datetime) -> JourneyLog:
        """The journey as stored: the log kept decoded if it is the one stored (taken
        out, as this batch may change it), else decoded from the table."""
        stored = journeys.get(key)
        kept = self.decoded[partition].take(key)
        if stored is None:
            return _new_log(key, now)
        if kept is not None and kept[1] == stored:
            return kept[0]
        return decode_log(stored)

    def _send_on(self, out: Output, customer: str, command: Touch) -> None:
        """A device's touchpoints, on to the customer's journey (see the module's doc)."""
        out.add(JOURNEY_EVENTS, customer.encode(),
                encode_command(Touch(customer, command.touchpoints)))

    def _command(self, b: _Batch, out: Output, journeys: Store, key: bytes,
                 journey_log: JourneyLog, command: Command, message: Message, now: datetime,
                 version: int) -> None:
        if isinstance(command, Expire):
            if journey_log.updated_at is None:  # from before retention: its clock starts now
                journey_log.updated_at = now
            elif past_retention(journey_log, now, anonymous=self.anonymous_retention,
                                merged=self.merged_retention):
                del b.logs[key]  # a later command of this batch starts it afresh
                b.fresh.pop(key, None)
                if journeys.get(key) is not None:
                    del journeys[key]
            return
        if isinstance(command, Touch):
            anonymous = journey_log.customer_id is None and command.customer_id is None
            tps = [decode_trusted(raw) for raw in command.touchpoints]
            if command.customer_id:  # a customer's touchpoint may name a forgotten device
                kept = [(tp, raw) for tp, raw in zip(tps, command.touchpoints, strict=True)
                        if not self.suppression.holds(b.suppressed, message.partition,
                                                      (tp.anonymous_id,))]
                if len(kept) < len(tps):
                    self.metrics.suppressed_touchpoints.labels("journey").inc(
                        len(tps) - len(kept))
                    tps = [tp for tp, _ in kept]
                    command = Touch(command.customer_id, [raw for _, raw in kept])
            if journey_log.events:
                horizon = journey_log.events[-1].at - self.lateness
                self.metrics.late_touchpoints.inc(sum(1 for tp in tps
                                                      if tp.occurred_at < horizon))
                self.metrics.behind_summary_touchpoints.inc(
                    sum(1 for tp in tps if behind_summary(journey_log, tp.occurred_at)))
            added = add_events(journey_log, [event_of(tp, keep_row=anonymous) for tp in tps],
                               command.customer_id)
            new_ids = {e.event_id for e in added}
            b.fresh[key] += [tp for tp in tps if tp.event_id in new_ids]
            b.offsets.update((event_id, message.offset) for event_id in new_ids)
        elif isinstance(command, Sweep):
            journey_log.swept_version = journey_log.version
        elif isinstance(command, MergeInto):
            if journey_log.merged_into or not journey_log.events:
                return
            retracted = version
            if b.fresh.get(key):
                # This batch's touchpoints of the device get their rows and count in the
                # CX windows here, as if its batch ended before the merge: the merge
                # carries only the tail (one folded into the summary would have had no
                # row: the fuzz lost one), and the customer's journey takes the tail's as
                # counted already. The retraction below then outranks the rows just made.
                self._emit(b, out, key, journey_log, now, version,
                           b.contributions[message.partition], message.offset)
                b.fresh.pop(key)
                retracted = version + 1
            out.add(JOURNEY_EVENTS, command.customer_id.encode(),
                    encode_command(Merge(msgspec.structs.replace(journey_log))))
            out.rows["customer_journeys"].append(merged_row(
                journey_log.key, command.customer_id, journey_log.anonymous_ids,
                journey_log.first_seen, (journey_log.version + 1) * 2, now))
            # Every row it may have written, not only those its state counts: a crash
            # after a batch wrote them and before its state was saved left more (a fold
            # moves at most once per touchpoint, and once more for inactivity).
            out.rows["journey_transitions"] += deleted_transitions(
                journey_log.key, None, 0,
                max(journey_log.emitted_transitions, journey_log.touchpoints + 1),
                journey_log.first_seen, retracted)
            journey_log.merged_into = command.customer_id
            journey_log.events, journey_log.emitted_transitions = [], 0
            journey_log.base, journey_log.state, journey_log.seen = b"", None, b""
            journey_log.transition_digests, journey_log.ticket_digests = {}, {}
            journey_log.version += 1
        elif isinstance(command, Merge):
            # Every touchpoint the device journey held is written again under the
            # customer, even one the customer's journey already had (a duplicate routed
            # here after the link): the device journey may have written its row later,
            # and this merge comes after that journey's last write.
            b.fresh[key] += [tp for e in command.log.events
                             if (tp := touchpoint_of(e)) is not None]
            command.log.events = [for_customer(e) for e in command.log.events]
            merge_logs(journey_log, command.log)
            b.counted.update(e.event_id for e in command.log.events)  # in the device journey

    def _emit(self, b: _Batch, out: Output, key: bytes, journey_log: JourneyLog,
              now: datetime, version: int, contributions: list[Numbered], offset: int) -> None:
        """Rows and first-time alerts of a journey that changed, and what its new
        touchpoints contribute to CX windows, each with the offset of the message that
        brought its touchpoint (``offset``, the journey's last message of the batch, for
        answers whose rated thing arrived now)."""
        rows = out.rows
        fresh = {tp.event_id: tp for tp in b.fresh.get(key, [])}
        j = fold(journey_log, inactive_after=self.inactive_after, now=now)
        if not fresh.keys() <= j.stage_at_event.keys():
            # A row to write again for a touchpoint folded before (a device's copy of
            # one the journey had): its stage comes from folding the tail again.
            journey_log.applied = -1
            j = fold(journey_log, inactive_after=self.inactive_after, now=now)
        new = [(offset, c) for c in resolve_pending(j, journey_log)]
        # Twice the log version, plus one once inactivity churned it: the sweep's row (no
        # new touchpoint, same log version) wins over the last one, and loses to the next.
        snapshot_version = journey_log.version * 2 + int(j.churn_reason == "inactive")
        rows["customer_journeys"].append(journey_row(j, snapshot_version, now))
        # Only the rows that changed since they were last written (the fold re-derives
        # them all); then deletions for the transitions a refold dropped.
        transitions, journey_log.transition_digests = changed_rows(
            transition_rows(j, 0, version), journey_log.transition_digests, _seq)
        rows["journey_transitions"] += transitions + deleted_transitions(
            j.key, j.customer_id, j.transition_count, journey_log.emitted_transitions,
            j.first_seen, version)
        tickets, journey_log.ticket_digests = changed_rows(
            ticket_rows(j, version), journey_log.ticket_digests, _ticket_id)
        rows["support_tickets"] += tickets
        uncounted = fresh.keys() - b.counted
        for tp in fresh.values():
            rows["touchpoints"].append(touchpoint_row(
                tp, j.key, journey_log.customer_id,
                j.stage_at_event.get(tp.event_id, j.stage), now, version))
            if tp.event_id not in b.counted:
                added, new_fact = contributions_of_new(event_of(tp), j, journey_log, uncounted)
                if new_fact:
                    self._count_cx(tp, j)
                brought_by = b.offsets.get(tp.event_id, offset)
                new += [(brought_by, c) for c in added]
        contributions += new
        for _, c in new:
            if c.dimension.startswith("rated="):
                self.metrics.cx_rated_responses.labels(c.metric, answer_category(c),
                                                       c.dimension[6:]).inc()
        journey_log.emitted_transitions = j.transition_count
        raised = [a for a in alerts_for(journey_log, j, now=now, first_response_sla=self.sla,
                                        churn_risk_threshold=self.churn_risk_alert,
                                        new=[event_of(tp) for tp in fresh.values()])
                  if not journey_log.raised_before(a.alert_id)]
        journey_log.remember_raised([a.alert_id for a in raised])
        rows["journey_alerts"] += [alert_row(a, now) for a in raised]
        self._raise(out, raised)
        self.metrics.summarised_touchpoints.inc(compact(
            journey_log, tail=self.tail, tail_touchpoints=self.tail_touchpoints))

    def _raise(self, out: Output, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.metrics.alerts_raised.labels(alert.kind).inc()
            out.send(ALERTS, alert.customer_id.encode(), msgspec.json.encode(alert))

    def _count_cx(self, tp: Touchpoint, j: Journey) -> None:
        """CX counters for a touchpoint new to its journey.

        The journey log deduplicates, so replays do not count twice; touchpoints merged
        in from a device journey were counted there (and a device's copies sent after
        its link come after the merge: a duplicate here).
        """
        m = self.metrics
        p = tp.properties
        if tp.type == "survey_response":
            survey, score = p["survey"], int(p["score"])
            if survey == "nps":
                category = nps_category(score)
            elif survey == "csat":
                category = "satisfied" if csat_satisfied(score) else "unsatisfied"
            else:
                category = "answered"
                m.cx_ces_score.observe(score)
            m.cx_survey_responses.labels(survey, category, tp.channel).inc()
        elif tp.type == "order_placed":
            m.cx_orders.inc()
        elif tp.type == "delivery_updated":
            m.cx_deliveries.labels(p["status"]).inc()
        elif tp.type == "support_ticket_opened":
            m.cx_tickets_opened.labels(p["channel"]).inc()
        elif tp.type in ("support_message", "support_ticket_resolved"):
            ticket = j.tickets.get(str(p.get("ticket_id")))
            if ticket is None:
                return
            if ticket.first_response_at == tp.occurred_at and p.get("author") == "agent":
                m.cx_first_response_seconds.observe(ticket.first_response_seconds or 0.0)
            elif ticket.resolved_at == tp.occurred_at and ticket.status == "resolved":
                m.cx_resolution_seconds.observe(ticket.resolution_seconds or 0.0)


_SEQ = COLUMNS["journey_transitions"].index("seq")
_TICKET_ID = COLUMNS["support_tickets"].index("ticket_id")


def _seq(row: tuple) -> int:
    return row[_SEQ]


def _ticket_id(row: tuple) -> str:
    return row[_TICKET_ID]


def _new_log(key: bytes, now: datetime) -> JourneyLog:
    text = key.decode()
    # A new journey's versions start from the clock, not 0: one that comes back after
    # its state expired must outrank the rows its earlier self wrote (a journey changes
    # far fewer times than there are seconds in a retention).
    return JourneyLog(key=text, customer_id=None if text.startswith("anon:") else text,
                      version=int(now.timestamp()))
