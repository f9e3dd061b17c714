-- A webhook endpoint's format: `standard` (Standard Webhooks, HMAC with `secret`) or
-- `sendgrid` (SendGrid's Event Webhook: a JSON array of SendGrid-named events signed with
-- ECDSA P-256). For `sendgrid`, `secret` holds the PKCS#8 private key (sealed like any
-- secret) and `public_key` the key receivers verify with (base64 DER, as SendGrid shows it).
ALTER TABLE webhook_endpoints
    ADD COLUMN format text NOT NULL DEFAULT 'standard' CHECK (format IN ('standard', 'sendgrid')),
    ADD COLUMN public_key text;
