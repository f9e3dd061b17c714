-- Customer webhooks: endpoints, the durable outbox of events to deliver to each, every
-- delivery attempt, and the reputation monitor's alerts.

CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    url              text NOT NULL,
    description      text NOT NULL DEFAULT '',
    -- the event types delivered; empty: every type
    event_types      text[] NOT NULL DEFAULT '{}',
    -- `whsec_` + base64 of the signing key (Standard Webhooks). Kept, not hashed: every
    -- delivery is signed with it.
    secret           text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    -- events per request at most
    max_batch        integer NOT NULL DEFAULT 100,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- delivery state: consecutive failed attempts, no attempt before `retry_at`, and the
    -- lease of the analytics process delivering to it now
    failures         integer NOT NULL DEFAULT 0,
    retry_at         timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz NOT NULL DEFAULT '-infinity',
    last_success_at  timestamptz,
    last_failure_at  timestamptz,
    last_error       text
);
CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account_id);

-- One row per (endpoint, event): the unique key makes a redelivered event a no-op.
-- `pending` rows are sent oldest first; `dead` rows are the dead-letter queue.
CREATE TABLE webhook_deliveries (
    seq          bigserial PRIMARY KEY,
    endpoint_id  uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id     uuid NOT NULL,
    message_id   uuid NOT NULL,
    event_type   text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    payload      jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    -- when it entered the queue (or was replayed): retries end `retry_for` after this
    queued_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    last_error   text,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (endpoint_id, occurred_at, seq) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_dead
    ON webhook_deliveries (endpoint_id, queued_at) WHERE status = 'dead';

CREATE TABLE webhook_attempts (
    id            bigserial PRIMARY KEY,
    endpoint_id   uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    webhook_id    text NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    events        integer NOT NULL,
    -- NULL when no HTTP answer came (connection refused, timeout)
    status_code   integer,
    error         text,
    duration_ms   integer NOT NULL
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id DESC);

-- What the reputation monitor did: a source IP or an account paused past a threshold.
CREATE TABLE reputation_alerts (
    id           uuid PRIMARY KEY,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    -- `ip` or `account`
    subject_kind text NOT NULL,
    subject      text NOT NULL,
    -- `bounce_rate` or `complaint_rate`
    metric       text NOT NULL,
    value        double precision NOT NULL,
    threshold    double precision NOT NULL,
    window_secs  integer NOT NULL,
    volume       bigint NOT NULL,
    resolved_at  timestamptz
);
CREATE INDEX reputation_alerts_raised ON reputation_alerts (raised_at DESC);
