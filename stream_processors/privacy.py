"""Forgetting a customer everywhere (``journey forget``), and allowing them back.

A forget runs in steps, each waiting for the one before it:

1. **The customer.** A ``Forget`` goes to every partition of the by-device and journey
   topics. Each partition suppresses the customer's hashed id from that message on
   (stream_processors/suppression.py), erases the customer's journey and every device
   link to them that it holds, and acknowledges with a ``privacy_acks`` row. Once
   every partition answered, nothing more about the customer can reach ClickHouse.
2. **Their devices**, as ClickHouse knows them now: the devices their ``identify``
   calls named (the only thing that links a device, stages/routing.py), and the
   device journeys merged into theirs. A second ``Forget`` suppresses those and erases
   the devices' links and anonymous journeys, including one not merged yet.
3. **Their rows**: every table that holds the customer's id, a device's id or one of
   their journeys, ``ALTER TABLE ... DELETE`` (``DELETE FROM`` on 23.8+), then waits
   until ClickHouse's mutations are done, and counts again: a worker that crashed
   between its acknowledgement and saving its state replays that batch, and its rows
   come back; they are deleted again. ``cx_metrics`` keeps its counts (no personal
   data in an aggregate).

The collector learns suppressed ids from the ``<prefix>.suppressions`` topic, so that
it drops their events before they reach Kafka; the worker needs no such list, its
partitions hold their own. The ``privacy_audit`` table records each request twice (when
it started, how it ended) with the id's keyed hash, never the id. Kafka's topics still
hold the raw touchpoints until their retention (7 days by default on Apache Kafka);
a replay of them is suppressed.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer

from schemas import utcnow
from schemas.privacy import id_hash
from schemas.settings import Settings
from stream_processors.clickhouse.client import connect, server_dialect
from stream_processors.clickhouse.ddl import deletion, local_table
from stream_processors.commands import PRIVACY_KEY, Forget, Unsuppress, encode_command

__all__ = ["PERSONAL_TABLES", "PrivacyError", "Report", "check_id", "forget", "unsuppress"]

#: Every table with personal data, and what names a customer's rows in each.
PERSONAL_TABLES = ("touchpoints", "customer_journeys", "journey_transitions",
                   "support_tickets", "journey_alerts", "dead_letters")
MAX_ID_LENGTH = 128  # as touchpoints' ids


class PrivacyError(ValueError):
    """A request that cannot be carried out as asked (bad input, no worker answering)."""


@dataclass
class Report:
    """What a request did: counts, never ids."""

    request: str
    action: str
    id_hash: str
    outcome: str = "started"
    devices: int = 0
    state_keys: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"request": self.request, "action": self.action, "id_hash": self.id_hash,
                "outcome": self.outcome, "devices": self.devices,
                "state_keys": self.state_keys, "rows": dict(self.rows),
                "seconds": round(self.seconds, 1)}

    def summary(self) -> str:
        if self.action == "unsuppress":
            return ("not forgotten before: nothing to allow again" if self.outcome == "not_found"
                    else f"allowed again ({self.devices + 1} ids) in {self.seconds:.1f} s")
        rows = sum(self.rows.values())
        if self.outcome == "not_found":
            return (f"nothing was held for this id (0 state keys, 0 rows) in "
                    f"{self.seconds:.1f} s; it is suppressed from now on")
        per_table = ", ".join(f"{t} {n:,}" for t, n in self.rows.items() if n) or "none"
        return (f"erased {self.state_keys:,} state keys and {rows:,} rows ({per_table}); "
                f"{self.devices} device(s) forgotten with the customer, in "
                f"{self.seconds:.1f} s; suppressed from now on")


def check_id(value: object, what: str = "customer id") -> str:
    """``value`` as an id a request may name; :class:`PrivacyError` says what is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise PrivacyError(f"the {what} is empty: name the customer to forget")
    if len(value) > MAX_ID_LENGTH:
        raise PrivacyError(f"the {what} is over {MAX_ID_LENGTH} characters, so no touchpoint "
                           "can carry it")
    return value


def forget(settings: Settings, customer: str, *, requested_by: str,
           progress: Callable[[str], None] = lambda line: None) -> Report:
    """Erase ``customer`` and their devices everywhere and suppress them (module doc)."""
    customer = check_id(customer)
    started = time.monotonic()
    key = settings.privacy_key
    report = Report(uuid.uuid4().hex, "forget", id_hash(customer, key))
    with _Channels(settings, progress) as ch:
        ch.audit(report, [report.id_hash], requested_by, utcnow())
        try:
            _forget(ch, report, customer, key, requested_by, started)
        except Exception as exc:
            report.outcome = f"failed: {type(exc).__name__}"
            report.seconds = time.monotonic() - started
            with contextlib.suppress(Exception):  # the audit says so, if it can
                ch.audit(report, [report.id_hash], requested_by, ch.requested_at)
            raise
    return report


