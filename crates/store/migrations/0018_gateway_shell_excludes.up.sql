-- First path segments the gateway's app shell leaves alone, added at runtime through
-- POST /gateway/api/shell/excludes (the ones from GATEWAY_SHELL_EXCLUDES or the manifest are
-- not stored). Buntime kept them as a string array in keyval under ["gateway","shell","excludes"];
-- a table gives each its own row (no lost update when two instances add at once) and the time
-- it was added (Unix milliseconds).
CREATE TABLE marina_gateway_shell_excludes (
    basename TEXT PRIMARY KEY,
    added_at BIGINT NOT NULL
);
