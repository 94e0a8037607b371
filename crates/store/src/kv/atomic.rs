//! Atomic check-and-mutate commits.
//!
//! A commit checks versionstamps (`None` = the key must be absent) and, when every check
//! holds, applies its mutations in order under one new versionstamp. No lost update:
//! on SQLite the commit runs in a `BEGIN IMMEDIATE` transaction on the store's one connection
//! (serial); on PostgreSQL it takes a transaction-scoped advisory lock per key it touches
//! (sorted, so two commits never deadlock) plus a shared lock on the namespace (range
//! deletes take it exclusively), then reads and writes under them.

use std::time::Duration;

use http::StatusCode;
use marina_core::Error;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::key::{self, Key};
use super::watch::{self, Change};
use super::{Namespace, limit_error, new_versionstamp, now_ms};
use crate::store::{BackendKind, Tx};
use crate::value::Value;

/// A versionstamp check.
#[derive(Debug, Clone)]
pub struct Check {
    /// The key.
    pub key: Key,
    /// The versionstamp it must have; `None`: it must not exist.
    pub versionstamp: Option<String>,
}

/// What a mutation does.
#[derive(Debug, Clone)]
pub enum MutationKind {
    /// Write the value.
    Set(Json),
    /// Delete the key (only that key).
    Delete,
    /// Add a number to the current one (absent = 0).
    Sum(Json),
    /// Keep the smaller number (absent = the operand).
    Min(Json),
    /// Keep the larger number (absent = the operand).
    Max(Json),
    /// Append an array's items to the current array (absent = []).
    Append(Json),
    /// Prepend an array's items.
    Prepend(Json),
}

/// One mutation.
#[derive(Debug, Clone)]
pub struct Mutation {
    /// The key.
    pub key: Key,
    /// What to do.
    pub kind: MutationKind,
    /// Expire the written entry after this long (none: never).
    pub expire_in: Option<Duration>,
}

fn bad(code: &'static str, path: &str, message: String) -> Error {
    Error::bad_request(code, format!("{path}: {message}")).with_data(serde_json::json!({ "path": path }))
}

/// `expiresIn` (milliseconds) from JSON.
///
/// # Errors
/// `KV_EXPIRES_INVALID` naming the field.
pub fn expire_in_from_json(v: Option<&Json>, path: &str) -> Result<Option<Duration>, Error> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
            Ok(Some(Duration::from_millis(n.as_u64().unwrap_or(0))))
        }
        Some(other) => Err(bad(
            "KV_EXPIRES_INVALID",
            path,
            format!("expiresIn must be a positive number of milliseconds, found {other}"),
        )),
    }
}

/// Parse Buntime's atomic body `{checks:[{key, versionstamp}], mutations:[{type, key, value?, expiresIn?}]}`.
///
/// # Errors
/// `KV_ATOMIC_INVALID`, `KV_KEY_INVALID`, ... naming the bad field.
pub fn parse_request(body: &Json) -> Result<(Vec<Check>, Vec<Mutation>), Error> {
    let Json::Object(map) = body else {
        return Err(bad(
            "KV_ATOMIC_INVALID",
            "body",
            format!("expected an object with checks and mutations, found {body}"),
        ));
    };
    let list = |name: &str| -> Result<Vec<Json>, Error> {
        match map.get(name) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Array(a)) => Ok(a.clone()),
            Some(other) => Err(bad("KV_ATOMIC_INVALID", name, format!("expected an array, found {other}"))),
        }
    };
    let mut checks = Vec::new();
    for (i, c) in list("checks")?.iter().enumerate() {
        let path = format!("checks[{i}]");
        let key = key::key_from_json(c.get("key").unwrap_or(&Json::Null), &format!("{path}.key"))?;
        let versionstamp = match c.get("versionstamp") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(bad(
                    "KV_ATOMIC_INVALID",
                    &format!("{path}.versionstamp"),
                    format!("expected a string or null, found {other}"),
                ));
            }
        };
        checks.push(Check { key, versionstamp });
    }
    let mut mutations = Vec::new();
    for (i, m) in list("mutations")?.iter().enumerate() {
        let path = format!("mutations[{i}]");
        let key = key::key_from_json(m.get("key").unwrap_or(&Json::Null), &format!("{path}.key"))?;
        let value = || {
            m.get("value")
                .cloned()
                .ok_or_else(|| bad("KV_ATOMIC_INVALID", &format!("{path}.value"), "this mutation needs a value".into()))
        };
        let kind = match m.get("type").and_then(Json::as_str) {
            Some("set") => MutationKind::Set(value()?),
            Some("delete") => MutationKind::Delete,
            Some("sum") => MutationKind::Sum(value()?),
            Some("min") => MutationKind::Min(value()?),
            Some("max") => MutationKind::Max(value()?),
            Some("append") => MutationKind::Append(value()?),
            Some("prepend") => MutationKind::Prepend(value()?),
            _ => {
                return Err(bad(
                    "KV_ATOMIC_INVALID",
                    &format!("{path}.type"),
                    format!(
                        "expected one of set, delete, sum, min, max, append, prepend, found {}",
                        m.get("type").unwrap_or(&Json::Null)
                    ),
                ));
            }
        };
        let expire_in = expire_in_from_json(m.get("expiresIn"), &format!("{path}.expiresIn"))?;
        mutations.push(Mutation { key, kind, expire_in });
    }
    Ok((checks, mutations))
}