def _forget(ch: _Channels, report: Report, customer: str, key: str, requested_by: str,
            started: float) -> None:
    """The steps of :func:`forget` (module doc), filling ``report`` in."""
    requested_at = ch.requested_at
    ch.suppress_at_collectors([report.id_hash], active=True)
    acks = ch.step(Forget(f"{report.request}/customer", [report.id_hash],
                          customers=[customer], journeys=[customer]),
                   "the customer is suppressed and their state erased")
    devices = ch.devices_of(customer)
    hashes = [report.id_hash]
    if devices:
        device_hashes = [id_hash(d, key) for d in devices]
        hashes += device_hashes
        ch.suppress_at_collectors(device_hashes, active=True)
        acks += ch.step(Forget(f"{report.request}/devices", device_hashes,
                               devices=devices, journeys=[f"anon:{d}" for d in devices]),
                        f"{len(devices)} device(s) suppressed and their state erased")
    report.devices, report.state_keys = len(devices), acks
    report.rows = ch.delete_rows(customer, devices)
    report.outcome = "erased" if acks or any(report.rows.values()) else "not_found"
    report.seconds = time.monotonic() - started
    ch.audit(report, hashes, requested_by, requested_at)


def unsuppress(settings: Settings, customer: str, *, requested_by: str,
               progress: Callable[[str], None] = lambda line: None) -> Report:
    """Let a forgotten customer's (and their devices') events in again."""
    customer = check_id(customer)
    started = time.monotonic()
    report = Report(uuid.uuid4().hex, "unsuppress", id_hash(customer, settings.privacy_key))
    with _Channels(settings, progress) as ch:
        hashes = ch.forgotten_with(report.id_hash)
        if not hashes:
            report.outcome = "not_found"
        else:
            ch.audit(report, hashes, requested_by, utcnow())
            ch.step(Unsuppress(report.request, hashes), "allowed again in every partition")
            ch.suppress_at_collectors(hashes, active=False)
            report.outcome, report.devices = "allowed", len(hashes) - 1
        report.seconds = time.monotonic() - started
        ch.audit(report, hashes, requested_by, ch.requested_at or utcnow())
    return report


