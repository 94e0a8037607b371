-- Reverse-proxy rules created through /redirects/api/rules. spec is the rule's JSON in Buntime's
-- field names (pattern, target, rewrite, order, ...), validated by marina before it is written;
-- seq keeps creation order, which breaks ties between rules of the same `order`. Times are Unix
-- milliseconds.
CREATE TABLE marina_proxy_rules (
    id         TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    spec       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
