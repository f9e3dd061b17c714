-- SendGrid batch ids (the SES/SendGrid drop-ins, `POST /v3/mail/batch`): scheduled sends
-- that name one can be cancelled together (`POST /v3/user/scheduled_sends`).
CREATE TABLE sendgrid_batches (
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id          text NOT NULL,
    -- active, or cancel once its scheduled sends were cancelled
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancel')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, id)
);
ALTER TABLE scheduled_messages ADD COLUMN sendgrid_batch text;
CREATE INDEX scheduled_messages_sendgrid_batch ON scheduled_messages (account_id, sendgrid_batch)
    WHERE sendgrid_batch IS NOT NULL;
