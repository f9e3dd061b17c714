-- Per-minute rollups the stats API and dashboards read instead of scanning `events`.
-- Each cell holds the exact set of event ids (and message ids) that fell into it, not a
-- count: a redelivered event (at-least-once from Kafka) lands in the same cell again and
-- changes nothing, so a rollup always equals a direct count over `events` FINAL. The
-- message set gives unique opens and clicks. Partitioned by day like `events`, so the
-- retention job drops whole partitions.
CREATE TABLE IF NOT EXISTS events_minute
(
    minute       DateTime,
    account_id   UUID,
    event_type   String,
    provider     String,
    ip_pool      String,
    source_ip    String,
    events       AggregateFunction(uniqExact, UUID),
    messages     AggregateFunction(uniqExact, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (account_id, minute, event_type, provider, ip_pool, source_ip);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_minute_mv TO events_minute AS
SELECT
    toStartOfMinute(occurred_at) AS minute,
    account_id,
    event_type,
    provider,
    ip_pool,
    source_ip,
    uniqExactState(event_id) AS events,
    uniqExactState(message_id) AS messages
FROM events
GROUP BY minute, account_id, event_type, provider, ip_pool, source_ip;

-- The campaign funnel: per campaign and minute, events and distinct messages by type.
CREATE TABLE IF NOT EXISTS campaign_minute
(
    minute       DateTime,
    account_id   UUID,
    campaign_id  String,
    event_type   String,
    events       AggregateFunction(uniqExact, UUID),
    messages     AggregateFunction(uniqExact, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (account_id, campaign_id, minute, event_type);

CREATE MATERIALIZED VIEW IF NOT EXISTS campaign_minute_mv TO campaign_minute AS
SELECT
    toStartOfMinute(occurred_at) AS minute,
    account_id,
    campaign_id,
    event_type,
    uniqExactState(event_id) AS events,
    uniqExactState(message_id) AS messages
FROM events
WHERE campaign_id != ''
GROUP BY minute, account_id, campaign_id, event_type;

-- Events stored before the views existed. Safe to run while events arrive: a cell that
-- gets an event from both the view and this backfill still counts it once.
INSERT INTO events_minute
SELECT toStartOfMinute(occurred_at) AS minute, account_id, event_type, provider, ip_pool,
       source_ip, uniqExactState(event_id), uniqExactState(message_id)
FROM events
GROUP BY minute, account_id, event_type, provider, ip_pool, source_ip;

INSERT INTO campaign_minute
SELECT toStartOfMinute(occurred_at) AS minute, account_id, campaign_id, event_type,
       uniqExactState(event_id), uniqExactState(message_id)
FROM events
WHERE campaign_id != ''
GROUP BY minute, account_id, campaign_id, event_type
