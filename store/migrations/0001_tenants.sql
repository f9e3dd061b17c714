-- Accounts (tenants), their API keys and their sending domains.

CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys are shown once at creation; only their SHA-256 is kept. They carry 256 random
-- bits, so a fast hash is as safe as a slow one and lets every request look up by hash.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name         text NOT NULL,
    -- the first characters of the key, to tell keys apart in listings and logs
    prefix       text NOT NULL,
    secret_hash  bytea NOT NULL UNIQUE,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE sending_domains (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    domain             text NOT NULL,
    dkim_selector      text NOT NULL,
    -- PKCS#8 DER of the RSA-2048 signing key
    dkim_private_key   bytea NOT NULL,
    -- base64 SubjectPublicKeyInfo, the p= of the DNS record
    dkim_public_key    text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    verified_at        timestamptz,
    UNIQUE (account_id, domain)
);
