-- Secrets at rest (store/src/secrets.rs): the id of the key-encryption key that sealed a
-- row's secrets; NULL: written before a KEK was configured, in plaintext until
-- `sendmill migrate` or `sendmill admin rotate-kek` seals it.
ALTER TABLE sending_domains ADD COLUMN IF NOT EXISTS dkim_kek_id text;
ALTER TABLE webhook_endpoints ADD COLUMN IF NOT EXISTS secret_kek_id text;
