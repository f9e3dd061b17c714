-- Mail that came back to a return-path domain and could not be classified or matched to
-- a message (the inbound stage): kept, never dropped silently, for `unclassified_retention`
-- so someone can look at it (GET /v1/returns) and the rules can learn it.

CREATE TABLE inbound_returns (
    -- the inbound record's id: reprocessing it writes the same row
    id           uuid PRIMARY KEY,
    -- the account the return-path domain belongs to (NULL if several share it)
    account_id   uuid REFERENCES accounts (id) ON DELETE CASCADE,
    received_at  timestamptz NOT NULL,
    mail_from    text NOT NULL,
    rcpt_to      text NOT NULL,
    subject      text NOT NULL DEFAULT '',
    -- why it was kept: what the classifier or the matcher could not do
    reason       text NOT NULL,
    -- the message as received, up to inbound.max_message_bytes
    raw          bytea NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX inbound_returns_account ON inbound_returns (account_id, received_at DESC);
CREATE INDEX inbound_returns_expiry ON inbound_returns (expires_at);
