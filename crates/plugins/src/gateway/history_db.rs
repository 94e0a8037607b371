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
/// The file cannot be read or written, is not a regular file, or holds no id (empty, over 200
/// bytes, not UTF-8, or control characters), naming it and saying what it found.
pub fn instance_id(state_dir: &Path) -> Result<String, Error> {
    let path = state_dir.join(INSTANCE_FILE);
    if let Some(id) = read_id(&path)? {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    // A name no other process uses (a pid is not one: two containers sharing the dir may both
    // run marina as pid 1), so nobody else's half-written file is truncated or removed here.
    let tmp = state_dir.join(format!(".{INSTANCE_FILE}.{}", uuid::Uuid::new_v4().simple()));
    let written = write_synced(&tmp, &id).and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            // The link itself survives a crash once the directory is synced (best effort).
            let _ = std::fs::File::open(state_dir).and_then(|d| d.sync_all());
            Ok(id)
        }
        // Another process made it first: theirs is the id.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_id(&path)?.ok_or_else(|| Error::internal(format!("{} vanished while it was read", path.display())))
        }
        Err(e) => Err(Error::internal(format!("cannot write {}: {e}", path.display()))),
    }
}

/// What a file that is not a regular one is, for an error.
fn kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "something other than a regular file"
    }
}

/// `id` and a newline in a new file at `path`, on disk before it is linked into place: without
/// the sync a crash soon after the first start could leave an empty `instance-id` (delayed
/// allocation), which every later start refuses.
fn write_synced(path: &Path, id: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create_new(path)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()
}

/// The id in `path`, `None` when there is no such file. Only a regular file is read (a FIFO
/// would block the start) and only its first bytes.
fn read_id(path: &Path) -> Result<Option<String>, Error> {
    use std::io::Read;
    let bad = |found: String| {
        Error::internal(format!(
            "{}: expected this instance's id (1 to {ID_MAX} bytes on one line in a regular file), found {found}; \
             delete it to get a new one",
            path.display()
        ))
    };
    let cannot = |e: std::io::Error| Error::internal(format!("cannot read {}: {e}", path.display()));
    // Opened without blocking and checked on the open file: a check by path before opening
    // could be raced (the file swapped for a FIFO in between, which would block the start).
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cannot(e)),
        }
    };
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(bad(kind(meta.file_type()).to_string()));
    }
    let mut bytes = Vec::new();
    // Room for the longest id, a line end and some blanks; more is refused unread.
    let cap = ID_MAX as u64 + 64;
    file.take(cap + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > cap {
        return Err(bad(format!("more than {cap} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("bytes that are not UTF-8".into()))?;
    let id = text.trim();
    if id.is_empty() || id.len() > ID_MAX || id.chars().any(char::is_control) {
        return Err(bad(if id.is_empty() { "nothing".to_string() } else { format!("{} bytes", id.len()) }));
    }
    Ok(Some(id.to_string()))
}

impl HistoryDb {
    /// The history of instance `instance` (see [`instance_id`]) in `store`.
    pub fn new(store: Store, instance: String) -> Self {
        Self { store, instance }
    }

    /// The database it is stored in.
    pub fn store(&self) -> &Store {
        &self.store
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

    /// Store `entries` (oldest first) and delete this instance's rows before `keep_from` (a
    /// `seq`: what the history no longer reaches) in one transaction; then delete other
    /// instances' rows older than an hour at `now_ms`.
    ///
    /// # Errors
    /// The database's, from the transaction (nothing is written then).
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
                Ok(())
            })
            .await?;
        // Other instances' rows in a statement of its own, after the commit: inside the
        // transaction it would wait for another instance's rows while holding this one's, and
        // that instance's write does the same the other way round (PostgreSQL: deadlock, one
        // write failed). Best effort: whatever is left goes with the next write.
        if let Err(e) = self
            .store
            .execute(
                "DELETE FROM marina_gateway_metrics_history WHERE instance <> $1 AND ts < $2",
                &[Value::from(instance), int(now_ms.saturating_sub(RETENTION_MS))],
            )
            .await
        {
            tracing::warn!(error = %e, "the gateway's metrics history: other instances' old rows were not deleted");
        }
        Ok(())
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
