-- The developer API: operator accounts and per-account send limits, domain verification
-- results, stored templates with versions, idempotency keys, scheduled messages and the
-- operators' global suppression list.

ALTER TABLE accounts
    -- operators manage tenants and the global suppression list
    ADD COLUMN operator           boolean NOT NULL DEFAULT false,
    -- recipients accepted per second; NULL: the platform default
    ADD COLUMN send_rate_per_sec  integer,
    -- recipients accepted per UTC day; NULL: the platform default
    ADD COLUMN daily_quota        bigint;

ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

-- What the last `verify` found, record by record.
ALTER TABLE sending_domains ADD COLUMN verification jsonb;

CREATE TABLE templates (
    id              uuid PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    latest_version  integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, name)
);

-- Versions are immutable: a send that names version 3 renders version 3 for ever.
CREATE TABLE template_versions (
    template_id  uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version      integer NOT NULL,
    subject      text NOT NULL,
    html         text,
    text         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- One row per Idempotency-Key. A request claims its key (a lease), produces, then stores
-- its answer; a repeat within 24 h gets that answer. A claim whose lease ran out (the
-- process died) is taken over with the same batch id, so the replay derives the same
-- message ids and the dispatcher's barrier sends nothing twice.
CREATE TABLE idempotency_keys (
    account_id       uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key              text NOT NULL,
    -- SHA-256 of the request body: the same key with another body is an error
    request_hash     bytea NOT NULL,
    batch_id         uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz NOT NULL,
    response_status  smallint,
    response         jsonb,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Messages with a future send_at, held here (durably) until the releaser produces them.
CREATE TABLE scheduled_messages (
    message_id    uuid PRIMARY KEY,
    -- the Kafka topic prefix of the installation that holds it (several may share a
    -- database, as tests do); its releasers take only their own
    installation  text NOT NULL,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    batch_id    uuid NOT NULL,
    send_at     timestamptz NOT NULL,
    -- the encoded sendmill.requested.v1 record
    payload     bytea NOT NULL,
    -- pending, released or cancelled
    state       text NOT NULL DEFAULT 'pending',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scheduled_messages_due ON scheduled_messages (installation, send_at)
    WHERE state = 'pending';
CREATE INDEX scheduled_messages_batch ON scheduled_messages (account_id, batch_id);

-- Addresses no account may send to (operators' list: spam traps, legal requests).
CREATE TABLE global_suppressions (
    email       text PRIMARY KEY,
    reason      text NOT NULL,
    source      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
