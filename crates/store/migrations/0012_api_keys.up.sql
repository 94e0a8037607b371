-- API keys for the internal API (and, as an identity, for app routes). Only the SHA-256 of a
-- key is kept; key_prefix (the first 12 characters, e.g. 'btk_Ab3dE9fG') is shown in listings
-- and narrows the lookup before the constant-time hash comparison. Times are Unix seconds, as
-- Buntime's API reports them. permissions is a JSON array of permission names; created_by is
-- the id of the key that created this one (NULL for the root key and the CLI).
CREATE TABLE marina_api_keys (
    id           BIGINT PRIMARY KEY,
    name         TEXT NOT NULL,
    key_prefix   TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    permissions  TEXT NOT NULL,
    description  TEXT,
    created_by   BIGINT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE INDEX marina_api_keys_prefix ON marina_api_keys (key_prefix);
