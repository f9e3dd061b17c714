-- The last time each recipient (lower-cased, as contacts keep addresses) of an account was sent to (delivered), opened and
-- clicked: what contacts show and segments' `*_within` conditions read, without a
-- write per event to PostgreSQL. Opens and clicks by machines (privacy proxies,
-- link scanners: `machine = 1`) are left out.
CREATE TABLE IF NOT EXISTS contact_engagement
(
    account_id   UUID,
    email        String,
    event_type   String,
    last_at      AggregateFunction(max, DateTime)
)
ENGINE = AggregatingMergeTree
ORDER BY (account_id, event_type, email);

CREATE MATERIALIZED VIEW IF NOT EXISTS contact_engagement_mv TO contact_engagement AS
SELECT
    account_id,
    lowerUTF8(recipient) AS email,
    event_type,
    maxState(occurred_at) AS last_at
FROM events
WHERE event_type IN ('delivered', 'opened', 'clicked') AND machine = 0
GROUP BY account_id, email, event_type;

INSERT INTO contact_engagement
SELECT account_id, lowerUTF8(recipient), event_type, maxState(occurred_at)
FROM events
WHERE event_type IN ('delivered', 'opened', 'clicked') AND machine = 0
GROUP BY account_id, lowerUTF8(recipient), event_type;
