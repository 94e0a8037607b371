//! The key-value engine: a Deno-KV-class store on marina's own database (SQLite or
//! PostgreSQL), namespaced per app.
//!
//! - [`key`]: composite keys and the order-preserving encoding that makes `list` a range scan;
//! - [`Namespace`] (this module): get, set, delete (with descendants), list, count, batch;
//! - [`atomic`]: check-and-mutate commits (set, delete, sum, min, max, append, prepend);
//! - [`filter`]: Buntime's where-filters;
//! - [`queue`]: queues with delay, backoff, ack/nack and a dead-letter queue;
//! - [`search`]: text search over a prefix's entries (Buntime's indexes, as a bounded scan);
//! - [`watch`]: change notification (an in-process broadcast, fed on PostgreSQL by
//!   `LISTEN/NOTIFY` so that a write on one marina instance reaches watchers on another).
//!
//! Expired entries are never returned (reads compare `expires_at` with the clock) and a
//! background task purges them every [`KvLimits::purge_interval`].

pub mod atomic;
mod dlq;
mod entries;
pub mod filter;
pub mod key;
mod list;
mod numeric;
pub mod queue;
pub mod search;
pub mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use marina_core::Error;
use serde_json::Value as Json;
use tokio::sync::broadcast;

use crate::store::{BackendKind, Store};
use crate::value::{Row, Value};
pub use atomic::{Check, Mutation, MutationKind};
pub use dlq::DeadLetter;
pub use filter::Filter;
pub use key::{Key, KeyPart};
pub use list::{ListOptions, ListPage, Selector};
pub use watch::Change;

/// Configurable limits. Every error that a limit causes names it (as `limit` in its data).
#[derive(Debug, Clone)]
pub struct KvLimits {
    /// Largest value, as JSON text (`maxValueSize`, default 1 MiB).
    pub max_value_bytes: usize,
    /// Most parts in a key (`maxKeyDepth`, default 20).
    pub max_key_depth: usize,
    /// Largest key part, in bytes (`maxKeyPartSize`, default 1024).
    pub max_key_part_bytes: usize,
    /// Most keys in a batch or checks + mutations in one atomic commit (`maxBatchSize`, 1000).
    pub max_batch: usize,
    /// Largest page of a list (`maxListLimit`, 1000); the default page is 100.
    pub max_list_limit: usize,
    /// How long a dequeued message stays invisible to other consumers (30 s).
    pub queue_lock: Duration,
    /// How often expired entries are purged (1 s).
    pub purge_interval: Duration,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_value_bytes: 1024 * 1024,
            max_key_depth: 20,
            max_key_part_bytes: 1024,
            max_batch: 1000,
            max_list_limit: 1000,
            queue_lock: Duration::from_secs(30),
            purge_interval: Duration::from_secs(1),
        }
    }
}

/// The default page size of a list.
pub const DEFAULT_LIST_LIMIT: usize = 100;

pub(crate) fn limit_error(status: StatusCode, code: &'static str, limit: &str, message: String) -> Error {
    Error::new(status, code, message).with_data(serde_json::json!({ "limit": limit }))
}

/// The engine over one store. Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    limits: KvLimits,
    changes: broadcast::Sender<Change>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its key.
    pub key: Key,
    /// Its value.
    pub value: Json,
    /// The versionstamp of the commit that wrote it.
    pub versionstamp: String,
}

