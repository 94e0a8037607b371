//! The dead-letter queue: messages whose every delivery attempt failed, kept per namespace
//! until they are requeued or deleted.

use marina_core::Error;
use serde_json::Value as Json;

use super::Namespace;
use super::key;
use super::queue::{EnqueueOptions, not_found};
use super::watch::{self, Change};
use super::{new_versionstamp, now_ms};
use crate::store::{BackendKind, Tx};
use crate::value::{Row, Value};

/// A message in the DLQ.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its id (the message's).
    pub id: String,
    /// Its value.
    pub value: Json,
    /// How many attempts were made.
    pub attempts: i64,
    /// When it was enqueued / moved (epoch ms).
    pub created_at: i64,
    /// When it was dead-lettered (epoch ms).
    pub failed_at: i64,
}

impl DeadLetter {
    /// `{id, value, attempts, createdAt, failedAt}`.
    pub fn to_json(&self) -> Json {
        serde_json::json!({ "id": self.id, "value": self.value, "attempts": self.attempts, "createdAt": self.created_at, "failedAt": self.failed_at })
    }
}

impl Namespace {
    /// Move a message from the queue to the DLQ inside `tx`, writing its value to its
    /// `keysIfUndelivered`.
    pub(super) async fn dead_letter(
        &self,
        tx: &mut Tx,
        id: &str,
        value: &Json,
        attempts: i64,
        keys: &[Json],
        created: i64,
    ) -> Result<(), Error> {
        let now = now_ms();
        tx.execute(
            "INSERT INTO kv_dlq (id, ns, value, attempts, created_at, failed_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                id.into(),
                self.name().into(),
                Value::Text(value.to_string()),
                Value::Integer(attempts),
                Value::Integer(created),
                Value::Integer(now),
            ],
        )
        .await?;
        tx.execute("DELETE FROM kv_queue WHERE id = $1", &[id.into()]).await?;
        if !keys.is_empty() {
            let vs = new_versionstamp();
            let mut touched = Vec::new();
            for k in keys {
                let k = key::key_from_json(k, "keysIfUndelivered")?;
                let enc = key::encode(&k);
                super::atomic::upsert(tx, self.name(), enc.clone(), value.to_string(), &vs, None).await?;
                touched.push(enc);
            }
            if self.store().kind() == BackendKind::Postgres {
                watch::notify_in(tx, &Change::keys(self.name(), touched)).await?;
            }
        }
        Ok(())
    }

    /// A page of the DLQ, oldest failure first.
    ///
    /// # Errors
    /// Store errors.
    pub async fn dlq_list(&self, limit: usize, offset: usize) -> Result<Vec<DeadLetter>, Error> {
        let rows = self
            .store()
            .query(
                "SELECT id, value, attempts, created_at, failed_at FROM kv_dlq WHERE ns = $1 ORDER BY failed_at, id LIMIT $2 OFFSET $3",
                &[self.name().into(), Value::Integer(limit.min(1000) as i64), Value::Integer(offset as i64)],
            )
            .await?;
        rows.iter().map(dead_of).collect()
    }

    /// One DLQ message.
    ///
    /// # Errors
    /// `KV_MESSAGE_NOT_FOUND`; store errors.
    pub async fn dlq_get(&self, id: &str) -> Result<DeadLetter, Error> {
        let row = self
            .store()
            .query_opt(
                "SELECT id, value, attempts, created_at, failed_at FROM kv_dlq WHERE ns = $1 AND id = $2",
                &[self.name().into(), id.into()],
            )
            .await?
            .ok_or_else(|| not_found(id))?;
        dead_of(&row)
    }

    /// Delete one DLQ message.
    ///
    /// # Errors
    /// `KV_MESSAGE_NOT_FOUND`; store errors.
    pub async fn dlq_delete(&self, id: &str) -> Result<(), Error> {
        let n = self
            .store()
            .execute("DELETE FROM kv_dlq WHERE ns = $1 AND id = $2", &[self.name().into(), id.into()])
            .await?;
        if n == 0 { Err(not_found(id)) } else { Ok(()) }
    }

    /// Empty the DLQ; how many were deleted.
    ///
    /// # Errors
    /// Store errors.
    pub async fn dlq_purge(&self) -> Result<u64, Error> {
        self.store().execute("DELETE FROM kv_dlq WHERE ns = $1", &[self.name().into()]).await
    }

    /// Move a DLQ message back to the queue (fresh attempts, default backoff); its new id.
    ///
    /// # Errors
    /// `KV_MESSAGE_NOT_FOUND`; store errors.
    pub async fn dlq_requeue(&self, id: &str) -> Result<String, Error> {
        let d = self.dlq_get(id).await?;
        let new_id = self.enqueue(&d.value, &EnqueueOptions::default()).await?;
        self.dlq_delete(id).await?;
        Ok(new_id)
    }
}

fn dead_of(r: &Row) -> Result<DeadLetter, Error> {
    let text: String = r.get("value")?;
    Ok(DeadLetter {
        id: r.get("id")?,
        value: serde_json::from_str(&text).unwrap_or(Json::Null),
        attempts: r.get("attempts")?,
        created_at: r.get("created_at")?,
        failed_at: r.get("failed_at")?,
    })
}