/// The two 32-bit halves of a namespace's advisory lock (PostgreSQL's two-key lock space,
/// apart from the per-key locks, which use the one-key space).
pub(crate) fn ns_lock_args(ns: &str) -> [Value; 2] {
    let h = Sha256::digest(ns.as_bytes());
    [Value::Integer(0x6b76), Value::Integer(i64::from(i32::from_be_bytes([h[0], h[1], h[2], h[3]])))]
}

fn key_lock(ns: &str, enc: &[u8]) -> i64 {
    let mut h = Sha256::new();
    h.update(ns.as_bytes());
    h.update([0]);
    h.update(enc);
    let d = h.finalize();
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn array_op(path: &str, append: bool, current: Option<&Json>, operand: &Json) -> Result<Json, Error> {
    let Json::Array(items) = operand else {
        return Err(bad(
            "KV_ATOMIC_INVALID",
            path,
            format!("{} value must be an array, found {operand}", if append { "append" } else { "prepend" }),
        ));
    };
    let mut cur = match current {
        None => Vec::new(),
        Some(Json::Array(a)) => a.clone(),
        Some(other) => {
            return Err(Error::new(
                StatusCode::CONFLICT,
                "KV_TYPE_MISMATCH",
                format!("{path}: append/prepend need the stored value to be an array, found {other}"),
            )
            .with_data(serde_json::json!({ "path": path })));
        }
    };
    if append {
        cur.extend(items.iter().cloned());
        Ok(Json::Array(cur))
    } else {
        let mut out = items.clone();
        out.extend(cur);
        Ok(Json::Array(out))
    }
}

async fn read_live(tx: &mut Tx, ns: &str, enc: &[u8], now: i64) -> Result<Option<(String, String)>, Error> {
    let row = tx
        .query_opt(
            "SELECT value, versionstamp FROM kv_entries WHERE ns = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > $3)",
            &[ns.into(), Value::Blob(enc.to_vec()), Value::Integer(now)],
        )
        .await?;
    row.map(|r| Ok((r.get("value")?, r.get("versionstamp")?))).transpose()
}

/// Write one entry inside `tx` (upsert).
pub(crate) async fn upsert(
    tx: &mut Tx,
    ns: &str,
    enc: Vec<u8>,
    text: String,
    vs: &str,
    expires_at: Option<i64>,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO kv_entries (ns, key, value, versionstamp, expires_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, versionstamp = excluded.versionstamp, expires_at = excluded.expires_at",
        &[ns.into(), Value::Blob(enc), Value::Text(text), vs.into(), Value::from(expires_at)],
    )
    .await?;
    Ok(())
}

impl Namespace {
    /// Commit: when every check holds, apply the mutations under one new versionstamp and
    /// return it; `None` when a check failed (nothing written).
    ///
    /// # Errors
    /// `KV_KEY_*`, `KV_VALUE_TOO_LARGE`, `KV_BATCH_TOO_LARGE`, `KV_ATOMIC_INVALID` (a bad
    /// operand), `KV_TYPE_MISMATCH` (sum on a string, ...), `KV_OVERFLOW`; nothing is written.
    pub async fn atomic(&self, checks: Vec<Check>, mutations: Vec<Mutation>) -> Result<Option<String>, Error> {
        let n = checks.len() + mutations.len();
        let max = self.limits().max_batch;
        if n > max {
            return Err(limit_error(
                StatusCode::BAD_REQUEST,
                "KV_BATCH_TOO_LARGE",
                "maxBatchSize",
                format!("the commit has {n} checks and mutations; the limit (maxBatchSize) is {max}"),
            ));
        }
        for (i, c) in checks.iter().enumerate() {
            self.check_key(&c.key, &format!("checks[{i}].key"), false)?;
        }
        for (i, m) in mutations.iter().enumerate() {
            self.check_key(&m.key, &format!("mutations[{i}].key"), false)?;
            if let MutationKind::Set(v) = &m.kind {
                self.value_text(v, &format!("mutations[{i}].value"))?;
            }
        }
        let pg = self.store().kind() == BackendKind::Postgres;
        let ns = self.name().to_string();
        let vs = new_versionstamp();
        let now = now_ms();
        let mut locks: Vec<i64> = checks
            .iter()
            .map(|c| key_lock(&ns, &key::encode(&c.key)))
            .chain(mutations.iter().map(|m| key_lock(&ns, &key::encode(&m.key))))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        let result = self
            .store()
            .transaction(async |tx| {
                if pg {
                    tx.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", &ns_lock_args(&ns)).await?;
                    for l in &locks {
                        tx.execute("SELECT pg_advisory_xact_lock($1)", &[Value::Integer(*l)]).await?;
                    }
                }
                for c in &checks {
                    let found = read_live(tx, &ns, &key::encode(&c.key), now).await?.map(|(_, v)| v);
                    if found != c.versionstamp {
                        return Ok(None);
                    }
                }
                let mut touched = Vec::with_capacity(mutations.len());
                for (i, m) in mutations.iter().enumerate() {
                    let path = format!("mutations[{i}].value");
                    let enc = key::encode(&m.key);
                    let expires_at = m.expire_in.map(|d| super::after_ms(now, d.as_millis()));
                    let new_value = match &m.kind {
                        MutationKind::Delete => {
                            tx.execute(
                                "DELETE FROM kv_entries WHERE ns = $1 AND key = $2",
                                &[ns.as_str().into(), Value::Blob(enc.clone())],
                            )
                            .await?;
                            None
                        }
                        MutationKind::Set(v) => Some(v.clone()),
                        kind => {
                            let current = read_live(tx, &ns, &enc, now).await?;
                            let current: Option<Json> =
                                current.map(|(t, _)| serde_json::from_str(&t).unwrap_or(Json::Null));
                            Some(match kind {
                                MutationKind::Sum(o) => super::numeric::apply(&path, "sum", current.as_ref(), o)?,
                                MutationKind::Min(o) => super::numeric::apply(&path, "min", current.as_ref(), o)?,
                                MutationKind::Max(o) => super::numeric::apply(&path, "max", current.as_ref(), o)?,
                                MutationKind::Append(o) => array_op(&path, true, current.as_ref(), o)?,
                                MutationKind::Prepend(o) => array_op(&path, false, current.as_ref(), o)?,
                                MutationKind::Set(_) | MutationKind::Delete => unreachable!("handled above"),
                            })
                        }
                    };
                    if let Some(v) = new_value {
                        let text = self.value_text(&v, &path)?;
                        upsert(tx, &ns, enc.clone(), text, &vs, expires_at).await?;
                    }
                    touched.push(enc);
                }
                if pg && !touched.is_empty() {
                    watch::notify_in(tx, &Change::keys(&ns, touched.clone())).await?;
                }
                Ok(Some(touched))
            })
            .await?;
        match result {
            None => Ok(None),
            Some(touched) => {
                if !pg && !touched.is_empty() {
                    let _ = self.changes().send(Change::keys(&ns, touched));
                }
                Ok(Some(vs))
            }
        }
    }
}
