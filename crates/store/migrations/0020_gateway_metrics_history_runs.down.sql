-- Back to 0019's shape; the rows are dropped (their instance names would not match).
DROP TABLE marina_gateway_metrics_history;
CREATE TABLE marina_gateway_metrics_history (
    instance         TEXT NOT NULL,
    ts               BIGINT NOT NULL,
    total_requests   BIGINT NOT NULL,
    blocked_requests BIGINT NOT NULL,
    allowed_requests BIGINT NOT NULL,
    active_buckets   BIGINT NOT NULL,
    PRIMARY KEY (instance, ts)
);
