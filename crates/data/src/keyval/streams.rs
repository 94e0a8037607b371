//! Watches (SSE), queues and the DLQ.

use std::collections::HashMap;

use http::{Method, Response, StatusCode};
use marina_core::{Body, Error};
use marina_store::kv::Namespace;
use marina_store::kv::queue::{self, Nacked};
use marina_store::kv::watch::{PrefixWatcher, WatchEvent, Watcher};
use serde_json::{Value as Json, json};

use super::path_key;
use crate::web;

/// What both watches share: the next batch of changes, waiting on change notification.
trait Changes: Send + 'static {
    fn next_batch(&mut self) -> impl std::future::Future<Output = Result<Vec<WatchEvent>, Error>> + Send;
}

impl Changes for Watcher {
    fn next_batch(&mut self) -> impl std::future::Future<Output = Result<Vec<WatchEvent>, Error>> + Send {
        self.next()
    }
}

impl Changes for PrefixWatcher {
    fn next_batch(&mut self) -> impl std::future::Future<Output = Result<Vec<WatchEvent>, Error>> + Send {
        self.next()
    }
}

/// An SSE stream of `change` events from a watcher (an `error` event ends it); it stops as
/// soon as the client leaves.
fn change_stream(mut w: impl Changes) -> Response<Body> {
    web::sse(move |tx| async move {
        loop {
            tokio::select! {
                r = w.next_batch() => match r {
                    Ok(events) => {
                        let data = Json::Array(events.iter().map(|e| e.to_json()).collect());
                        if tx.send(("change".into(), data)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(("error".into(), json!({ "code": e.code(), "message": e.message() }))).await;
                        return;
                    }
                },
                () = tx.closed() => return,
            }
        }
    })
}

fn initial(q: &HashMap<String, String>) -> bool {
    q.get("initial").is_none_or(|v| v != "false")
}

pub(super) async fn watch(ns: Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    let keys = super::poll::keys_query(q)?;
    Ok(change_stream(ns.watch(keys, initial(q)).await?))
}

pub(super) async fn watch_prefix(ns: Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    // Required, as in Buntime: a missing prefix is a client's mistake, not a watch of everything.
    let prefix = q.get("prefix").filter(|p| !p.is_empty()).map(|p| path_key(p)).ok_or_else(|| {
        Error::bad_request("QUERY_INVALID", "prefix: this query parameter is required")
            .with_data(json!({ "path": "prefix" }))
    })?;
    let limit = web::query_num(q, "limit")?;
    Ok(change_stream(ns.watch_prefix(prefix, limit, initial(q)).await?))
}

/// Deliver messages as `message` events. A message is taken from the queue only while the
/// client is connected: the wait for the next one is abandoned as soon as it leaves, so no
/// message vanishes into "processing" after a disconnect (unlike Buntime).
pub(super) fn listen(ns: Namespace) -> Response<Body> {
    web::sse(move |tx| async move {
        loop {
            let m = tokio::select! {
                m = ns.next_message() => m,
                () = tx.closed() => return,
            };
            match m {
                Ok(m) => {
                    let id = m.id.clone();
                    if tx.send(("message".into(), m.to_json())).await.is_err() {
                        // Not delivered: make it available again at once.
                        let _ = ns.nack(&id).await;
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(("error".into(), json!({ "code": e.code(), "message": e.message() }))).await;
                    return;
                }
            }
        }
    })
}

pub(super) async fn enqueue(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let value = b.get("value").cloned().ok_or_else(|| {
        Error::bad_request("KV_QUEUE_INVALID", "value: the message needs a value").with_data(json!({ "path": "value" }))
    })?;
    let opts = queue::options_from_json(b.get("options"))?;
    let id = ns.enqueue(&value, &opts).await?;
    Ok(web::ok(&json!({ "ok": true, "id": id })))
}

fn id_of(b: &Json) -> Result<String, Error> {
    b.get("id").and_then(Json::as_str).filter(|id| !id.is_empty()).map(str::to_string).ok_or_else(|| {
        Error::bad_request("KV_QUEUE_INVALID", "id must be a non-empty string (the message id)")
            .with_data(json!({ "path": "id" }))
    })
}

pub(super) async fn ack(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let id = id_of(&web::json_required(body).await?)?;
    ns.ack(&id).await?;
    Ok(web::ok(&json!({ "ok": true })))
}

pub(super) async fn nack(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let id = id_of(&web::json_required(body).await?)?;
    Ok(web::ok(&match ns.nack(&id).await? {
        Nacked::Retry(ms) => json!({ "ok": true, "retryInMs": ms }),
        Nacked::DeadLettered => json!({ "ok": true, "deadLettered": true }),
    }))
}

pub(super) async fn stats(ns: &Namespace) -> Result<Response<Body>, Error> {
    let s = ns.queue_stats().await?;
    // `total` as Buntime (and `/metrics`' `queue`) counts it: the messages still in the queue.
    Ok(web::ok(
        &json!({ "pending": s.pending, "processing": s.processing, "dlq": s.dlq, "total": s.pending + s.processing }),
    ))
}

pub(super) async fn dlq(
    ns: &Namespace,
    method: &Method,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Result<Response<Body>, Error> {
    match (method, rest) {
        (&Method::GET, []) => {
            let items = ns
                .dlq_list(web::query_num(q, "limit")?.unwrap_or(100), web::query_num(q, "offset")?.unwrap_or(0))
                .await?;
            Ok(web::ok(&Json::Array(items.iter().map(|d| d.to_json()).collect())))
        }
        (&Method::DELETE, []) => Ok(web::ok(&json!({ "ok": true, "deletedCount": ns.dlq_purge().await? }))),
        (&Method::GET, [id]) => Ok(web::ok(&ns.dlq_get(id).await?.to_json())),
        // Deleting a dead letter that is not there is a no-op, as in Buntime.
        (&Method::DELETE, [id]) => match ns.dlq_delete(id).await {
            Ok(()) => Ok(web::ok(&json!({ "ok": true }))),
            Err(e) if e.status() == StatusCode::NOT_FOUND => Ok(web::ok(&json!({ "ok": true }))),
            Err(e) => Err(e),
        },
        (&Method::POST, [id, "requeue"]) => Ok(web::ok(&json!({ "ok": true, "id": ns.dlq_requeue(id).await? }))),
        // The routes exist under other methods: 405 with `Allow`, as for every other keyval route.
        (_, [] | [_]) => Err(web::method_not_allowed(method, &dlq_path(rest), &["GET", "DELETE"])),
        (_, [_, "requeue"]) => Err(web::method_not_allowed(method, &dlq_path(rest), &["POST"])),
        _ => Err(Error::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no keyval route {method} /keyval/api/queue/dlq/{}", rest.join("/")),
        )),
    }
}

fn dlq_path(rest: &[&str]) -> String {
    if rest.is_empty() { "/keyval/api/queue/dlq".into() } else { format!("/keyval/api/queue/dlq/{}", rest.join("/")) }
}
