//! Single-key and batch reads, and deletes (with descendants unless exact).

use marina_core::Error;
use serde_json::Value as Json;

use std::time::Duration;

use super::atomic;
use super::key::{self, Key, KeyPart};
use super::watch::{self, Change};
use super::{Entry, Filter, LIVE, Mutation, MutationKind, Namespace, entry_of, now_ms};
use crate::store::BackendKind;
use crate::value::Value;

impl Namespace {
    /// One entry, unless absent or expired.
    ///
    /// # Errors
    /// `KV_KEY_*` for a bad key; store errors.
    pub async fn get(&self, key: &[KeyPart]) -> Result<Option<Entry>, Error> {
        self.check_key(key, "key", false)?;
        let rows = self
            .store()
            .query(
                &format!("SELECT key, value, versionstamp FROM kv_entries WHERE ns = $1 AND key = $3 AND {LIVE}"),
                &[self.ns.as_ref().into(), Value::Integer(now_ms()), Value::Blob(key::encode(key))],
            )
            .await?;
        rows.first().map(entry_of).transpose()
    }

    /// Several entries at once, in the order asked (`None` for absent ones).
    ///
    /// # Errors
    /// As [`Namespace::get`], plus `KV_BATCH_TOO_LARGE`.
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>, Error> {
        self.check_batch(keys.len(), "keys")?;
        for (i, k) in keys.iter().enumerate() {
            self.check_key(k, &format!("keys[{i}]"), false)?;
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Write one entry (expiring after `expire_in` when given); its new versionstamp.
    ///
    /// # Errors
    /// `KV_KEY_*`, `KV_VALUE_TOO_LARGE`; store errors.
    pub async fn set(&self, key: Key, value: Json, expire_in: Option<Duration>) -> Result<String, Error> {
        let m = Mutation { key, kind: MutationKind::Set(value), expire_in };
        Ok(self.atomic(Vec::new(), vec![m]).await?.expect("a commit without checks always applies"))
    }

    /// Delete `key` and, unless `exact`, all its descendants; with `filter`, only entries whose
    /// value passes. How many live entries were deleted.
    ///
    /// # Errors
    /// `KV_KEY_*`; store errors.
    pub async fn delete(&self, key: &[KeyPart], exact: bool, filter: Option<&Filter>) -> Result<u64, Error> {
        self.check_key(key, "key", false)?;
        self.delete_in(std::slice::from_ref(&key.to_vec()), exact, filter).await
    }

    /// [`Namespace::delete`] for several keys in one transaction.
    ///
    /// # Errors
    /// As [`Namespace::delete`], plus `KV_BATCH_TOO_LARGE`.
    pub async fn delete_many(&self, keys: &[Key], exact: bool, filter: Option<&Filter>) -> Result<u64, Error> {
        self.check_batch(keys.len(), "keys")?;
        for (i, k) in keys.iter().enumerate() {
            self.check_key(k, &format!("keys[{i}]"), false)?;
        }
        self.delete_in(keys, exact, filter).await
    }

    async fn delete_in(&self, keys: &[Key], exact: bool, filter: Option<&Filter>) -> Result<u64, Error> {
        let now = now_ms();
        let ns = self.ns.clone();
        let pg = self.store().kind() == BackendKind::Postgres;
        let (count, deleted) = self
            .store()
            .transaction(async |tx| {
                if pg {
                    // Exclusive on the namespace: no atomic commit interleaves with a range delete.
                    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &atomic::ns_lock_args(&ns)).await?;
                }
                let mut deleted = Vec::new();
                let mut count = 0u64;
                for k in keys {
                    let enc = key::encode(k);
                    let (lo, hi) = key::descendants(k);
                    let (cond, params) = if exact {
                        ("key = $2", vec![ns.as_ref().into(), Value::Blob(enc)])
                    } else {
                        (
                            "(key = $2 OR (key >= $3 AND key < $4))",
                            vec![ns.as_ref().into(), Value::Blob(enc), Value::Blob(lo), Value::Blob(hi)],
                        )
                    };
                    let rows = match filter {
                        None => {
                            tx.query(
                                &format!("DELETE FROM kv_entries WHERE ns = $1 AND {cond} RETURNING key, expires_at"),
                                &params,
                            )
                            .await?
                        }
                        Some(f) => {
                            let candidates = tx
                                .query(
                                    &format!("SELECT key, value, expires_at FROM kv_entries WHERE ns = $1 AND {cond}"),
                                    &params,
                                )
                                .await?;
                            let mut gone = Vec::new();
                            for r in candidates {
                                let text: String = r.get("value")?;
                                let v: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
                                if f.matches(&v) {
                                    let raw: Vec<u8> = r.get("key")?;
                                    tx.execute(
                                        "DELETE FROM kv_entries WHERE ns = $1 AND key = $2",
                                        &[ns.as_ref().into(), Value::Blob(raw)],
                                    )
                                    .await?;
                                    gone.push(r);
                                }
                            }
                            gone
                        }
                    };
                    for r in rows {
                        let exp: Option<i64> = r.get("expires_at")?;
                        if exp.is_none_or(|e| e > now) {
                            count += 1;
                        }
                        deleted.push(r.get::<Vec<u8>>("key")?);
                    }
                }
                if pg && !deleted.is_empty() {
                    watch::notify_in(tx, &Change::keys(&ns, deleted.clone())).await?;
                }
                Ok((count, deleted))
            })
            .await?;
        if !pg && !deleted.is_empty() {
            let _ = self.changes().send(Change::keys(&self.ns, deleted));
        }
        Ok(count)
    }
}
