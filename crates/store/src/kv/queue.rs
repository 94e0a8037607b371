//! Queues: at-least-once delivery with delay, retries on a backoff schedule, ack/nack, and a
//! dead-letter queue (DLQ).
//!
//! A dequeued message is locked for [`KvLimits::queue_lock`](super::KvLimits); `ack` deletes
//! it, `nack` schedules the next attempt after the next backoff delay. A consumer that dies
//! without either lets the lock lapse, which counts as a failed attempt. After
//! `backoff.len() + 1` attempts the message moves to the DLQ and its value is written to each
//! of its `keysIfUndelivered`. Consumers wait on the change broadcast (an enqueue wakes them)
//! and on a timer for the next delayed message — never by polling.

use std::time::Duration;

use http::StatusCode;
use marina_core::Error;
use serde_json::Value as Json;

use super::key::{self, Key};
use super::watch::{self, Change};
use super::{Namespace, new_versionstamp, now_ms};
use crate::store::BackendKind;
use crate::value::{Row, Value};

/// Buntime's default backoff schedule (ms).
pub const DEFAULT_BACKOFF: [u64; 3] = [1000, 5000, 10000];
/// At most this long between a consumer's checks of the queue when nothing wakes it (a
/// safety net for a lost notification, not the delivery mechanism).
const MAX_IDLE: Duration = Duration::from_secs(30);

/// Options of an enqueue.
#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    /// Deliver no earlier than this.
    pub delay: Duration,
    /// Delays (ms) before each retry; `len + 1` attempts in all.
    pub backoff: Vec<u64>,
    /// Where to write the value when every attempt failed.
    pub keys_if_undelivered: Vec<Key>,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        Self { delay: Duration::ZERO, backoff: DEFAULT_BACKOFF.to_vec(), keys_if_undelivered: Vec::new() }
    }
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its id (for ack/nack).
    pub id: String,
    /// Its value.
    pub value: Json,
    /// Which attempt this delivery is (1 = first).
    pub attempts: i64,
}

impl Message {
    /// `{id, value, attempts}`.
    pub fn to_json(&self) -> Json {
        serde_json::json!({ "id": self.id, "value": self.value, "attempts": self.attempts })
    }
}

/// What a nack did.
#[derive(Debug, Clone, PartialEq)]
pub enum Nacked {
    /// Redelivered after this many ms.
    Retry(u64),
    /// Every attempt failed: moved to the DLQ.
    DeadLettered,
}

/// Counts of a namespace's queue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueStats {
    /// Waiting (ready or delayed).
    pub pending: i64,
    /// Delivered and not yet acked (locked).
    pub processing: i64,
    /// In the DLQ.
    pub dlq: i64,
}

fn bad(path: &str, message: String) -> Error {
    Error::bad_request("KV_QUEUE_INVALID", format!("{path}: {message}")).with_data(serde_json::json!({ "path": path }))
}

