//! Where the metrics history is kept across restarts: the `marina_gateway_metrics_history` table
//! of marina's database (migration 0019, SQLite or PostgreSQL), one row per snapshot, per
//! instance, trimmed to the last [`CAPACITY`] seconds. An instance is the host name and marina's
//! state dir (`myhost:/var/lib/marina`): the same after a restart, distinct for two marina
//! processes sharing one PostgreSQL database (each has its own counters).
//!
//! Written in batches, not every second: the sampler hands over what is new every
//! [`FLUSH_EVERY`] snapshots, when it parks (so an idle gateway has everything stored), and at
//! shutdown. A crash loses at most the last batch.

use marina_core::Error;
use marina_store::{Store, Value};

use super::history::{CAPACITY, EVERY, Snapshot};

/// Snapshots gathered before they are written (while requests keep arriving).
pub const FLUSH_EVERY: usize = 10;

/// The table, for one instance.
pub struct HistoryDb {
    store: Store,
    instance: String,
}

/// This machine's name (Linux: the kernel's hostname, a pod's name in Kubernetes).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn int(v: u64) -> Value {
    Value::from(i64::try_from(v).unwrap_or(i64::MAX))
}

impl HistoryDb {
    /// The history of this instance (this host, `state_dir`) in `store`.
    pub fn new(store: Store, state_dir: &std::path::Path) -> Self {
        Self { store, instance: format!("{}:{}", host_name(), state_dir.display()) }
    }

    /// The instance's name in the table.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The stored snapshots, oldest first, at most [`CAPACITY`].
    ///
    /// # Errors
    /// The database's.
    pub async fn load(&self) -> Result<Vec<Snapshot>, Error> {
        let rows = self
            .store
            .query(
                "SELECT ts, total_requests, blocked_requests, allowed_requests, active_buckets \
                 FROM marina_gateway_metrics_history WHERE instance = $1 ORDER BY ts DESC LIMIT $2",
                &[Value::from(self.instance.as_str()), int(CAPACITY as u64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let n = |c: &str| row.get::<i64>(c).map(|v| u64::try_from(v).unwrap_or(0));
            out.push(Snapshot {
                timestamp: n("ts")?,
                total_requests: n("total_requests")?,
                blocked_requests: n("blocked_requests")?,
                allowed_requests: n("allowed_requests")?,
                active_buckets: n("active_buckets")?,
            });
        }
        Ok(out)
    }

    /// Store `snaps` (oldest first) and drop what is older than the last [`CAPACITY`] seconds.
    ///
    /// # Errors
    /// The database's; nothing is written then (one transaction).
    pub async fn append(&self, snaps: &[Snapshot]) -> Result<(), Error> {
        let Some(newest) = snaps.last().map(|s| s.timestamp) else { return Ok(()) };
        let oldest_kept = newest.saturating_sub(CAPACITY as u64 * EVERY.as_millis() as u64);
        let instance = self.instance.as_str();
        self.store
            .transaction(async |tx| {
                for s in snaps {
                    tx.execute(
                        "INSERT INTO marina_gateway_metrics_history \
                         (instance, ts, total_requests, blocked_requests, allowed_requests, active_buckets) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance, ts) DO NOTHING",
                        &[
                            Value::from(instance),
                            int(s.timestamp),
                            int(s.total_requests),
                            int(s.blocked_requests),
                            int(s.allowed_requests),
                            int(s.active_buckets),
                        ],
                    )
                    .await?;
                }
                tx.execute(
                    "DELETE FROM marina_gateway_metrics_history WHERE instance = $1 AND ts < $2",
                    &[Value::from(instance), int(oldest_kept)],
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// Forget this instance's history.
    ///
    /// # Errors
    /// The database's.
    pub async fn clear(&self) -> Result<(), Error> {
        self.store
            .execute(
                "DELETE FROM marina_gateway_metrics_history WHERE instance = $1",
                &[Value::from(self.instance.as_str())],
            )
            .await
            .map(|_| ())
    }
}