impl Entry {
    /// `{key, value, versionstamp}`, Buntime's shape.
    pub fn to_json(&self) -> Json {
        serde_json::json!({ "key": key::key_to_json(&self.key), "value": self.value, "versionstamp": self.versionstamp })
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `ms` milliseconds after `now` (epoch milliseconds), saturating: a client's `expiresIn` or
/// `delay` of 2^64 - 1 means "never", not a time in the past (a wrapped sum would expire the
/// value at once, or delay the message not at all).
pub(crate) fn after_ms(now: i64, ms: u128) -> i64 {
    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// `value` with every `kv.now()` placeholder — an object that is exactly `{"$now": true}` or
/// `{"$now": true, "$offset": <ms>}` — replaced by `now` (+ the offset) in epoch milliseconds,
/// as Buntime's `serializeValue` does. Anything else is kept as it is.
pub(crate) fn resolve_now(value: &Json, now: i64) -> Json {
    match value {
        Json::Object(m)
            if m.get("$now") == Some(&Json::Bool(true)) && m.keys().all(|k| k == "$now" || k == "$offset") =>
        {
            let offset = match m.get("$offset") {
                None => Some(0),
                Some(o) => o.as_i64().or_else(|| o.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            };
            match offset {
                Some(o) => Json::from(now.saturating_add(o)),
                None => value.clone(),
            }
        }
        Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), resolve_now(v, now))).collect()),
        Json::Array(a) => Json::Array(a.iter().map(|v| resolve_now(v, now)).collect()),
        other => other.clone(),
    }
}

/// A new versionstamp: a UUIDv7, as in Buntime (time-ordered, and ordered within a process).
pub(crate) fn new_versionstamp() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Kv {
    /// The engine over `store`, whose system migrations must have run (they create the
    /// `kv_*` tables). Starts the expiry purger and, on PostgreSQL, the `LISTEN` session that
    /// feeds watchers; both stop when the last clone is dropped.
    ///
    /// # Errors
    /// `DATABASE_UNAVAILABLE` when the `LISTEN` session cannot be opened.
    pub async fn open(store: Store, limits: KvLimits) -> Result<Kv, Error> {
        let (changes, _) = broadcast::channel(1024);
        let mut tasks = Vec::new();
        if store.kind() == BackendKind::Postgres {
            let rx = store.listen(watch::CHANNEL).await?.expect("PostgreSQL listens");
            tasks.push(tokio::spawn(watch::pump(store.clone(), rx, changes.clone())).abort_handle());
        }
        tasks.push(tokio::spawn(purge_loop(store.clone(), changes.clone(), limits.purge_interval)).abort_handle());
        Ok(Kv { inner: Arc::new(Inner { store, limits, changes, tasks }) })
    }

    /// The limits in force.
    pub fn limits(&self) -> &KvLimits {
        &self.inner.limits
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Namespace `ns` (marina uses one per app).
    pub fn ns(&self, ns: &str) -> Namespace {
        Namespace { kv: self.clone(), ns: Arc::from(ns) }
    }

    /// Subscribe to every change notification (all namespaces).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Delete every expired entry now; how many. The background purger calls this.
    ///
    /// # Errors
    /// `SQL_ERROR` / `DATABASE_UNAVAILABLE`.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        purge(&self.inner.store, &self.inner.changes).await
    }
}

async fn purge_loop(store: Store, changes: broadcast::Sender<Change>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = purge(&store, &changes).await {
            tracing::warn!(error = %e, "purging expired key-value entries failed");
        }
    }
}

async fn purge(store: &Store, changes: &broadcast::Sender<Change>) -> Result<u64, Error> {
    let rows = store
        .query("DELETE FROM kv_entries WHERE expires_at <= $1 RETURNING ns, key", &[Value::Integer(now_ms())])
        .await?;
    let n = rows.len() as u64;
    let mut by_ns: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    for r in rows {
        by_ns.entry(r.get("ns")?).or_default().push(r.get("key")?);
    }
    for (ns, keys) in by_ns {
        watch::publish(store, changes, Change::keys(&ns, keys)).await?;
    }
    Ok(n)
}

/// The keys of one namespace.
#[derive(Clone)]
pub struct Namespace {
    kv: Kv,
    ns: Arc<str>,
}

pub(crate) const LIVE: &str = "(expires_at IS NULL OR expires_at > $2)";

pub(crate) fn entry_of(row: &Row) -> Result<Entry, Error> {
    let raw: Vec<u8> = row.get("key")?;
    let text: String = row.get("value")?;
    Ok(Entry {
        key: key::decode(&raw)?,
        value: serde_json::from_str(&text).map_err(|e| Error::internal(format!("a stored value is not JSON: {e}")))?,
        versionstamp: row.get("versionstamp")?,
    })
}

