//! The internal API under `{RUNTIME_API_PREFIX}/api`, with Buntime's paths and bodies
//! (buntime.md §4.2, buntime-observed.md) so Buntime's clients keep working.

use std::sync::Arc;

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::get;
use http::{Method, StatusCode};
use marina_core::Error;
use serde_json::{Value, json};

use crate::Runtime;
use crate::edge;

/// The marina version reported by health and discovery endpoints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Build the API router, nested under the API base.
pub fn router(rt: Arc<Runtime>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/apps", get(apps))
        .route("/workers", get(workers))
        .route("/plugins", get(plugins))
        .route("/plugins/loaded", get(plugins_loaded))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(rt.clone());
    Router::new().nest(&rt.config.api_base(), api).fallback(not_found)
}

struct Edge(axum::response::Response);

impl IntoResponse for Edge {
    fn into_response(self) -> AxumResponse {
        self.0
    }
}

fn reply(resp: http::Response<marina_core::Body>) -> Edge {
    Edge(resp.map(axum::body::Body::new))
}

fn fail(err: Error) -> Edge {
    reply(edge::error_response(&err, false))
}

async fn health() -> Edge {
    reply(edge::json(&json!({"ok": true, "status": "healthy", "version": VERSION})))
}

async fn live() -> Edge {
    reply(edge::json(&json!({"ok": true, "status": "live", "version": VERSION})))
}

/// Ready means: storage migrated, registry loaded, and not draining. A draining instance says
/// 503 so a load balancer stops sending it new requests before it exits.
async fn ready(State(rt): State<Arc<Runtime>>) -> Edge {
    if rt.is_draining() {
        let mut resp = edge::json(&json!({"ok": false, "status": "draining", "version": VERSION}));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return reply(resp);
    }
    reply(edge::json(&json!({"ok": true, "status": "ready", "version": VERSION})))
}

async fn apps(State(rt): State<Arc<Runtime>>) -> Edge {
    reply(edge::json(&rt.registry.list()))
}

async fn workers(State(rt): State<Arc<Runtime>>) -> Edge {
    reply(edge::json(&json!({ "workers": rt.pool.workers(), "pool": rt.pool.metrics() })))
}

async fn plugins() -> Edge {
    reply(edge::json(&Vec::<Value>::new()))
}

async fn plugins_loaded() -> Edge {
    reply(edge::json(&Vec::<Value>::new()))
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> Edge {
    fail(Error::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no API route {method} {}", uri.path())))
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> Edge {
    fail(Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {}", uri.path()),
    ))
}
