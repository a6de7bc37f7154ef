"""Service configuration: one typed object, read from the environment in one place.

Each setting is declared once, with its type, environment variable, default and a
docstring-like ``doc`` that ``journey config`` prints and the README table mirrors.
The defaults run against the local stack that ``journey up`` starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from schemas.bounds import TimeBounds
from schemas.privacy import Redaction
from schemas.touchpoint import TOUCHPOINT_TYPES

__all__ = ["ConfigError", "Settings"]


class ConfigError(ValueError):
    """A setting from the environment could not be used."""


def _setting(default: Any, env: str, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc, "secret": secret})


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Every knob of the worker, the collector and the local stack."""

    broker_url: str = _setting(
        "127.0.0.1:9092", "JOURNEY_BROKER_URL",
        "Kafka bootstrap servers, comma separated. The local stack's broker listens on "
        "the first one.")
    topic_prefix: str = _setting(
        "journey", "JOURNEY_TOPIC_PREFIX",
        "Prefix of every topic the service owns (`<prefix>.touchpoints`, ...).")
    topic_partitions: int = _setting(
        8, "JOURNEY_TOPIC_PARTITIONS",
        "Partitions of the touchpoint topic and the tables' changelogs: the ceiling on "
        "how many workers can share the work.")
    topic_replication: int = _setting(
        1, "JOURNEY_TOPIC_REPLICATION", "Replication factor of created topics (3 in production).")
    app_id: str = _setting(
        "journey-worker", "JOURNEY_APP_ID",
        "Faust application id: the consumer group and the prefix of changelog topics.")
    store: str = _setting(
        "memory://", "JOURNEY_STORE",
        "Faust table store: `memory://` (tests, demo) or `rocksdb://` (production; needs "
        "the `rocksdb` extra).")
    rocksdb_write_buffer_mb: int = _setting(
        4, "JOURNEY_ROCKSDB_WRITE_BUFFER_MB",
        "RocksDB memtable size of each table partition's database (two per database). With "
        "the block cache below, a worker's RocksDB memory is at most 6 tables x partitions "
        "held x (2 x this + the cache); Faust's defaults allow 2.2 GB per database.")
    rocksdb_block_cache_mb: int = _setting(
        8, "JOURNEY_ROCKSDB_BLOCK_CACHE_MB",
        "RocksDB block cache of each table partition's database (reads of state that is "
        "not in a memtable).")
    clickhouse_url: str = _setting(
        "clickhouse://default@127.0.0.1:9000/journey", "JOURNEY_CLICKHOUSE_URL",
        "ClickHouse native-protocol URL; the path is the database, created when missing.",
        secret=True)
    clickhouse_cluster: str = _setting(
        "", "JOURNEY_CLICKHOUSE_CLUSTER",
        "Name of the ClickHouse cluster (its remote_servers entry) to replicate the tables "
        "over: `<table>_local` Replicated*MergeTree tables behind Distributed ones of the "
        "tables' names, DDL ON CLUSTER. Empty: one server.")
    clickhouse_http_port: int = _setting(
        8123, "JOURNEY_CLICKHOUSE_HTTP_PORT", "HTTP port of the local stack's ClickHouse.")
    sink_batch_size: int = _setting(
        2000, "JOURNEY_SINK_BATCH_SIZE",
        "Most records a stage takes in one batch: touchpoints on the public topic, "
        "bundles of messages on the internal ones (applied in runs of "
        "JOURNEY_STAGE_BATCH_MESSAGES). Each batch or run ends with one insert per table "
        "(several, in order, for more than 20,000 rows).")
    stage_batch_messages: int = _setting(
        10000, "JOURNEY_STAGE_BATCH_MESSAGES",
        "Most messages a stage applies at once once bundles are opened: a batch of "
        "JOURNEY_SINK_BATCH_SIZE records on an internal topic (each a bundle of up to "
        "hundreds of messages) is applied and committed in runs of whole records up to "
        "this. Bounds the memory a batch holds and how long it holds the worker.")
    router_max_ahead: int = _setting(
        0, "JOURNEY_ROUTER_MAX_AHEAD",
        "Most records (bundles: batches of the stage upstream) any internal partition "
        "this worker holds may have waiting before its stage takes them in; past it the "
        "router stops taking touchpoints until every one is at half of it or less, so a "
        "backlog goes through the stages together in bounded memory, at a cost in "
        "throughput (README, Benchmarks). 0: no limit.")
    sink_flush_seconds: float = _setting(
        0.1, "JOURNEY_SINK_FLUSH_SECONDS",
        "Longest wait before a partial batch is processed and flushed (a quiet topic's "
        "last events still reach ClickHouse).")
    sink_max_retry_seconds: float = _setting(
        30.0, "JOURNEY_SINK_MAX_RETRY_SECONDS",
        "Cap of the exponential backoff between insert retries while ClickHouse is down.")
    lateness_seconds: float = _setting(
        3600.0, "JOURNEY_LATENESS_SECONDS",
        "Lateness bound. A CX metric window closes (its final row is written) once the "
        "low watermark is this far past its end; later touchpoints revise it, within "
        "JOURNEY_CX_REVISION_DAYS. Touchpoints this far behind their journey's "
        "latest count as late (journey_late_touchpoints_total), though journeys still "
        "place them exactly within JOURNEY_TAIL_DAYS.")
    tail_days: float = _setting(
        90.0, "JOURNEY_TAIL_DAYS",
        "A journey keeps its touchpoints of this long before its latest one (at most "
        "JOURNEY_TAIL_TOUCHPOINTS of them) and folds older ones into a summary. A late "
        "touchpoint within the tail takes its exact place in the journey; one behind it "
        "is counted in the summary, with the stage history approximate "
        "(journey_touchpoints_behind_summary_total). The default takes in a month's "
        "export, or a second device identified weeks later, for a customer whose journey "
        "already runs a month or two.")
    tail_touchpoints: int = _setting(
        128, "JOURNEY_TAIL_TOUCHPOINTS",
        "At most this many touchpoints kept per journey (see JOURNEY_TAIL_DAYS): a bot's "
        "or a long customer's journey costs the same per event and stays under 64 KB.")
    compress_journeys: bool = _setting(
        True, "JOURNEY_COMPRESS_JOURNEYS",
        "Store journeys zlib-compressed with a preset dictionary, in about a third of "
        "the bytes (README, Benchmarks); those past JOURNEY_COMPRESS_UP_TO_BYTES stay "
        "plain. Every version reads plain values, and from this "
        "one on every form; a5dce46 and earlier cannot read these, so in a rolling "
        "upgrade from one set false until none is left (values are compressed again as "
        "their journeys next change).")
    compress_up_to_bytes: int = _setting(
        8192, "JOURNEY_COMPRESS_UP_TO_BYTES",
        "A journey of more msgpack bytes than this (a bot's or a kiosk's long tail) is "
        "stored plain, and the journey stage keeps such journeys decoded between "
        "batches, up to 256 KiB of them per partition: compressed, inflated and decoded "
        "again on every batch, a bot's touchpoints cost 5 times a short journey's. "
        "0: every journey stored plain.")
    cx_revision_days: float = _setting(
        35.0, "JOURNEY_CX_REVISION_DAYS",
        "Revision horizon. A CX window that closed less than this long ago is revised by "
        "late contributions (a new row with revision + 1 and late_samples); older ones "
        "are not (journey_cx_window_too_late_total). The default takes in a month's "
        "export, or a 30-day window's whole span, with 5 days to spare; state holds "
        "closed windows this long.")
    cx_update_seconds: float = _setting(
        5.0, "JOURNEY_CX_UPDATE_SECONDS",
        "How often the rows of open CX metric windows are refreshed in ClickHouse (a "
        "closing window's final row is written by the batch that closes it, or the next "
        "ones: JOURNEY_CX_WINDOWS_PER_BATCH).")
    cx_windows_per_batch: int = _setting(
        10_000, "JOURNEY_CX_WINDOWS_PER_BATCH",
        "At most about this many CX windows published per batch: open windows' parts sent "
        "by the journey stage, and cx_metrics rows of closing and open windows written by "
        "the aggregator. The rest go in the next batches, so a worker draining a backlog "
        "never holds every window's row at once. 0: no bound.")
    watermark_interval_seconds: float = _setting(
        1.0, "JOURNEY_WATERMARK_INTERVAL_SECONDS",
        "How often each stage sends its watermark (event-time progress) downstream.")
    watermark_idle_seconds: float = _setting(
        10.0, "JOURNEY_WATERMARK_IDLE_SECONDS",
        "A touchpoint partition with no traffic for this long stops holding CX metric "
        "windows open.")
    churn_inactive_days: float = _setting(
        90.0, "JOURNEY_CHURN_INACTIVE_DAYS",
        "A journey with no touchpoint for this many days counts as churned (0 turns it off).")
    churn_sweep_seconds: float = _setting(
        3600.0, "JOURNEY_CHURN_SWEEP_SECONDS",
        "How often the worker looks for journeys that went quiet past the churn period, "
        "and for state past its retention.")
    anonymous_retention_days: float = _setting(
        30.0, "JOURNEY_ANONYMOUS_RETENTION_DAYS",
        "An anonymous journey unchanged for this many days leaves the worker's state (its "
        "rows stay in ClickHouse; if the device comes back it starts a new journey, and an "
        "identify then merges only that). 0 keeps them forever.")
    merged_retention_days: float = _setting(
        7.0, "JOURNEY_MERGED_RETENTION_DAYS",
        "How long the marker of a device journey merged into its customer's is kept (it "
        "makes a replayed merge a no-op; replays come within seconds). 0 keeps them; at "
        "most JOURNEY_DEVICE_RETENTION_DAYS, unless that is 0.")
    device_retention_days: float = _setting(
        400.0, "JOURNEY_DEVICE_RETENTION_DAYS",
        "A device → customer link unused for this many days is forgotten: the device's "
        "later anonymous touchpoints start an anonymous journey again. 0 keeps them.")
    first_response_sla_seconds: float = _setting(
        14400.0, "JOURNEY_FIRST_RESPONSE_SLA_SECONDS",
        "A ticket without a first agent answer for this long raises an alert.")
    churn_risk_alert: int = _setting(
        60, "JOURNEY_CHURN_RISK_ALERT", "Churn risk (0 to 100) at which a journey raises an alert.")
    broker_session_timeout: float = _setting(
        6.0, "JOURNEY_BROKER_SESSION_TIMEOUT",
        "Consumer-group session timeout in seconds. Tansu delays a group join by half of "
        "it, so Faust's 60 s default meant 30 s joins; 6 s is Kafka's minimum.")
    broker_heartbeat_interval: float = _setting(
        1.5, "JOURNEY_BROKER_HEARTBEAT_INTERVAL", "Consumer heartbeat interval in seconds.")
    broker_fetch_wait_seconds: float = _setting(
        0.05, "JOURNEY_BROKER_FETCH_WAIT_SECONDS",
        "Longest a worker's fetch waits for data. Tansu answers only when the wait ends, "
        "so it bounds the delay each internal hop adds (Faust's fixed 1.5 s made "
        "end-to-end latency several seconds).")
    broker_max_poll_records: int = _setting(
        2000, "JOURNEY_BROKER_MAX_POLL_RECORDS",
        "Most records one fetch hands to the worker's streams, over all its partitions. "
        "Faust fetches again only once every record of the last fetch is in a stream's "
        "buffer, so an unbounded fetch (about 40,000 touchpoints of a backlog) kept the "
        "internal topics waiting. 0: no bound.")
    broker_commit_interval: float = _setting(
        2.8, "JOURNEY_BROKER_COMMIT_INTERVAL",
        "How often the worker commits consumer offsets, in seconds (Faust's default). After "
        "a crash, at most this much is processed again; outputs absorb the repeats.")
    worker_web_host: str = _setting(
        "127.0.0.1", "JOURNEY_WORKER_WEB_HOST",
        "Interface of the worker's web server; 0.0.0.0 in containers so Prometheus can scrape.")
    worker_web_port: int = _setting(
        6066, "JOURNEY_WORKER_WEB_PORT", "Port of the worker's web server (`/metrics`).")
    collector_host: str = _setting(
        "127.0.0.1", "JOURNEY_COLLECTOR_HOST", "Interface the HTTP collector listens on.")
    collector_port: int = _setting(8088, "JOURNEY_COLLECTOR_PORT", "Port of the HTTP collector.")
    collector_write_keys: str = _setting(
        "dev:server=2cc827ddd1d176c150091ef0c8e181de15afbaf3c855263ca0d9069f7c2c3309",
        "JOURNEY_COLLECTOR_WRITE_KEYS",
        "Accepted write keys as `source:kind=<sha256 of the key>`, comma separated; kind is "
        "`client` (browser or app: public, the default when omitted) or `server` (a shop's "
        "backend). The default accepts `dev-write-key` as server source `dev`, from this "
        "machine only: set your own keys outside development.",
        secret=True)
    server_only_types: str = _setting(
        "order_shipped,delivery_updated,return_completed,support_ticket_opened,"
        "support_message,support_ticket_resolved,support_ticket_reopened,"
        "subscription_cancelled",
        "JOURNEY_SERVER_ONLY_TYPES",
        "Touchpoint types only a server write key may send (a client key's are rejected, "
        "reason `forbidden_type`): what a browser or app cannot know or must not forge.")
    max_event_age_days: float = _setting(
        365.0, "JOURNEY_MAX_EVENT_AGE_DAYS",
        "A touchpoint whose occurred_at is more than this many days before it was received "
        "is rejected (reason `out_of_bounds`). At most 3650.")
    max_event_ahead_seconds: float = _setting(
        3600.0, "JOURNEY_MAX_EVENT_AHEAD_SECONDS",
        "A touchpoint whose occurred_at is more than this far after it was received (after "
        "the sentAt clock-skew correction) is rejected (reason `out_of_bounds`).")
    collector_cors_origins: str = _setting(
        "", "JOURNEY_COLLECTOR_CORS_ORIGINS",
        "Browser origins allowed to send, comma separated (e.g. https://shop.example). "
        "Empty (the local default): pages on localhost or 127.0.0.1 and local files only.")
    collector_rate_limit: float = _setting(
        1000.0, "JOURNEY_COLLECTOR_RATE_LIMIT", "Events per second allowed per write key.")
    collector_rate_burst: float = _setting(
        5000.0, "JOURNEY_COLLECTOR_RATE_BURST",
        "Events a write key may send at once above the rate (at least one full batch).")
    collector_client_rate_limit: float = _setting(
        100.0, "JOURNEY_COLLECTOR_CLIENT_RATE_LIMIT",
        "Events per second allowed per client write key and client address, so that one "
        "browser or app cannot use up a shop's whole quota (server keys: per key only).")
    collector_client_rate_burst: float = _setting(
        2500.0, "JOURNEY_COLLECTOR_CLIENT_RATE_BURST",
        "Events one client address may send at once above its rate (one full batch).")
    privacy_key: str = _setting(
        "journey-local-privacy-key", "JOURNEY_PRIVACY_KEY",
        "Key of the hashes that stand for personal data: hashed fields, and the ids in "
        "suppression lists and the privacy audit. Set a secret of your own outside "
        "development, the same for every component; changing it un-suppresses forgotten "
        "ids and breaks joins on hashed fields.", secret=True)
    pii_hash_fields: str = _setting(
        "properties.traits.email,properties.traits.phone,context.traits.email,"
        "context.traits.phone", "JOURNEY_PII_HASH_FIELDS",
        "Touchpoint fields hashed at ingress (collector, SDK, worker), as dotted paths, "
        "comma separated: the value becomes `hmac:<hex>` (keyed by JOURNEY_PRIVACY_KEY, "
        "trimmed and lower-cased first, so it still joins). `none` keeps them in clear.")
    pii_drop_fields: str = _setting(
        "none", "JOURNEY_PII_DROP_FIELDS",
        "Touchpoint fields removed at ingress (e.g. `properties.traits.address`); `none`: "
        "no field.")
    pii_truncate_ip_fields: str = _setting(
        "context.ip", "JOURNEY_PII_TRUNCATE_IP_FIELDS",
        "Fields holding an IP address, truncated at ingress (IPv4 to /24, IPv6 to /48; a "
        "value that is no address is removed). `none` keeps addresses whole.")
    touchpoint_retention_days: float = _setting(
        395.0, "JOURNEY_TOUCHPOINT_RETENTION_DAYS",
        "Touchpoint rows whose occurred_at is older than this leave ClickHouse (TTL on "
        "23.8+, an hourly deletion by the worker on older servers). 0 keeps them.")
    dead_letter_retention_days: float = _setting(
        30.0, "JOURNEY_DEAD_LETTER_RETENTION_DAYS",
        "Dead-letter rows (they keep rejected payloads whole) older than this leave "
        "ClickHouse, like touchpoints. 0 keeps them.")
    privacy_timeout_seconds: float = _setting(
        300.0, "JOURNEY_PRIVACY_TIMEOUT_SECONDS",
        "How long `journey forget` waits for the workers to acknowledge each step and for "
        "ClickHouse's deletions to finish.")
    data_dir: Path = _setting(  # noqa: RUF009 - an immutable Path, shared safely
        Path(".journey"), "JOURNEY_DATA_DIR",
        "Where the local stack keeps ClickHouse data, logs and the worker's table state.")
    gc_threshold: int = _setting(
        50_000, "JOURNEY_GC_THRESHOLD",
        "Allocations between two young-generation collections of the worker's Python "
        "garbage collector (CPython's default is 700; 0 turns automatic collection off). "
        "The worker's batches make many short-lived objects and few cycles.")
    malloc_mmap_threshold: int = _setting(
        131_072, "JOURNEY_MALLOC_MMAP_THRESHOLD",
        "Bytes from which the worker's C allocations (glibc) are mapped on their own and "
        "given back to the system when freed; 0 leaves glibc's sliding threshold, which "
        "keeps large buffers (fetches, batches, inserts) in the heap, where longer-lived "
        "state then pins them.")
    malloc_trim_seconds: float = _setting(
        10.0, "JOURNEY_MALLOC_TRIM_SECONDS",
        "How often the worker gives the free pages inside its C heap (glibc) back to the "
        "system: the holes a batch's transients leave between longer-lived values stay "
        "resident otherwise. A trim holds the worker while it runs: measured 3-8 ms at "
        "the bench's sizes, 79 ms giving back 730 MB of a 781 MB heap. 0 never trims.")
    log_level: str = _setting(
        "info", "JOURNEY_LOG_LEVEL",
        "debug, info, warning (or warn), error or critical (or crit); any case.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings._check()
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def _check(self) -> None:
        if self.topic_partitions < 1:
            raise ConfigError("JOURNEY_TOPIC_PARTITIONS must be at least 1")
        if self.sink_batch_size < 1:
            raise ConfigError("JOURNEY_SINK_BATCH_SIZE must be at least 1")
        if self.stage_batch_messages < 1:
            raise ConfigError("JOURNEY_STAGE_BATCH_MESSAGES must be at least 1")
        if self.broker_max_poll_records < 0:
            raise ConfigError("JOURNEY_BROKER_MAX_POLL_RECORDS must be 0 (no bound) or more")
        if self.router_max_ahead < 0:
            raise ConfigError("JOURNEY_ROUTER_MAX_AHEAD must be 0 (no limit) or more")
        if self.cx_windows_per_batch < 0:
            raise ConfigError("JOURNEY_CX_WINDOWS_PER_BATCH must be 0 (no bound) or more")
        if self.malloc_mmap_threshold < 0:
            raise ConfigError("JOURNEY_MALLOC_MMAP_THRESHOLD must be 0 (glibc's own) or more")
        if self.malloc_trim_seconds < 0:
            raise ConfigError("JOURNEY_MALLOC_TRIM_SECONDS must be 0 (never) or more")
        if self.gc_threshold < 0:
            raise ConfigError("JOURNEY_GC_THRESHOLD must be 0 (off) or more")
        if self.compress_up_to_bytes < 0:
            raise ConfigError("JOURNEY_COMPRESS_UP_TO_BYTES must be 0 (none compressed) "
                              "or more")
        if self.tail_touchpoints < 1 or self.tail_days <= 0:
            raise ConfigError("JOURNEY_TAIL_TOUCHPOINTS must be at least 1 and "
                              "JOURNEY_TAIL_DAYS above 0")
        links, markers = self.device_retention_days, self.merged_retention_days
        if links > 0 and not 0 < markers <= links:
            raise ConfigError(
                f"JOURNEY_MERGED_RETENTION_DAYS={markers:g} must be above 0 and at most "
                f"JOURNEY_DEVICE_RETENTION_DAYS={links:g}: a merged journey's marker kept "
                "longer than its device's link would keep sending the device's later "
                "touchpoints to the customer after the link was forgotten")
        if self.log_level.strip().lower() not in _LOG_LEVELS:
            raise ConfigError(f"JOURNEY_LOG_LEVEL={self.log_level!r}: use one of "
                              f"{', '.join(sorted(set(_LOG_LEVELS.values())))}")
        if self.store.split("://")[0] not in ("memory", "rocksdb"):
            raise ConfigError(f"JOURNEY_STORE={self.store!r}: use memory:// or rocksdb://")
        if not 0 < self.max_event_age_days <= 3650:
            raise ConfigError("JOURNEY_MAX_EVENT_AGE_DAYS must be above 0 and at most 3650")
        if not 0 <= self.max_event_ahead_seconds <= 7 * 86400:
            raise ConfigError("JOURNEY_MAX_EVENT_AHEAD_SECONDS must be 0 to 604800 (7 days)")
        unknown = self.server_only.difference(TOUCHPOINT_TYPES)
        if unknown:
            raise ConfigError(f"JOURNEY_SERVER_ONLY_TYPES: unknown types {sorted(unknown)}; "
                              "`journey schemas` lists them")
        if urlsplit(self.clickhouse_url).scheme not in ("clickhouse", "clickhouses"):
            raise ConfigError("JOURNEY_CLICKHOUSE_URL must look like "
                              "clickhouse://user:password@host:9000/database")

    # Derived names: kept here so that every component spells them the same way.
    @property
    def touchpoints_topic(self) -> str:
        return f"{self.topic_prefix}.touchpoints"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letters"

    @property
    def alerts_topic(self) -> str:
        """Closed-loop alerts for CX and support tools to act on."""
        return f"{self.topic_prefix}.alerts"

    @property
    def cx_partials_topic(self) -> str:
        """Internal: each journey partition's part of a CX metric window, keyed by window."""
        return f"{self.topic_prefix}.cx-partials"

    @property
    def by_device_topic(self) -> str:
        """Internal: touchpoints re-keyed by anonymous id, for identity resolution."""
        return f"{self.topic_prefix}.touchpoints-by-device"

    @property
    def journey_events_topic(self) -> str:
        """Internal: resolved touchpoints and merges, keyed by journey."""
        return f"{self.topic_prefix}.journey-events"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.broker_url.split(",") if s.strip()]

    @property
    def broker_host_port(self) -> tuple[str, int]:
        host, _, port = self.bootstrap_servers[0].rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def clickhouse_database(self) -> str:
        return urlsplit(self.clickhouse_url).path.strip("/") or "default"

    @property
    def clickhouse_host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.clickhouse_url)
        return parts.hostname or "127.0.0.1", parts.port or 9000

    def clickhouse_url_for(self, database: str | None = None, *, port: int | None = None) -> str:
        """The ClickHouse URL with another database and/or port, credentials kept."""
        parts = urlsplit(self.clickhouse_url)
        if database is not None:
            parts = parts._replace(path=f"/{database}")
        if port is not None:
            credentials, at, address = parts.netloc.rpartition("@")
            host = address.rsplit(":", 1)[0] if parts.port else address
            parts = parts._replace(netloc=f"{credentials}{at}{host}:{port}")
        return urlunsplit(parts)

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process build these same settings."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def table_options(self) -> dict[str, int]:
        """Faust table options: RocksDB's memory, bounded by configuration."""
        if not self.store.startswith("rocksdb:"):
            return {}
        mb = 1024 * 1024
        return {"write_buffer_size": self.rocksdb_write_buffer_mb * mb,
                "max_write_buffer_number": 2,
                "block_cache_size": self.rocksdb_block_cache_mb * mb}

    @property
    def lateness(self) -> timedelta:
        return timedelta(seconds=self.lateness_seconds)

    @property
    def tail(self) -> timedelta:
        return timedelta(days=self.tail_days)

    @property
    def cx_revision(self) -> timedelta:
        return timedelta(days=self.cx_revision_days)

    @property
    def first_response_sla(self) -> timedelta:
        return timedelta(seconds=self.first_response_sla_seconds)

    @property
    def churn_inactive_after(self) -> timedelta | None:
        """How long a journey stays quiet before it churns; None: inactivity never churns."""
        return _days(self.churn_inactive_days)

    @property
    def anonymous_retention(self) -> timedelta | None:
        return _days(self.anonymous_retention_days)

    @property
    def merged_retention(self) -> timedelta | None:
        return _days(self.merged_retention_days)

    @property
    def device_retention(self) -> timedelta | None:
        return _days(self.device_retention_days)

    @property
    def python_log_level(self) -> str:
        """The log level as Python's logging names it (``WARNING`` for ``warn``)."""
        return _LOG_LEVELS[self.log_level.strip().lower()]

    @property
    def time_bounds(self) -> TimeBounds:
        return TimeBounds(timedelta(days=self.max_event_age_days),
                          timedelta(seconds=self.max_event_ahead_seconds))

    @property
    def server_only(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.server_only_types.split(",") if t.strip())

    @property
    def redaction(self) -> Redaction:
        """What ingress does to personal data in touchpoints."""
        return Redaction.of(self.privacy_key, hash=_names(self.pii_hash_fields),
                            drop=_names(self.pii_drop_fields),
                            truncate_ip=_names(self.pii_truncate_ip_fields))

    @property
    def retention_days(self) -> dict[str, float]:
        """ClickHouse tables with a retention → days (0: kept)."""
        return {"touchpoints": self.touchpoint_retention_days,
                "dead_letters": self.dead_letter_retention_days}

    @property
    def suppressions_topic(self) -> str:
        """Ids (hashed) whose events the collector drops: ``journey forget`` writes it."""
        return f"{self.topic_prefix}.suppressions"

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.collector_cors_origins.split(",")
                         if o.strip())

    def __repr__(self) -> str:
        """Secrets masked, as in ``journey config``: settings end up in logs and tracebacks."""
        shown = ", ".join(f"{f.name}={_shown(self, f)!r}" for f in dataclasses.fields(self))
        return f"Settings({shown})"

    def describe(self) -> list[tuple[str, str, str]]:
        """(env var, current value, doc) for every setting; secrets are masked."""
        return [(f.metadata["env"], str(_shown(self, f)), f.metadata["doc"])
                for f in dataclasses.fields(self)]


def _shown(settings: Settings, f: dataclasses.Field) -> Any:
    """A setting's value as it may be shown: a secret's masked."""
    value = getattr(settings, f.name)
    if not f.metadata["secret"]:
        return value
    value = str(value)
    return _mask_url(value) if "://" in value else _mask_hashes(value)


#: Accepted spellings of JOURNEY_LOG_LEVEL → Python's level name.
_LOG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "warning": "WARNING",
               "error": "ERROR", "crit": "CRITICAL", "critical": "CRITICAL"}


def _names(value: str) -> list[str]:
    """A comma-separated list; ``none`` is the empty one (an empty variable means the
    default, as for every setting)."""
    if value.strip().lower() == "none":
        return []
    return [name.strip() for name in value.split(",") if name.strip()]


def _days(days: float) -> timedelta | None:
    """A retention in days; 0 (or less) means kept forever (None)."""
    return timedelta(days=days) if days > 0 else None


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _mask_hashes(value: str) -> str:
    return ",".join(e.partition("=")[0] + "=<sha256>" for e in value.split(",") if e)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind == "Path":
            return Path(raw)
    except ValueError:
        raise ConfigError(f"{f.metadata['env']}={raw!r} is not a valid {kind}") from None
    return raw