impl Namespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.ns
    }

    pub(crate) fn store(&self) -> &Store {
        &self.kv.inner.store
    }

    pub(crate) fn limits(&self) -> &KvLimits {
        &self.kv.inner.limits
    }

    pub(crate) fn changes(&self) -> &broadcast::Sender<Change> {
        &self.kv.inner.changes
    }

    /// Check a key against the limits; `field` names it in errors. `allow_empty` is for
    /// selectors (the empty prefix is every key).
    ///
    /// # Errors
    /// `KV_KEY_INVALID` (empty key) or `KV_KEY_TOO_LARGE` naming the limit.
    pub fn check_key(&self, key: &[KeyPart], field: &str, allow_empty: bool) -> Result<(), Error> {
        let l = self.limits();
        if key.is_empty() && !allow_empty {
            return Err(Error::bad_request("KV_KEY_INVALID", format!("{field}: a key needs at least one part"))
                .with_data(serde_json::json!({ "path": field })));
        }
        if key.len() > l.max_key_depth {
            return Err(limit_error(
                StatusCode::BAD_REQUEST,
                "KV_KEY_TOO_LARGE",
                "maxKeyDepth",
                format!("{field}: Key too deep: {} parts; the limit (maxKeyDepth) is {}", key.len(), l.max_key_depth),
            ));
        }
        for (i, p) in key.iter().enumerate() {
            let len = match p {
                KeyPart::Bytes(b) => b.len(),
                KeyPart::String(s) => s.len(),
                _ => 0,
            };
            if len > l.max_key_part_bytes {
                return Err(limit_error(
                    StatusCode::BAD_REQUEST,
                    "KV_KEY_TOO_LARGE",
                    "maxKeyPartSize",
                    format!(
                        "{field}[{i}]: Key part too long: {len} bytes; the limit (maxKeyPartSize) is {}",
                        l.max_key_part_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Serialize a value, checking its size; `field` names it in errors.
    ///
    /// # Errors
    /// `KV_VALUE_TOO_LARGE` (413) naming `maxValueSize`.
    pub fn value_text(&self, value: &Json, field: &str) -> Result<String, Error> {
        let mut text = value.to_string();
        // Buntime's `kv.now()`: `{"$now": true}` (and `"$offset": ms`) is the server's clock.
        if text.contains("\"$now\"") {
            text = resolve_now(value, now_ms()).to_string();
        }
        let max = self.limits().max_value_bytes;
        if text.len() > max {
            return Err(limit_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "KV_VALUE_TOO_LARGE",
                "maxValueSize",
                format!("{field}: the value is {} bytes as JSON; the limit (maxValueSize) is {max}", text.len()),
            ));
        }
        Ok(text)
    }

    /// How many live entries the namespace holds and their values' size (bytes of JSON text),
    /// for metrics.
    ///
    /// # Errors
    /// Store errors.
    pub async fn storage(&self) -> Result<(u64, u64), Error> {
        let r = self
            .store()
            .query_opt(
                &format!(
                    "SELECT COUNT(*) AS n, COALESCE(SUM(LENGTH(value)), 0) AS b FROM kv_entries WHERE ns = $1 AND {LIVE}"
                ),
                &[self.name().into(), Value::Integer(now_ms())],
            )
            .await?;
        let (n, b): (i64, i64) = match r {
            Some(r) => (r.get("n")?, r.get("b")?),
            None => (0, 0),
        };
        Ok((n.max(0) as u64, b.max(0) as u64))
    }

    pub(crate) fn check_batch(&self, n: usize, field: &str) -> Result<(), Error> {
        let max = self.limits().max_batch;
        if n > max {
            return Err(limit_error(
                StatusCode::BAD_REQUEST,
                "KV_BATCH_TOO_LARGE",
                "maxBatchSize",
                format!("{field}: Too many keys: {n} (max {max}, the maxBatchSize limit)"),
            ));
        }
        Ok(())
    }
}
