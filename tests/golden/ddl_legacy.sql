CREATE DATABASE IF NOT EXISTS journey;

CREATE TABLE IF NOT EXISTS journey.schema_migrations
(
    id UInt32,
    name String,
    applied_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
ORDER BY id;

CREATE TABLE IF NOT EXISTS journey.touchpoints
(
    event_id String,
    type String,
    schema_version UInt16,
    occurred_at DateTime('UTC'),
    received_at DateTime('UTC'),
    ingested_at DateTime('UTC'),
    journey_key String,
    customer_id String,
    anonymous_id String,
    session_id String,
    channel String,
    source String,
    stage String,
    context String,
    properties String,
    row_version UInt64
)
ENGINE = ReplacingMergeTree(row_version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (type, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS journey.customer_journeys
(
    journey_key String,
    customer_id String,
    anonymous_ids Array(String),
    merged_into String,
    first_seen DateTime('UTC'),
    last_seen DateTime('UTC'),
    relationship_days Float64,
    stage String,
    stage_names Array(String),
    stage_entered_at Array(DateTime('UTC')),
    touchpoints UInt64,
    type_names Array(String),
    type_counts Array(UInt64),
    channel_names Array(String),
    channel_counts Array(UInt64),
    orders UInt32,
    revenue Decimal(18, 2),
    first_order_at Nullable(DateTime('UTC')),
    deliveries_on_time UInt32,
    deliveries_late UInt32,
    deliveries_damaged UInt32,
    deliveries_failed UInt32,
    deliveries_returned UInt32,
    tickets UInt32,
    open_tickets UInt32,
    nps Nullable(UInt8),
    nps_category String,
    csat Nullable(UInt8),
    ces Nullable(UInt8),
    churned UInt8,
    churn_reason String,
    recovery String,
    churn_risk UInt8,
    churn_risk_reasons Array(String),
    version UInt64,
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY journey_key;

CREATE TABLE IF NOT EXISTS journey.dead_letters
(
    received_at DateTime('UTC'),
    topic String,
    partition UInt32,
    offset UInt64,
    reason String,
    field String,
    error String,
    payload String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(received_at)
ORDER BY (topic, partition, offset);

CREATE TABLE IF NOT EXISTS journey.journey_transitions
(
    journey_key String,
    customer_id String,
    seq UInt32,
    from_stage String,
    to_stage String,
    at DateTime('UTC'),
    event_id String,
    reason String,
    is_deleted UInt8,
    row_version UInt64
)
ENGINE = ReplacingMergeTree(row_version)
ORDER BY (journey_key, seq);

CREATE TABLE IF NOT EXISTS journey.support_tickets
(
    ticket_id String,
    journey_key String,
    customer_id String,
    channel String,
    order_id String,
    opened_at DateTime('UTC'),
    first_response_at Nullable(DateTime('UTC')),
    resolved_at Nullable(DateTime('UTC')),
    first_response_seconds Nullable(Float64),
    resolution_seconds Nullable(Float64),
    reopened UInt16,
    messages UInt32,
    status String,
    row_version UInt64
)
ENGINE = ReplacingMergeTree(row_version)
ORDER BY ticket_id;

CREATE TABLE IF NOT EXISTS journey.journey_alerts
(
    alert_id String,
    kind String,
    journey_key String,
    customer_id String,
    reason String,
    touchpoints Array(String),
    at DateTime('UTC'),
    raised_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY alert_id;

CREATE TABLE IF NOT EXISTS journey.cx_metrics
(
    metric String,
    dimension String,
    window String,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    value Nullable(Float64),
    numerator Float64,
    denominator Float64,
    samples UInt64,
    final UInt8,
    version UInt64,
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (metric, dimension, window, window_start);

CREATE TABLE IF NOT EXISTS journey.privacy_acks
(
    request String,
    stage String,
    partition UInt32,
    erased UInt64,
    acked_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
ORDER BY (request, stage, partition);

CREATE TABLE IF NOT EXISTS journey.privacy_audit
(
    request String,
    action String,
    id_hash String,
    hashes Array(String),
    requested_at DateTime('UTC'),
    requested_by String,
    outcome String,
    erased String,
    finished_at DateTime('UTC')
)
ENGINE = MergeTree()
ORDER BY (requested_at, request);

ALTER TABLE journey.cx_metrics ADD COLUMN revision UInt32 DEFAULT 0 AFTER final;

ALTER TABLE journey.cx_metrics ADD COLUMN late_samples Int64 DEFAULT 0 AFTER revision;

CREATE TABLE IF NOT EXISTS journey.cx_missed
(
    metric String,
    dimension String,
    occurred_at DateTime('UTC'),
    numerator Float64,
    denominator Float64,
    samples Int64,
    lacking_through DateTime('UTC'),
    partition UInt16,
    offset UInt64,
    recorded_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (metric, dimension, partition, offset, occurred_at);
