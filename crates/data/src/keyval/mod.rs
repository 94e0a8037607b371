//! The keyval plugin at `/keyval/api`: Buntime's HTTP surface (buntime.md §6.4) over the
//! key-value engine (`marina_store::kv`).
//!
//! Each app's workers reach their own namespace (`app:{name}`) with their worker token; admin
//! keys choose a namespace with `?namespace=` or the `x-keyval-namespace` header (default
//! `default`). Watches and queue listeners are server-sent events driven by the engine's
//! change notification, never by polling, and they stop when the client leaves.
//!
//! `/watch/poll` and `/watch/prefix/poll` answer once with what changed since the
//! versionstamps the client sends (Buntime's shapes); `/metrics` counts this instance's
//! operations per namespace ([`metrics`]).
//!
//! `/indexes` and `/search` search the text of indexed fields by scanning the prefix
//! (`marina_store::kv::search`: bounded, unranked).

mod keys;
pub mod limits;
mod metrics;
mod poll;
mod search;
mod streams;

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use marina_core::{Body, Error};
use marina_store::kv::Kv;
use marina_store::kv::key::{self, Key};
use serde_json::Value as Json;

use crate::access::{Access, Caller};
use crate::web;

/// The plugin's base path.
pub const BASE: &str = "/keyval";

/// The keyval plugin.
#[derive(Clone)]
pub struct Keyval {
    kv: Kv,
    access: Access,
    metrics: Arc<metrics::Metrics>,
}

/// The namespace of app `name`.
pub fn app_namespace(name: &str) -> String {
    format!("app:{name}")
}

impl Keyval {
    /// The plugin over an engine.
    pub fn new(kv: Kv, access: Access) -> Self {
        Self { kv, access, metrics: Arc::default() }
    }

    /// Serve a request whose path is under `/keyval/api`; `rest` is the path after it.
    ///
    /// # Errors
    /// Every failure as a `marina_core::Error` (rendered at the server's edge).
    pub async fn handle(&self, req: Request<Body>, rest: &str) -> Result<Response<Body>, Error> {
        // Parts, not the request: the body is not `Sync`, so a borrow of the request held
        // across an await would make this future `!Send`.
        let (parts, body) = req.into_parts();
        let caller = self.access.caller(&parts.headers).await?;
        let q = web::query(parts.uri.query());
        let ns_name = match &caller {
            Caller::App(app) => app_namespace(app),
            Caller::Admin => q
                .get("namespace")
                .cloned()
                .or_else(|| parts.headers.get("x-keyval-namespace").and_then(|v| v.to_str().ok()).map(str::to_string))
                .unwrap_or_else(|| "default".into()),
        };
        let ns = self.kv.ns(&ns_name);
        let segs: Vec<String> = rest.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(web::decode).collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        // HEAD is GET without the body (hyper drops it), except where GET changes something.
        let method = match parts.method {
            Method::HEAD if matches!(segs.as_slice(), ["queue", "poll" | "listen"]) => {
                return Err(web::method_not_allowed(&parts.method, parts.uri.path(), &["GET"]));
            }
            Method::HEAD => Method::GET,
            ref m => m.clone(),
        };
        let op = metrics::op_name(&method, &segs);
        let started = Instant::now();
        let result = self.route(&ns, &method, &segs, &q, body).await;
        if op != "metrics" {
            self.metrics.record(ns.name(), op, started.elapsed(), result.is_err());
        }
        result
    }