class _Channels:
    """The broker and ClickHouse, as one request uses them."""

    def __init__(self, settings: Settings, progress: Callable[[str], None]) -> None:
        self.settings = settings
        self.progress = progress
        self.db = settings.clickhouse_database
        #: On a cluster, rows live in the replicated ``<table>_local`` tables of each shard.
        self.cluster = settings.clickhouse_cluster or None
        self.requested_at: Any = None
        self.clickhouse = connect(settings.clickhouse_url, database=self.db)
        self.dialect = server_dialect(self.clickhouse)
        self.modern = self.dialect.modern
        self.producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                      client_id=f"{settings.app_id}-privacy",
                                      request_timeout_ms=15_000, max_block_ms=30_000)

    def __enter__(self) -> _Channels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.producer.close(timeout=10)
        self.clickhouse.disconnect()

    # ── the worker's partitions ──────────────────────────────────────────────
    def step(self, command: Forget | Unsuppress, done: str) -> int:
        """Send ``command`` to every partition of both stages, wait for every answer;
        returns how many state keys they erased."""
        topics = (self.settings.by_device_topic, self.settings.journey_events_topic)
        expected = 0
        value = encode_command(command)
        sent = []
        for topic in topics:
            partitions = self.producer.partitions_for(topic)
            if not partitions:
                raise PrivacyError(f"topic {topic} does not exist: start a worker first "
                                   "(`journey up` or `journey worker`)")
            for partition in sorted(partitions):
                sent.append(self.producer.send(topic, value, key=PRIVACY_KEY,
                                               partition=partition))
            expected += len(partitions)
        for future in sent:
            future.get(timeout=30)
        deadline = time.monotonic() + self.settings.privacy_timeout_seconds
        said = -1
        while True:
            answered, erased = self.clickhouse.execute(
                "SELECT count(), sum(e) FROM (SELECT stage, partition, max(erased) AS e "
                f"FROM {self.db}.privacy_acks WHERE request = %(r)s GROUP BY stage, partition)",
                {"r": command.request})[0]
            if answered >= expected:
                self.progress(f"{done} ({expected} partitions answered)")
                return int(erased or 0)
            if answered != said:
                said = answered
                self.progress(f"waiting for the workers: {answered}/{expected} partitions "
                              "answered ...")
            if time.monotonic() > deadline:
                raise PrivacyError(
                    f"only {answered} of {expected} partitions answered within "
                    f"{self.settings.privacy_timeout_seconds:.0f} s: is a worker running? The "
                    "request stays queued and runs when one starts; run the same command "
                    "again to finish it (JOURNEY_PRIVACY_TIMEOUT_SECONDS)")
            time.sleep(0.25)

    def suppress_at_collectors(self, hashes: Iterable[str], *, active: bool) -> None:
        topic = self.settings.suppressions_topic
        futures = [self.producer.send(topic, json.dumps({"hash": h, "active": active}).encode(),
                                      key=h.encode()) for h in hashes]
        for future in futures:
            future.get(timeout=30)

    # ── ClickHouse ───────────────────────────────────────────────────────────
    def devices_of(self, customer: str) -> list[str]:
        """The devices linked to ``customer``: named by their identify calls, or whose
        journeys were merged into theirs."""
        named = self.clickhouse.execute(
            f"SELECT DISTINCT anonymous_id FROM {self.db}.touchpoints WHERE customer_id = %(c)s "
            "AND type = 'identify' AND anonymous_id != ''", {"c": customer})
        merged = self.clickhouse.execute(
            f"SELECT DISTINCT journey_key FROM {self.db}.customer_journeys "
            "WHERE merged_into = %(c)s", {"c": customer})
        devices = {row[0] for row in named}
        devices |= {row[0][5:] for row in merged if row[0].startswith("anon:")}
        return sorted(devices)

    def delete_rows(self, customer: str, devices: list[str]) -> dict[str, int]:
        """Delete every row that names them; returns the rows deleted per table."""
        conditions = _conditions(customer, devices)
        deleted = dict.fromkeys(PERSONAL_TABLES, 0)
        for attempt in range(3):  # again for rows a replaying worker wrote back
            found = {t: self._count(t, c) for t, c in conditions.items()}
            found = {t: n for t, n in found.items() if n}
            if not found:
                break
            for table, n in found.items():
                deleted[table] += n
                self.clickhouse.execute(deletion(self.dialect, self.db, table, conditions[table],
                                                 self.cluster))
            self.progress(("deleting" if attempt == 0 else "deleting again") + ": " + ", ".join(
                f"{t} {n:,}" for t, n in found.items()))
            self._wait_for_mutations([local_table(t, self.cluster) for t in found])
        else:
            raise PrivacyError("rows kept coming back after three deletions; is a worker "
                               "replaying? Run the same command again")
        return deleted

    def _count(self, table: str, condition: str) -> int:
        return int(self.clickhouse.execute(
            f"SELECT count() FROM {self.db}.{table} WHERE {condition}")[0][0])

    def _wait_for_mutations(self, tables: list[str]) -> None:
        deadline = time.monotonic() + self.settings.privacy_timeout_seconds
        while True:
            pending = self.clickhouse.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s "
                "AND table IN %(t)s AND is_done = 0", {"db": self.db, "t": tuple(tables)})[0][0]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise PrivacyError(f"ClickHouse's deletions were not done within "
                                   f"{self.settings.privacy_timeout_seconds:.0f} s "
                                   "(system.mutations); run the same command again")
            time.sleep(0.2)

    def forgotten_with(self, hashed: str) -> list[str]:
        """Every hash suppressed by forgetting the id behind ``hashed``, that id's first."""
        rows = self.clickhouse.execute(
            f"SELECT hashes FROM {self.db}.privacy_audit WHERE action = 'forget' "
            "AND id_hash = %(h)s AND outcome != 'started'", {"h": hashed})
        hashes = {h for row in rows for h in row[0]} - {hashed}
        return [hashed, *sorted(hashes)] if rows else []

    def audit(self, report: Report, hashes: list[str], requested_by: str,
              requested_at: Any) -> None:
        self.requested_at = requested_at
        self.clickhouse.execute(
            f"INSERT INTO {self.db}.privacy_audit (request, action, id_hash, hashes, "
            "requested_at, requested_by, outcome, erased, finished_at) VALUES",
            [(report.request, report.action, report.id_hash, hashes,
              requested_at.replace(microsecond=0) if not self.modern else requested_at,
              requested_by, report.outcome, json.dumps(report.as_dict()["rows"]),
              utcnow() if self.modern else utcnow().replace(microsecond=0))])


def _conditions(customer: str, devices: list[str]) -> dict[str, str]:
    """Per table, the SQL condition that names the customer or one of their devices."""
    keys = [customer, *(f"anon:{d}" for d in devices)]
    journey = f"customer_id = {_quote(customer)} OR journey_key IN ({_list(keys)})"
    out = {table: journey for table in ("journey_transitions", "support_tickets",
                                        "journey_alerts")}
    out["customer_journeys"] = f"{journey} OR merged_into = {_quote(customer)}"
    out["touchpoints"] = journey + (f" OR anonymous_id IN ({_list(devices)})" if devices else "")
    # A rejected payload is JSON; its ids are quoted strings in it.
    out["dead_letters"] = " OR ".join(f"position(payload, {_quote(json.dumps(i))}) > 0"
                                      for i in [customer, *devices])
    return out


def _quote(value: str) -> str:
    """A ClickHouse string literal (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _list(values: list[str]) -> str:
    return ", ".join(_quote(v) for v in values)
