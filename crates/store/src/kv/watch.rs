//! Change notification and watchers.
//!
//! Every commit publishes which keys it touched. On SQLite (one process owns the file) that is
//! an in-process `tokio::sync::broadcast`. On PostgreSQL the commit calls `pg_notify` inside
//! its transaction (so the notification leaves only if the commit does), and one `LISTEN`
//! session per [`Kv`](super::Kv) feeds the broadcast: a write on one marina instance reaches
//! watchers on every instance, and a watcher costs nothing until something changes — no
//! polling per connection (Buntime polls every 100 ms per watcher).
//!
//! A watcher re-reads its keys only when a change names its namespace, and reports only what
//! differs from what it last reported. When it falls behind the broadcast or the `LISTEN`
//! session reconnects (notifications may have been missed), it re-reads everything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use marina_core::Error;
use serde_json::Value as Json;
use tokio::sync::{broadcast, mpsc};

use super::key::{self, Key};
use super::{Entry, ListOptions, Namespace, Selector};
use crate::store::{BackendKind, Store, Tx};
use crate::value::Value;

/// The PostgreSQL notification channel.
pub(crate) const CHANNEL: &str = "marina_kv";
/// PostgreSQL refuses payloads of 8000 bytes or more; larger changes name only the namespace.
const MAX_PAYLOAD: usize = 7000;

/// One change notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// These encoded keys of a namespace were written or deleted.
    Keys(Arc<str>, Arc<Vec<Vec<u8>>>),
    /// Something in this namespace changed (too many keys to name).
    Namespace(Arc<str>),
    /// This namespace's queue got a message.
    Queue(Arc<str>),
    /// Anything may have changed (notifications were lost): re-read everything.
    All,
}

impl Change {
    pub(crate) fn keys(ns: &str, keys: Vec<Vec<u8>>) -> Change {
        Change::Keys(Arc::from(ns), Arc::new(keys))
    }

    /// Whether a watcher of `ns` should look.
    pub fn concerns(&self, ns: &str) -> bool {
        match self {
            Change::Keys(n, _) | Change::Namespace(n) => &**n == ns,
            Change::Queue(_) => false,
            Change::All => true,
        }
    }

    fn touches(&self, ns: &str, wanted: impl Fn(&[u8]) -> bool) -> bool {
        match self {
            Change::Keys(n, keys) => &**n == ns && keys.iter().any(|k| wanted(k)),
            other => other.concerns(ns),
        }
    }

    fn payload(&self) -> String {
        let p = match self {
            Change::Keys(ns, keys) => {
                serde_json::json!({ "ns": &**ns, "k": keys.iter().map(hex::encode).collect::<Vec<_>>() })
            }
            Change::Namespace(ns) => serde_json::json!({ "ns": &**ns }),
            Change::Queue(ns) => serde_json::json!({ "ns": &**ns, "q": true }),
            Change::All => serde_json::json!({}),
        };
        let text = p.to_string();
        match self {
            Change::Keys(ns, _) if text.len() > MAX_PAYLOAD => serde_json::json!({ "ns": &**ns }).to_string(),
            _ => text,
        }
    }

    fn from_payload(text: &str) -> Change {
        let Ok(v) = serde_json::from_str::<Json>(text) else { return Change::All };
        let Some(ns) = v.get("ns").and_then(Json::as_str) else { return Change::All };
        if v.get("q").is_some() {
            return Change::Queue(Arc::from(ns));
        }
        match v.get("k").and_then(Json::as_array) {
            Some(keys) => {
                let keys: Option<Vec<Vec<u8>>> =
                    keys.iter().map(|k| k.as_str().and_then(|s| hex::decode(s).ok())).collect();
                keys.map_or_else(|| Change::Namespace(Arc::from(ns)), |k| Change::Keys(Arc::from(ns), Arc::new(k)))
            }
            None => Change::Namespace(Arc::from(ns)),
        }
    }
}

/// Queue a notification inside `tx` (PostgreSQL): it is delivered when the transaction commits.
pub(crate) async fn notify_in(tx: &mut Tx, change: &Change) -> Result<(), Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[CHANNEL.into(), Value::Text(change.payload())]).await?;
    Ok(())
}

