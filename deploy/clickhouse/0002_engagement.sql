-- Engagement detail: who opened or clicked (user agent), what was clicked, and whether
-- it looked like a machine (privacy-proxy prefetch, link scanner) rather than a person.
ALTER TABLE events
    ADD COLUMN user_agent String,
    ADD COLUMN url String,
    ADD COLUMN machine UInt8
