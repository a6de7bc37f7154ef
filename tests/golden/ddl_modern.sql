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
    type LowCardinality(String),
    version UInt16,
    occurred_at DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC'),
    journey_key String,
    customer_id String,
    anonymous_id String,
    session_id String,
    channel LowCardinality(String),
    source LowCardinality(String),
    stage LowCardinality(String),
    context String,
    properties String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (journey_key, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS journey.customer_journeys
(
    journey_key String,
    customer_id String,
    anonymous_ids Array(String),
    first_seen DateTime64(3, 'UTC'),
    last_seen DateTime64(3, 'UTC'),
    stage LowCardinality(String),
    touchpoints UInt64,
    type_names Array(String),
    type_counts Array(UInt64),
    channel_names Array(String),
    channel_counts Array(UInt64),
    orders UInt32,
    revenue Decimal(18, 2),
    version UInt64,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY journey_key;

CREATE TABLE IF NOT EXISTS journey.dead_letters
(
    received_at DateTime64(3, 'UTC'),
    topic String,
    partition UInt32,
    offset UInt64,
    reason LowCardinality(String),
    field String,
    error String,
    payload String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(received_at)
ORDER BY (topic, partition, offset)
TTL toDateTime(received_at) + INTERVAL 90 DAY;
