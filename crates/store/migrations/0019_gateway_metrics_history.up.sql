-- The gateway's metrics history (/gateway/api/metrics/history): one row per second while the
-- gateway's counters move, the last hour per instance, so the history survives a restart as
-- Buntime's (kept in keyval) did. `instance` is the host name and marina's state dir: several
-- marina instances sharing one PostgreSQL database each keep their own history (their counters
-- are their own) instead of interleaving them in one key as Buntime's did. Times are Unix
-- milliseconds.
CREATE TABLE marina_gateway_metrics_history (
    instance         TEXT NOT NULL,
    ts               BIGINT NOT NULL,
    total_requests   BIGINT NOT NULL,
    blocked_requests BIGINT NOT NULL,
    allowed_requests BIGINT NOT NULL,
    active_buckets   BIGINT NOT NULL,
    PRIMARY KEY (instance, ts)
);
