-- Campaigns: one message to an audience (lists and/or a segment, minus exclusions),
-- released by the campaign sender in chunks into the bulk lane.
CREATE TABLE campaigns (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- the Kafka topic prefix of the installation whose campaign sender releases it (as
    -- scheduled_messages have it: installations and tests sharing a database never
    -- release each other's campaigns into their own topics)
    installation       text NOT NULL DEFAULT '',
    name               text NOT NULL,
    -- draft → scheduled → sending ⇄ paused → sent | cancelled (the API enforces the arrows)
    state              text NOT NULL DEFAULT 'draft'
                       CHECK (state IN ('draft', 'scheduled', 'sending', 'paused', 'sent', 'cancelled')),
    from_email         text NOT NULL,
    from_name          text,
    reply_to           text,
    -- inline content (Handlebars), or a stored template version
    subject            text,
    html               text,
    text               text,
    template_id        uuid REFERENCES templates (id) ON DELETE SET NULL,
    template_version   integer,
    lists              uuid[] NOT NULL DEFAULT '{}',
    segment_id         uuid REFERENCES segments (id) ON DELETE SET NULL,
    exclude_lists      uuid[] NOT NULL DEFAULT '{}',
    tags               text[] NOT NULL DEFAULT '{}',
    ip_pool            text,
    track_opens        boolean NOT NULL DEFAULT true,
    track_clicks       boolean NOT NULL DEFAULT true,
    list_unsubscribe   boolean NOT NULL DEFAULT true,
    -- when to start (NULL: when scheduled); the zone the marketer wrote it in
    send_at            timestamptz,
    time_zone          text NOT NULL DEFAULT 'UTC',
    -- messages released per hour at most; NULL: as fast as the pipeline takes them
    throttle_per_hour  integer CHECK (throttle_per_hour > 0),
    -- the throttle's token bucket, kept here so that every sender shares it
    throttle_tokens    double precision NOT NULL DEFAULT 1,
    throttle_at        timestamptz,
    -- A/B test: {"variants": [...], "test_percent": 20, "metric": "opens", "wait_seconds": 3600}
    ab_test            jsonb,
    -- all (no test), test (releasing the test share), waiting (for the winner), rest
    phase              text NOT NULL DEFAULT 'all' CHECK (phase IN ('all', 'test', 'waiting', 'rest')),
    test_ends_at       timestamptz,
    winner             text,
    -- how the winner was chosen, with each variant's figure
    winner_reason      jsonb,
    -- the audience as snapshotted when sending began (campaign_recipients)
    audience_size      bigint,
    test_size          bigint,
    -- every recipient with seq <= cursor has been released or skipped: the durable cursor
    cursor             bigint NOT NULL DEFAULT 0,
    released           bigint NOT NULL DEFAULT 0,
    skipped            bigint NOT NULL DEFAULT 0,
    not_sent           bigint NOT NULL DEFAULT 0,
    last_release_at    timestamptz,
    -- why the sender paused or cancelled it (a template or segment gone)
    note               text,
    started_at         timestamptz,
    finished_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id)
);
CREATE INDEX campaigns_account ON campaigns (account_id, created_at DESC);
CREATE INDEX campaigns_due ON campaigns (installation, state, send_at) WHERE state IN ('scheduled', 'sending');

-- The audience of a campaign, fixed when it starts sending, in release order (a
-- pseudo-random order, so an A/B test's share is a random sample). A recipient's
-- message id derives from campaign and contact, so a chunk released twice (a crash
-- between Kafka's acknowledgement and the cursor's commit) is the same messages, which
-- the dispatcher's terminal barrier sends once.
CREATE TABLE campaign_recipients (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    contact_id   uuid NOT NULL,
    -- the A/B test variant of the test share; NULL: the content (or the winner)
    variant      text,
    -- NULL until released; released, not_sent, or why it was skipped at release
    outcome      text,
    PRIMARY KEY (campaign_id, seq),
    UNIQUE (campaign_id, contact_id)
);
