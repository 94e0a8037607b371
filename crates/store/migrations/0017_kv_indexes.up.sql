-- Keyval search indexes (marina_store::kv::search): per namespace, the key prefix (encoded as
-- kv_entries.key is) and the JSON list of field paths whose text is searched. tokenize is
-- Buntime's tokenizer name, kept as given. created_at is Unix milliseconds.
CREATE TABLE kv_indexes (
    ns         TEXT NOT NULL,
    prefix     BYTEA NOT NULL,
    fields     TEXT NOT NULL,
    tokenize   TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (ns, prefix)
);