    async fn route(
        &self,
        ns: &marina_store::kv::Namespace,
        method: &Method,
        segs: &[&str],
        q: &std::collections::HashMap<String, String>,
        body: Body,
    ) -> Result<Response<Body>, Error> {
        // Streams own their namespace handle (it outlives the request).
        let ns = ns.clone();
        match (method, segs) {
            (&Method::GET, ["keys"]) => keys::list_get(&ns, q).await,
            (&Method::GET, ["keys", "count"]) => keys::count(&ns, q).await,
            (&Method::GET, ["keys", "paginate"]) => keys::paginate(&ns, q).await,
            (&Method::POST, ["keys", "list"]) => keys::list_post(&ns, body).await,
            (&Method::POST, ["keys", "batch"]) => keys::batch(&ns, body).await,
            (&Method::POST, ["keys", "delete-batch"]) => keys::delete_batch(&ns, body).await,
            (&Method::GET, ["keys", path @ ..]) => keys::get(&ns, path).await,
            (&Method::PUT, ["keys", path @ ..]) => keys::set(&ns, path, q, body).await,
            (&Method::DELETE, ["keys", path @ ..]) => keys::delete(&ns, path, body).await,
            (&Method::POST, ["atomic"]) => keys::atomic(&ns, body).await,
            (&Method::GET, ["watch"]) => streams::watch(ns, q).await,
            (&Method::GET, ["watch", "prefix"]) => streams::watch_prefix(ns, q).await,
            (&Method::GET, ["watch", "poll"]) => poll::keys(&ns, q).await,
            (&Method::GET, ["watch", "prefix", "poll"]) => poll::prefix(&ns, q).await,
            (&Method::GET, ["metrics"]) => Ok(web::ok(&self.metrics.json(&ns).await?)),
            (&Method::GET, ["metrics", "prometheus"]) => {
                Ok(web::text("text/plain; version=0.0.4; charset=utf-8", self.metrics.prometheus(&ns).await?))
            }
            (&Method::POST, ["queue", "enqueue"]) => streams::enqueue(&ns, body).await,
            // Buntime's `{message}`: the message, or null when none is ready.
            (&Method::GET, ["queue", "poll"]) => {
                Ok(web::ok(&serde_json::json!({ "message": ns.dequeue().await?.map_or(Json::Null, |m| m.to_json()) })))
            }
            (&Method::GET, ["queue", "listen"]) => Ok(streams::listen(ns)),
            (&Method::POST, ["queue", "ack"]) => streams::ack(&ns, body).await,
            (&Method::POST, ["queue", "nack"]) => streams::nack(&ns, body).await,
            (&Method::GET, ["queue", "stats"]) => streams::stats(&ns).await,
            (_, ["queue", "dlq", ..]) => streams::dlq(&ns, method, &segs[2..], q).await,
            (&Method::POST, ["indexes"]) => search::create(&ns, body).await,
            (&Method::GET, ["indexes"]) => search::list(&ns).await,
            (&Method::DELETE, ["indexes"]) => search::remove(&ns, q).await,
            (&Method::GET, ["search"]) => search::search_get(&ns, q).await,
            (&Method::POST, ["search"]) => search::search_post(&ns, body).await,
            _ => match allowed(segs) {
                [] => Err(Error::new(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("no keyval route {method} /keyval/api/{}", segs.join("/")),
                )),
                allow => Err(web::method_not_allowed(method, &format!("/keyval/api/{}", segs.join("/")), allow)),
            },
        }
    }
}

/// The methods [`Keyval::route`] serves at `segs` (none: no such route), for 405's `Allow`.
fn allowed(segs: &[&str]) -> &'static [&'static str] {
    match segs {
        ["keys", "list" | "batch" | "delete-batch"] => &["GET", "HEAD", "PUT", "POST", "DELETE"],
        ["keys", ..] => &["GET", "HEAD", "PUT", "DELETE"],
        ["atomic"] | ["queue", "enqueue" | "ack" | "nack"] => &["POST"],
        ["watch"] | ["watch", "prefix"] | ["watch", "poll"] | ["watch", "prefix", "poll"] => &["GET", "HEAD"],
        ["metrics"] | ["metrics", "prometheus"] | ["queue", "stats"] => &["GET", "HEAD"],
        ["queue", "poll" | "listen"] => &["GET"],
        ["indexes"] => &["GET", "HEAD", "POST", "DELETE"],
        ["search"] => &["GET", "HEAD", "POST"],
        _ => &[],
    }
}

/// A key from `a/b/1` (query parameters) or a JSON array or string (bodies).
pub(crate) fn key_param(v: &Json, field: &str) -> Result<Key, Error> {
    match v {
        Json::String(s) => Ok(path_key(s)),
        other => key::key_from_json(other, field),
    }
}

/// A key from a slash-separated path.
pub(crate) fn path_key(s: &str) -> Key {
    let segs: Vec<&str> = s.split('/').collect();
    key::key_from_path(&segs)
}
