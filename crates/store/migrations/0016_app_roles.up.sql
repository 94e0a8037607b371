-- Per-app PostgreSQL login roles (marina_store::app_role): the role of each app's schema and
-- its random password, shared by every marina instance on the database. Unused on SQLite.
-- created_at is Unix milliseconds.
CREATE TABLE marina_app_roles (
    role       TEXT PRIMARY KEY,
    app        TEXT NOT NULL,
    password   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
