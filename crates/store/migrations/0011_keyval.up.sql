-- The key-value engine (marina_store::kv). One table per concern, every row tagged with its
-- namespace (one per app). Keys are the order-preserving encoding of composite keys, so a
-- range scan on (ns, key) lists them in key order. BYTEA is PostgreSQL's binary type; SQLite
-- accepts the name and stores the bytes as a BLOB, compared byte by byte like bytea.
CREATE TABLE kv_entries (
    ns           TEXT NOT NULL,
    key          BYTEA NOT NULL,
    value        TEXT NOT NULL,
    versionstamp TEXT NOT NULL,
    expires_at   BIGINT,
    PRIMARY KEY (ns, key)
);

CREATE INDEX kv_entries_expiry ON kv_entries (expires_at) WHERE expires_at IS NOT NULL;

-- Queue messages: ready_at and locked_until are epoch milliseconds; backoff is a JSON array of
-- delays in ms; keys_if_undelivered a JSON array of keys (JSON form).
CREATE TABLE kv_queue (
    id                  TEXT PRIMARY KEY,
    ns                  TEXT NOT NULL,
    value               TEXT NOT NULL,
    ready_at            BIGINT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    backoff             TEXT NOT NULL,
    keys_if_undelivered TEXT NOT NULL,
    locked_until        BIGINT,
    created_at          BIGINT NOT NULL
);

CREATE INDEX kv_queue_ready ON kv_queue (ns, ready_at, id);

-- Messages whose every delivery attempt failed.
CREATE TABLE kv_dlq (
    id         TEXT PRIMARY KEY,
    ns         TEXT NOT NULL,
    value      TEXT NOT NULL,
    attempts   BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    failed_at  BIGINT NOT NULL
);

CREATE INDEX kv_dlq_ns ON kv_dlq (ns, failed_at, id);
