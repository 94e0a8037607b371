-- The gateway's metrics history, rekeyed (review of 0019):
-- * `instance` is the id marina keeps in its state dir (`{RUNTIME_STATE_DIR}/instance-id`), no
--   longer the host name and the state dir's path: a container with a new host name each start,
--   or a state dir mounted at another path, finds its history again. Instances sharing one
--   PostgreSQL database still keep one history each (their counters are their own).
-- * one row per snapshot actually taken: the sampler parks while the counters do not move and
--   the quiet seconds between two snapshots of one `run` (one marina process) are filled in when
--   the history is read, so an idle hour costs no rows (0019 wrote up to 3,600 filler rows on
--   the first request after it).
-- * `seq` orders an instance's rows (it only grows); `ts` (Unix milliseconds, the wall clock) is
--   only a label, so a clock stepped back neither stalls the writes nor collides with older rows.
-- The rows of 0019 were keyed by the old instance name and would never be read again: dropped
-- (an hour of metrics at most).
DROP TABLE marina_gateway_metrics_history;
CREATE TABLE marina_gateway_metrics_history (
    instance         TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    run              BIGINT NOT NULL,
    ts               BIGINT NOT NULL,
    total_requests   BIGINT NOT NULL,
    blocked_requests BIGINT NOT NULL,
    allowed_requests BIGINT NOT NULL,
    active_buckets   BIGINT NOT NULL,
    PRIMARY KEY (instance, seq)
);
-- Rows older than an hour are deleted whichever instance wrote them (an instance that is gone
-- never trims its own).
CREATE INDEX marina_gateway_metrics_history_ts ON marina_gateway_metrics_history (ts);
