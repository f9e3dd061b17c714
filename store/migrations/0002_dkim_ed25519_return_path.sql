-- Ed25519 DKIM keys beside the RSA ones (dual signing, RFC 8463), and the domain that
-- carries each message's VERP return path.
ALTER TABLE sending_domains
    ADD COLUMN dkim_ed25519_selector     text,
    ADD COLUMN dkim_ed25519_private_key  bytea,
    ADD COLUMN dkim_ed25519_public_key   text,
    ADD COLUMN dual_sign                 boolean NOT NULL DEFAULT false,
    ADD COLUMN return_path_domain        text;
