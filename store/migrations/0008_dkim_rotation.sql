-- A domain's next RSA DKIM key, staged by `sendmill admin rotate-dkim` under a new
-- selector while its DNS record is published, and made the signing key by
-- `rotate-dkim --activate` (the old selector's record stays published for a while).
-- Sealed like the other private keys (secrets at rest), under the row's dkim_kek_id.
ALTER TABLE sending_domains
    ADD COLUMN dkim_next_selector    text,
    ADD COLUMN dkim_next_private_key bytea,
    ADD COLUMN dkim_next_public_key  text;
