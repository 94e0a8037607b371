-- marina's own settings, one row per key; starts with the version of this schema so that
-- tools reading the database can tell which marina wrote it.
CREATE TABLE marina_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT INTO marina_meta (key, value) VALUES ('schema_version', '1');
