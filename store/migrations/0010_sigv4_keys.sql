-- API keys that may also sign AWS Signature Version 4 requests (the SES v2 drop-in):
-- verifying SigV4 needs the secret itself, not its hash, so such a key keeps a copy
-- sealed under the KEK (never in plaintext: creating one without a keyring is refused).
ALTER TABLE api_keys ADD COLUMN sigv4_secret bytea, ADD COLUMN sigv4_kek_id text;
