-- A campaign's report: per campaign, A/B variant (the `variant` metadata the campaign
-- sender writes), minute and event type, with the bounce category, whether a machine
-- opened or clicked (privacy proxies, link scanners), and the clicked URL. Each cell
-- holds the exact sets of event and message ids, so redelivered events change nothing
-- and unique opens and clicks merge exactly across minutes, variants and links.
CREATE TABLE IF NOT EXISTS campaign_stats
(
    minute           DateTime,
    account_id       UUID,
    campaign_id      String,
    variant          String,
    event_type       String,
    bounce_category  String,
    machine          UInt8,
    url              String,
    events           AggregateFunction(uniqExact, UUID),
    messages         AggregateFunction(uniqExact, UUID)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (account_id, campaign_id, minute, event_type, variant, bounce_category, machine, url);

CREATE MATERIALIZED VIEW IF NOT EXISTS campaign_stats_mv TO campaign_stats AS
SELECT
    toStartOfMinute(occurred_at) AS minute,
    account_id,
    campaign_id,
    visitParamExtractString(metadata, 'variant') AS variant,
    event_type,
    bounce_category,
    machine,
    if(event_type = 'clicked', url, '') AS url,
    uniqExactState(event_id) AS events,
    uniqExactState(message_id) AS messages
FROM events
WHERE campaign_id != ''
GROUP BY minute, account_id, campaign_id, variant, event_type, bounce_category, machine, url;

INSERT INTO campaign_stats
SELECT toStartOfMinute(occurred_at) AS minute, account_id, campaign_id,
       visitParamExtractString(metadata, 'variant') AS variant, event_type, bounce_category,
       machine, if(event_type = 'clicked', url, '') AS url,
       uniqExactState(event_id), uniqExactState(message_id)
FROM events
WHERE campaign_id != ''
GROUP BY minute, account_id, campaign_id, variant, event_type, bounce_category, machine, url
