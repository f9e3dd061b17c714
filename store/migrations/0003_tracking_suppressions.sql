-- Per-account tracking defaults (a message may override them), and suppressions: the
-- addresses an account must not send to, with why.
ALTER TABLE accounts
    ADD COLUMN track_opens  boolean NOT NULL DEFAULT false,
    ADD COLUMN track_clicks boolean NOT NULL DEFAULT false;

CREATE TABLE suppressions (
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- lower-cased address
    email       text NOT NULL,
    -- bounce, complaint, unsubscribe, manual
    reason      text NOT NULL,
    -- what caused it, e.g. the message id of an unsubscribe
    source      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (account_id, email)
);