/// Buntime's enqueue options `{delay, backoffSchedule, keysIfUndelivered}` from JSON.
///
/// # Errors
/// `KV_QUEUE_INVALID` / `KV_KEY_INVALID` naming the field.
pub fn options_from_json(v: Option<&Json>) -> Result<EnqueueOptions, Error> {
    let mut o = EnqueueOptions::default();
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(o) };
    let Json::Object(m) = v else { return Err(bad("options", format!("expected an object, found {v}"))) };
    match m.get("delay") {
        None | Some(Json::Null) => {}
        Some(Json::Number(n)) if n.as_u64().is_some() => o.delay = Duration::from_millis(n.as_u64().unwrap_or(0)),
        Some(other) => return Err(bad("options.delay", format!("expected milliseconds (>= 0), found {other}"))),
    }
    match m.get("backoffSchedule") {
        None | Some(Json::Null) => {}
        Some(Json::Array(a)) => {
            o.backoff = a
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    d.as_u64().ok_or_else(|| {
                        bad(&format!("options.backoffSchedule[{i}]"), format!("expected milliseconds, found {d}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            if o.backoff.len() > 100 {
                return Err(bad("options.backoffSchedule", "at most 100 retries".into()));
            }
        }
        Some(other) => {
            return Err(bad("options.backoffSchedule", format!("expected an array of milliseconds, found {other}")));
        }
    }
    match m.get("keysIfUndelivered") {
        None | Some(Json::Null) => {}
        Some(Json::Array(a)) => {
            o.keys_if_undelivered = a
                .iter()
                .enumerate()
                .map(|(i, k)| key::key_from_json(k, &format!("options.keysIfUndelivered[{i}]")))
                .collect::<Result<_, _>>()?;
        }
        Some(other) => {
            return Err(bad("options.keysIfUndelivered", format!("expected an array of keys, found {other}")));
        }
    }
    Ok(o)
}

/// A queue row as read for delivery.
struct Stored {
    id: String,
    value: Json,
    attempts: i64,
    backoff: Vec<u64>,
    keys: Vec<Json>,
    created: i64,
}

fn message_of(r: &Row) -> Result<Stored, Error> {
    let parse = |t: String| serde_json::from_str::<Json>(&t).unwrap_or(Json::Null);
    let backoff = parse(r.get("backoff")?);
    let keys = parse(r.get("keys_if_undelivered")?);
    Ok(Stored {
        id: r.get("id")?,
        value: parse(r.get("value")?),
        attempts: r.get("attempts")?,
        backoff: backoff.as_array().map(|a| a.iter().filter_map(Json::as_u64).collect()).unwrap_or_default(),
        keys: keys.as_array().cloned().unwrap_or_default(),
        created: r.get("created_at")?,
    })
}

pub(super) fn not_found(id: &str) -> Error {
    Error::new(
        StatusCode::NOT_FOUND,
        "KV_MESSAGE_NOT_FOUND",
        format!("no queue message '{id}' (already acked, or its lock lapsed)"),
    )
}

impl Namespace {
    /// Enqueue a value; its message id.
    ///
    /// # Errors
    /// `KV_VALUE_TOO_LARGE`, `KV_KEY_*` for a bad `keys_if_undelivered`; store errors.
    pub async fn enqueue(&self, value: &Json, opts: &EnqueueOptions) -> Result<String, Error> {
        let text = self.value_text(value, "value")?;
        for (i, k) in opts.keys_if_undelivered.iter().enumerate() {
            self.check_key(k, &format!("options.keysIfUndelivered[{i}]"), false)?;
        }
        let id = new_versionstamp();
        let now = now_ms();
        let keys: Vec<Json> = opts.keys_if_undelivered.iter().map(|k| key::key_to_json(k)).collect();
        self.store()
            .execute(
                "INSERT INTO kv_queue (id, ns, value, ready_at, attempts, backoff, keys_if_undelivered, locked_until, created_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, $6, NULL, $7)",
                &[
                    id.as_str().into(),
                    self.name().into(),
                    Value::Text(text),
                    Value::Integer(super::after_ms(now, opts.delay.as_millis())),
                    Value::Text(Json::from(opts.backoff.clone()).to_string()),
                    Value::Text(Json::Array(keys).to_string()),
                    Value::Integer(now),
                ],
            )
            .await?;
        watch::publish(self.store(), self.changes(), Change::Queue(self.name().into())).await?;
        Ok(id)
    }

    /// Take the next ready message, if any, and lock it.
    ///
    /// # Errors
    /// Store errors.
    pub async fn dequeue(&self) -> Result<Option<Message>, Error> {
        let pg = self.store().kind() == BackendKind::Postgres;
        let lock = self.limits().queue_lock.as_millis() as i64;
        let ns = self.name().to_string();
        let (msg, dead) = self
            .store()
            .transaction(async |tx| {
                let mut dead = false;
                loop {
                    let now = now_ms();
                    let sql = format!(
                        "SELECT id, value, attempts, backoff, keys_if_undelivered, created_at FROM kv_queue \
                         WHERE ns = $1 AND ready_at <= $2 AND (locked_until IS NULL OR locked_until <= $2) \
                         ORDER BY ready_at, id LIMIT 1{}",
                        if pg { " FOR UPDATE SKIP LOCKED" } else { "" }
                    );
                    let Some(row) = tx.query_opt(&sql, &[ns.as_str().into(), Value::Integer(now)]).await? else {
                        return Ok((None, dead));
                    };
                    let Stored { id, value, attempts, backoff, keys, created } = message_of(&row)?;
                    if attempts > backoff.len() as i64 {
                        // Its last delivery's lock lapsed without an ack: out of attempts.
                        self.dead_letter(tx, &id, &value, attempts, &keys, created).await?;
                        dead = true;
                        continue;
                    }
                    tx.execute(
                        "UPDATE kv_queue SET attempts = attempts + 1, locked_until = $2 WHERE id = $1",
                        &[id.as_str().into(), Value::Integer(now + lock)],
                    )
                    .await?;
                    return Ok((Some(Message { id, value, attempts: attempts + 1 }), dead));
                }
            })
            .await?;
        if dead && !pg {
            // Keys written by a dead-letter: the broadcast for SQLite (PostgreSQL notified in the tx).
            let _ = self.changes().send(Change::Namespace(self.name().into()));
        }
        Ok(msg)
    }

    /// Acknowledge a delivered message (it is deleted).
    ///
    /// # Errors
    /// `KV_MESSAGE_NOT_FOUND` (404); store errors.
    pub async fn ack(&self, id: &str) -> Result<(), Error> {
        let n = self
            .store()
            .execute(
                "DELETE FROM kv_queue WHERE ns = $1 AND id = $2 AND locked_until IS NOT NULL",
                &[self.name().into(), id.into()],
            )
            .await?;
        if n == 0 { Err(not_found(id)) } else { Ok(()) }
    }

    /// Report a failed delivery: retry after the next backoff delay, or dead-letter it.
    ///
    /// # Errors
    /// `KV_MESSAGE_NOT_FOUND` (404); store errors.
    pub async fn nack(&self, id: &str) -> Result<Nacked, Error> {
        let ns = self.name().to_string();
        let pg = self.store().kind() == BackendKind::Postgres;
        let out = self
            .store()
            .transaction(async |tx| {
                let row = tx
                    .query_opt(
                        &format!(
                            "SELECT id, value, attempts, backoff, keys_if_undelivered, created_at FROM kv_queue WHERE ns = $1 AND id = $2 AND locked_until IS NOT NULL{}",
                            if pg { " FOR UPDATE" } else { "" }
                        ),
                        &[ns.as_str().into(), id.into()],
                    )
                    .await?
                    .ok_or_else(|| not_found(id))?;
                let Stored { id, value, attempts, backoff, keys, created } = message_of(&row)?;
                match backoff.get((attempts - 1).max(0) as usize) {
                    Some(&delay) => {
                        tx.execute("UPDATE kv_queue SET locked_until = NULL, ready_at = $2 WHERE id = $1", &[
                            id.as_str().into(),
                            Value::Integer(super::after_ms(now_ms(), u128::from(delay))),
                        ])
                        .await?;
                        Ok(Nacked::Retry(delay))
                    }
                    None => {
                        self.dead_letter(tx, &id, &value, attempts, &keys, created).await?;
                        Ok(Nacked::DeadLettered)
                    }
                }
            })
            .await?;
        match &out {
            Nacked::Retry(_) => watch::publish(self.store(), self.changes(), Change::Queue(self.name().into())).await?,
            Nacked::DeadLettered if !pg => {
                let _ = self.changes().send(Change::Namespace(self.name().into()));
            }
            Nacked::DeadLettered => {}
        }
        Ok(out)
    }

    /// Wait for the next message and take it. Woken by enqueues (the change broadcast) and by
    /// a timer for the earliest delayed message or lapsing lock.
    ///
    /// # Errors
    /// Store errors; `KV_CLOSED` when the engine is dropped.
    pub async fn next_message(&self) -> Result<Message, Error> {
        let mut rx = self.changes().subscribe();
        loop {
            if let Some(m) = self.dequeue().await? {
                return Ok(m);
            }
            let row = self
                .store()
                .query_opt(
                    "SELECT MIN(CASE WHEN locked_until IS NOT NULL AND locked_until > ready_at THEN locked_until ELSE ready_at END) AS at FROM kv_queue WHERE ns = $1",
                    &[self.name().into()],
                )
                .await?;
            let at: Option<i64> = row.map(|r| r.get("at")).transpose()?.flatten();
            let sleep = at.map_or(MAX_IDLE, |at| {
                Duration::from_millis((at - now_ms()).clamp(1, MAX_IDLE.as_millis() as i64) as u64)
            });
            let ns = self.name().to_string();
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                r = async {
                    loop {
                        match rx.recv().await {
                            Ok(Change::Queue(n)) if *n == *ns => return Ok(()),
                            Ok(Change::All) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                return Err(Error::unavailable("KV_CLOSED", "the key-value store is shutting down"));
                            }
                        }
                    }
                } => r?,
            }
        }
    }

    /// Counts of this namespace's queue and DLQ.
    ///
    /// # Errors
    /// Store errors.
    pub async fn queue_stats(&self) -> Result<QueueStats, Error> {
        let now = now_ms();
        let r = self
            .store()
            .query_opt(
                "SELECT COUNT(*) AS total, COALESCE(SUM(CASE WHEN locked_until IS NOT NULL AND locked_until > $2 THEN 1 ELSE 0 END), 0) AS busy FROM kv_queue WHERE ns = $1",
                &[self.name().into(), Value::Integer(now)],
            )
            .await?;
        let (total, busy): (i64, i64) = match r {
            Some(r) => (r.get("total")?, r.get("busy")?),
            None => (0, 0),
        };
        let dlq = self
            .store()
            .query_opt("SELECT COUNT(*) AS n FROM kv_dlq WHERE ns = $1", &[self.name().into()])
            .await?
            .map(|r| r.get::<i64>("n"))
            .transpose()?
            .unwrap_or(0);
        Ok(QueueStats { pending: total - busy, processing: busy, dlq })
    }
}
