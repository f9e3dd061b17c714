-- Audiences (the marketer's side): contacts with attributes and a subscription status,
-- lists with per-contact memberships, import jobs streamed through PostgreSQL in chunks,
-- saved segments, and the log of every subscription change.

CREATE TABLE contacts (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- normalised (lower-cased, IDNA A-label domain); byte order so that prefix search
    -- and cursor pagination use the one index
    email              text COLLATE "C" NOT NULL,
    name               text NOT NULL DEFAULT '',
    attributes         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    status             text NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'bounced', 'complained', 'unsubscribed')),
    status_changed_at  timestamptz,
    -- the import job that last wrote the contact (a second row for the same address in
    -- one file is a duplicate)
    import_job         uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id)
);
CREATE UNIQUE INDEX contacts_email ON contacts (account_id, email);
CREATE INDEX contacts_attributes ON contacts USING gin (attributes jsonb_path_ops);

CREATE TABLE lists (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name               text NOT NULL,
    description        text NOT NULL DEFAULT '',
    opt_in             text NOT NULL CHECK (opt_in IN ('single', 'double')),
    tags               text[] NOT NULL DEFAULT '{}',
    -- double opt-in: who the confirmation message is from, its subject, and where a
    -- confirmed subscriber is sent (the only redirect the public endpoints make)
    confirm_from       text,
    confirm_subject    text,
    confirmed_url      text,
    -- whether the public subscribe form endpoint takes sign-ups for this list
    public_subscribe   boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id),
    UNIQUE (account_id, name)
);

CREATE TABLE list_members (
    account_id         uuid NOT NULL,
    list_id            uuid NOT NULL,
    contact_id         uuid NOT NULL,
    state              text NOT NULL CHECK (state IN ('subscribed', 'unconfirmed', 'unsubscribed')),
    -- api, import, form, preferences, bounce, complaint, unsubscribe
    source             text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    subscribed_at      timestamptz,
    unsubscribed_at    timestamptz,
    confirmation_sent_at timestamptz,
    confirmed_at       timestamptz,
    -- the address the confirmation came from
    confirmed_ip       text,
    PRIMARY KEY (list_id, contact_id),
    FOREIGN KEY (account_id, list_id) REFERENCES lists (account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, contact_id) REFERENCES contacts (account_id, id) ON DELETE CASCADE
);
CREATE INDEX list_members_contact ON list_members (contact_id);
CREATE INDEX list_members_state ON list_members (list_id, state);

-- Every change of a contact's subscription: who or what made it and from where.
CREATE TABLE contact_events (
    id                 bigserial PRIMARY KEY,
    account_id         uuid NOT NULL,
    contact_id         uuid NOT NULL,
    list_id            uuid,
    -- subscribed, unconfirmed, confirmed, unsubscribed, unsubscribed_all, bounced,
    -- complained, resubscribed
    kind               text NOT NULL,
    source             text NOT NULL,
    ip                 text,
    at                 timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account_id, contact_id) REFERENCES contacts (account_id, id) ON DELETE CASCADE
);
CREATE INDEX contact_events_contact ON contact_events (contact_id, id);

CREATE TABLE import_jobs (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL,
    list_id            uuid NOT NULL,
    -- csv or ndjson
    format             text NOT NULL CHECK (format IN ('csv', 'ndjson')),
    -- receiving (upload in progress), queued, running, completed, failed
    state              text NOT NULL DEFAULT 'receiving'
                       CHECK (state IN ('receiving', 'queued', 'running', 'completed', 'failed')),
    upload_bytes       bigint NOT NULL DEFAULT 0,
    chunks             integer NOT NULL DEFAULT 0,
    rows_read          bigint NOT NULL DEFAULT 0,
    created            bigint NOT NULL DEFAULT 0,
    updated            bigint NOT NULL DEFAULT 0,
    skipped            bigint NOT NULL DEFAULT 0,
    error              text,
    -- which worker holds the job, and until when (a dead worker's job is taken over)
    lease              uuid,
    lease_until        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    UNIQUE (account_id, id),
    FOREIGN KEY (account_id, list_id) REFERENCES lists (account_id, id) ON DELETE CASCADE
);
CREATE INDEX import_jobs_pending ON import_jobs (created_at) WHERE state IN ('queued', 'running');

-- The uploaded file in order, until the job ends.
CREATE TABLE import_chunks (
    job_id             uuid NOT NULL REFERENCES import_jobs (id) ON DELETE CASCADE,
    seq                integer NOT NULL,
    data               bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Lines an import skipped, and why (the first `max_reported_errors` of a job).
CREATE TABLE import_errors (
    job_id             uuid NOT NULL REFERENCES import_jobs (id) ON DELETE CASCADE,
    line               bigint NOT NULL,
    reason             text NOT NULL,
    PRIMARY KEY (job_id, line)
);

CREATE TABLE segments (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name               text NOT NULL,
    expression         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, name)
);
