//! Where the metrics history is kept across restarts: the `marina_gateway_metrics_history` table
//! of marina's database (migration 0020, SQLite or PostgreSQL), one row per snapshot the sampler
//! took (the quiet seconds between them are filled in when the history is read, see
//! [`super::history`]), per instance.
//!
//! An instance is the id in `{RUNTIME_STATE_DIR}/instance-id` ([`instance_id`]), made on the
//! first start: the history follows the state dir, not the host name (a container gets a new
//! one each start) nor the dir's path (a volume mounted elsewhere), and two marina processes
//! sharing one PostgreSQL database keep one history each (each has its own counters). An
//! operator may write an id of their own there (a StatefulSet pod's name, say) before the start.
//!
//! Written in batches, not every second: the sampler hands over what is new every
//! [`FLUSH_EVERY`] snapshots, when it parks (so an idle gateway has everything stored), and at
//! shutdown. A crash loses at most the last batch. Each write also deletes this instance's rows
//! the history no longer reaches and every instance's rows older than an hour ([`RETENTION_MS`]:
//! an instance that is gone, or restarts after more than an hour, starts afresh).

use std::io::ErrorKind;
use std::path::Path;

use marina_core::Error;
use marina_store::{Store, Value};

use super::history::{CAPACITY, EVERY, Entry, Snapshot};

/// Snapshots gathered before they are written (while requests keep arriving).
pub const FLUSH_EVERY: usize = 10;

/// How long a row is of use: the history's hour.
pub const RETENTION_MS: u64 = CAPACITY as u64 * EVERY.as_millis() as u64;

/// The file in the state dir that holds the instance's id.
pub const INSTANCE_FILE: &str = "instance-id";

/// The longest id accepted from [`INSTANCE_FILE`].
const ID_MAX: usize = 200;

/// The table, for one instance.
pub struct HistoryDb {
    store: Store,
    instance: String,
}

fn int(v: u64) -> Value {
    Value::from(i64::try_from(v).unwrap_or(i64::MAX))
}

/// This marina's instance id: the text of `{state_dir}/instance-id`, written with a new UUID when
/// there is none (atomically: two processes starting at once on one state dir get the same id).
///
/// # Errors
/// The file cannot be read or written, or holds no id (empty, over 200 bytes, or control
/// characters), naming it and saying what it found.
pub fn instance_id(state_dir: &Path) -> Result<String, Error> {
    let path = state_dir.join(INSTANCE_FILE);
    let read = |path: &Path| -> Result<Option<String>, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let id = text.trim();
                if id.is_empty() || id.len() > ID_MAX || id.chars().any(char::is_control) {
                    let found = if id.is_empty() { "nothing".to_string() } else { format!("{} bytes", id.len()) };
                    return Err(Error::internal(format!(
                        "{}: expected this instance's id (1 to {ID_MAX} bytes on one line), found {found}; \
                         delete the file to get a new one",
                        path.display()
                    )));
                }
                Ok(Some(id.to_string()))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::internal(format!("cannot read {}: {e}", path.display()))),
        }
    };
    if let Some(id) = read(&path)? {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = state_dir.join(format!(".{INSTANCE_FILE}.{}", std::process::id()));
    let written = std::fs::write(&tmp, format!("{id}\n")).and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(id),
        // Another process made it first: theirs is the id.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read(&path)?.ok_or_else(|| Error::internal(format!("{} vanished while it was read", path.display())))
        }
        Err(e) => Err(Error::internal(format!("cannot write {}: {e}", path.display()))),
    }
}

impl HistoryDb {
    /// The history of instance `instance` (see [`instance_id`]) in `store`.
    pub fn new(store: Store, instance: String) -> Self {
        Self { store, instance }
    }

    /// The instance's name in the table.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The stored snapshots not older than an hour at `now_ms`, oldest first, at most
    /// [`CAPACITY`]; and the instance's newest `seq` (0 for none), older rows included.
    ///
    /// # Errors
    /// The database's.
    pub async fn load(&self, now_ms: u64) -> Result<(Vec<Entry>, u64), Error> {
        let rows = self
            .store
            .query(
                "SELECT seq, run, ts, total_requests, blocked_requests, allowed_requests, active_buckets \
                 FROM marina_gateway_metrics_history WHERE instance = $1 ORDER BY seq DESC LIMIT $2",
                &[Value::from(self.instance.as_str()), int(CAPACITY as u64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut last = 0;
        for row in rows.iter().rev() {
            let n = |c: &str| row.get::<i64>(c).map(|v| u64::try_from(v).unwrap_or(0));
            let entry = Entry {
                seq: n("seq")?,
                run: n("run")?,
                snap: Snapshot {
                    timestamp: n("ts")?,
                    total_requests: n("total_requests")?,
                    blocked_requests: n("blocked_requests")?,
                    allowed_requests: n("allowed_requests")?,
                    active_buckets: n("active_buckets")?,
                },
            };
            last = last.max(entry.seq);
            if entry.snap.timestamp.saturating_add(RETENTION_MS) >= now_ms {
                out.push(entry);
            }
        }
        Ok((out, last))
    }

    /// Store `entries` (oldest first), then delete this instance's rows before `keep_from` (a
    /// `seq`: what the history no longer reaches) and other instances' rows older than an hour
    /// at `now_ms`.
    ///
    /// # Errors
    /// The database's; nothing is written then (one transaction).
    pub async fn append(&self, entries: &[Entry], keep_from: u64, now_ms: u64) -> Result<(), Error> {
        let instance = self.instance.as_str();
        self.store
            .transaction(async |tx| {
                for e in entries {
                    let s = &e.snap;
                    tx.execute(
                        "INSERT INTO marina_gateway_metrics_history \
                         (instance, seq, run, ts, total_requests, blocked_requests, allowed_requests, active_buckets) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (instance, seq) DO NOTHING",
                        &[
                            Value::from(instance),
                            int(e.seq),
                            int(e.run),
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
                    "DELETE FROM marina_gateway_metrics_history WHERE instance = $1 AND seq < $2",
                    &[Value::from(instance), int(keep_from)],
                )
                .await?;
                tx.execute(
                    "DELETE FROM marina_gateway_metrics_history WHERE instance <> $1 AND ts < $2",
                    &[Value::from(instance), int(now_ms.saturating_sub(RETENTION_MS))],
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