/// Publish a change made outside a transaction.
pub(crate) async fn publish(store: &Store, local: &broadcast::Sender<Change>, change: Change) -> Result<(), Error> {
    if store.kind() == BackendKind::Postgres {
        store.execute("SELECT pg_notify($1, $2)", &[CHANNEL.into(), Value::Text(change.payload())]).await?;
    } else {
        let _ = local.send(change);
    }
    Ok(())
}

/// Forward `LISTEN` notifications to the broadcast; reconnect (with backoff) when the session
/// ends, and then tell watchers to re-read, since notifications may have been missed.
pub(crate) async fn pump(store: Store, mut rx: mpsc::UnboundedReceiver<String>, out: broadcast::Sender<Change>) {
    loop {
        while let Some(payload) = rx.recv().await {
            let _ = out.send(Change::from_payload(&payload));
        }
        let mut delay = Duration::from_millis(100);
        rx = loop {
            tokio::time::sleep(delay).await;
            match store.listen(CHANNEL).await {
                Ok(Some(rx)) => break rx,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "the key-value LISTEN session is down; retrying");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let _ = out.send(Change::All);
    }
}

/// What a watcher reports for one key: its entry now, or `None` when absent.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// The key.
    pub key: Key,
    /// The entry, or `None` (deleted, expired, never written).
    pub entry: Option<Entry>,
}

impl WatchEvent {
    /// `{key, value, versionstamp}` with nulls for an absent key.
    pub fn to_json(&self) -> Json {
        match &self.entry {
            Some(e) => e.to_json(),
            None => serde_json::json!({ "key": key::key_to_json(&self.key), "value": null, "versionstamp": null }),
        }
    }
}

/// Watches a fixed list of keys.
pub struct Watcher {
    ns: Namespace,
    keys: Vec<Key>,
    enc: Vec<Vec<u8>>,
    last: Vec<Option<String>>,
    pending: Vec<WatchEvent>,
    rx: broadcast::Receiver<Change>,
}

/// Watches every key under a prefix (up to a limit of entries).
pub struct PrefixWatcher {
    ns: Namespace,
    prefix: Key,
    lo: Vec<u8>,
    hi: Vec<u8>,
    limit: usize,
    last: BTreeMap<Vec<u8>, (Key, String)>,
    pending: Vec<WatchEvent>,
    rx: broadcast::Receiver<Change>,
}

async fn wait(rx: &mut broadcast::Receiver<Change>, relevant: impl Fn(&Change) -> bool) -> Result<(), Error> {
    loop {
        match rx.recv().await {
            Ok(c) if relevant(&c) => return Ok(()),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
            Err(broadcast::error::RecvError::Closed) => {
                return Err(Error::unavailable("KV_CLOSED", "the key-value store is shutting down"));
            }
        }
    }
}

