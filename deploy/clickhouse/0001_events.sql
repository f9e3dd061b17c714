-- Every event of every message. ReplacingMergeTree on the event id: a redelivered event
-- (at-least-once from Kafka) collapses into one row; queries that must count exactly
-- read with FINAL. Partitioned by day so retention drops whole partitions (ClickHouse
-- 18.16 has no TTL). Written to stay within what 18.16 and current releases share.
CREATE TABLE IF NOT EXISTS events
(
    event_id          UUID,
    event_type        String,
    occurred_at       DateTime,
    occurred_at_ms    UInt64,
    message_id        UUID,
    account_id        UUID,
    recipient         String,
    recipient_domain  String,
    campaign_id       String,
    tags              Array(String),
    metadata          String,
    stage             String,
    mx_host           String,
    source_ip         String,
    ip_pool           String,
    provider          String,
    smtp_code         UInt16,
    smtp_enhanced     String,
    smtp_reply        String,
    bounce_category   String,
    attempt           UInt16,
    reason            String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (account_id, message_id, event_id)