impl Namespace {
    /// Watch `keys`, from their state now. The first [`Watcher::next`] reports every key's
    /// current state when `initial` is true (otherwise it waits for the first change — unlike
    /// Buntime, which sends existing keys anyway).
    ///
    /// # Errors
    /// `KV_KEY_*`, `KV_BATCH_TOO_LARGE`; store errors.
    pub async fn watch(&self, keys: Vec<Key>, initial: bool) -> Result<Watcher, Error> {
        if keys.is_empty() {
            return Err(Error::bad_request("KV_KEY_INVALID", "keys: watch needs at least one key")
                .with_data(serde_json::json!({ "path": "keys" })));
        }
        if keys.len() > self.limits().max_batch {
            return Err(super::limit_error(
                http::StatusCode::BAD_REQUEST,
                "KV_BATCH_TOO_LARGE",
                "maxBatchSize",
                format!("keys: {} keys; the limit (maxBatchSize) is {}", keys.len(), self.limits().max_batch),
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            self.check_key(k, &format!("keys[{i}]"), false)?;
        }
        let enc = keys.iter().map(|k| key::encode(k)).collect();
        // Subscribe before the first read, so no change between the two is missed.
        let rx = self.changes().subscribe();
        let entries = self.get_many(&keys).await?;
        let last = entries.iter().map(|e| e.as_ref().map(|e| e.versionstamp.clone())).collect();
        let pending = if initial {
            keys.iter().zip(entries).map(|(k, e)| WatchEvent { key: k.clone(), entry: e }).collect()
        } else {
            Vec::new()
        };
        Ok(Watcher { rx, ns: self.clone(), keys, enc, last, pending })
    }

    /// Watch the strict descendants of `prefix` (at most `limit` entries); deletions are
    /// reported with a null value.
    ///
    /// # Errors
    /// `KV_KEY_*`, `KV_LIMIT_INVALID`; store errors.
    pub async fn watch_prefix(&self, prefix: Key, limit: Option<usize>, initial: bool) -> Result<PrefixWatcher, Error> {
        self.check_key(&prefix, "prefix", true)?;
        let limit = self.clamp_limit(limit)?;
        let (lo, hi) = key::descendants(&prefix);
        let rx = self.changes().subscribe();
        let mut w =
            PrefixWatcher { rx, ns: self.clone(), prefix, lo, hi, limit, last: BTreeMap::new(), pending: Vec::new() };
        let entries = w.read().await?;
        if initial {
            w.pending = entries.iter().map(|e| WatchEvent { key: e.key.clone(), entry: Some(e.clone()) }).collect();
        }
        w.last = entries.into_iter().map(|e| (key::encode(&e.key), (e.key, e.versionstamp))).collect();
        Ok(w)
    }
}

impl Watcher {
    /// The next batch of changed keys (never empty). Waits without touching the database
    /// until a change names this namespace.
    ///
    /// # Errors
    /// Store errors; `KV_CLOSED` when the engine is dropped.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, Error> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        loop {
            let enc = self.enc.clone();
            let ns = self.ns.name().to_string();
            wait(&mut self.rx, |c| c.touches(&ns, |k| enc.iter().any(|e| e == k))).await?;
            let entries = self.ns.get_many(&self.keys).await?;
            let now: Vec<Option<String>> = entries.iter().map(|e| e.as_ref().map(|e| e.versionstamp.clone())).collect();
            let events: Vec<WatchEvent> = self
                .keys
                .iter()
                .zip(entries)
                .zip(self.last.iter().zip(&now))
                .filter(|(_, (b, n))| b != n)
                .map(|((k, e), _)| WatchEvent { key: k.clone(), entry: e })
                .collect();
            self.last = now;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

impl PrefixWatcher {
    async fn read(&self) -> Result<Vec<Entry>, Error> {
        let opts = ListOptions {
            selector: Selector { prefix: Some(self.prefix.clone()), ..Default::default() },
            limit: Some(self.limit),
            ..Default::default()
        };
        Ok(self.ns.list(&opts).await?.entries)
    }

    /// The next batch of changed entries under the prefix (never empty).
    ///
    /// # Errors
    /// Store errors; `KV_CLOSED` when the engine is dropped.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, Error> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        loop {
            let (lo, hi) = (self.lo.clone(), self.hi.clone());
            let ns = self.ns.name().to_string();
            wait(&mut self.rx, |c| c.touches(&ns, |k| k >= &lo[..] && k < &hi[..])).await?;
            let entries = self.read().await?;
            let now: BTreeMap<Vec<u8>, (Key, String)> =
                entries.iter().map(|e| (key::encode(&e.key), (e.key.clone(), e.versionstamp.clone()))).collect();
            let mut events = Vec::new();
            for e in &entries {
                let enc = key::encode(&e.key);
                if self.last.get(&enc).map(|(_, v)| v) != Some(&e.versionstamp) {
                    events.push(WatchEvent { key: e.key.clone(), entry: Some(e.clone()) });
                }
            }
            for (enc, (k, _)) in &self.last {
                if !now.contains_key(enc) {
                    events.push(WatchEvent { key: k.clone(), entry: None });
                }
            }
            self.last = now;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_shrink() {
        let c = Change::keys("app", vec![vec![2, 97, 0], vec![]]);
        assert_eq!(Change::from_payload(&c.payload()), c);
        let q = Change::Queue(Arc::from("app"));
        assert_eq!(Change::from_payload(&q.payload()), q);
        let big = Change::keys("app", vec![vec![7; 5000]]);
        assert_eq!(Change::from_payload(&big.payload()), Change::Namespace(Arc::from("app")));
        assert_eq!(Change::from_payload("garbage"), Change::All);
    }
}
