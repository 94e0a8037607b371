//! The internal API under `{RUNTIME_API_PREFIX}/api`, with Buntime's paths and bodies
//! (buntime.md §4.2, buntime-observed.md) so Buntime's clients keep working. Handlers return
//! `marina_core::Error`s (through [`ApiError`]); the server's edge renders them.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::response::Response as AxumResponse;
use axum::routing::{MethodRouter, any, delete, get, post};
use bytes::Bytes;
use http::{Method, StatusCode};
use marina_core::Error;
use marina_plugins::api::{ApiError, reply};
use serde_json::{Value, json};

use crate::{Runtime, api_remove, api_session};

/// The marina version reported by health and discovery endpoints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

type ApiResult = Result<AxumResponse, ApiError>;

/// The routes below the API base, and their paths: the OpenAPI document ([`crate::openapi`]) is
/// tested against these.
fn table() -> (Router<Arc<Runtime>>, Vec<&'static str>) {
    let routes: Vec<(&'static str, MethodRouter<Arc<Runtime>>)> = vec![
        ("/health", get(health)),
        ("/health/live", get(live)),
        ("/health/ready", get(ready)),
        ("/apps", get(apps)),
        ("/apps/{scope}/{name}", delete(api_remove::delete_app)),
        ("/apps/{scope}/{name}/{version}", delete(api_remove::delete_app_version)),
        ("/workers", get(workers)),
        ("/plugins", get(plugins)),
        ("/plugins/{name}", delete(api_remove::delete_plugin)),
        ("/plugins/reload", post(plugins_reload)),
        ("/plugins/loaded", get(plugins_loaded)),
        ("/keys", any(keys)),
        ("/admin/session", get(api_session::session)),
        ("/keys/{*rest}", any(keys)),
        ("/openapi.json", get(openapi_json)),
        ("/docs", get(docs)),
    ];
    let paths = routes.iter().map(|(p, _)| *p).collect();
    (routes.into_iter().fold(Router::new(), |r, (p, m)| r.route(p, m)), paths)
}

/// The paths the API routes, below its base.
pub fn paths() -> Vec<&'static str> {
    table().1
}

/// Build the API router, nested under the API base.
pub fn router(rt: Arc<Runtime>) -> Router {
    let api = table()
        .0
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // No internal API route takes more than a key's JSON: reading stops there with 413.
        .layer(axum::extract::DefaultBodyLimit::max(marina_auth::keys_api::MAX_BODY))
        .with_state(rt.clone());
    Router::new().nest(&rt.config.api_base(), api).fallback(not_found)
}

async fn openapi_json(State(rt): State<Arc<Runtime>>) -> ApiResult {
    reply(&crate::openapi::document(&rt.api_base, VERSION))
}

async fn docs(State(rt): State<Arc<Runtime>>) -> ApiResult {
    let mut resp = axum::response::IntoResponse::into_response(crate::openapi::page(&rt.api_base, VERSION));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
    Ok(resp)
}

async fn health() -> ApiResult {
    reply(&json!({"ok": true, "status": "healthy", "version": VERSION}))
}

async fn live() -> ApiResult {
    reply(&json!({"ok": true, "status": "live", "version": VERSION}))
}

/// Ready means: storage migrated, registry loaded, and not draining. A draining instance says
/// 503 so a load balancer stops sending it new requests before it exits.
async fn ready(State(rt): State<Arc<Runtime>>) -> ApiResult {
    if rt.is_draining() {
        let mut resp = reply(&json!({"ok": false, "status": "draining", "version": VERSION}))?;
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(resp);
    }
    reply(&json!({"ok": true, "status": "ready", "version": VERSION}))
}

/// Buntime's `[{name, path, versions}]`, plus marina's `states`: per version `ok`, `invalid`
/// (with `code` and `errors`) or `disabled`, and what went wrong while running it
/// (`reloadError`: a live reload that did not start; `migrationError`: its migrations failed).
async fn apps(State(rt): State<Arc<Runtime>>) -> ApiResult {
    let mut by_name: std::collections::HashMap<String, Vec<Value>> = std::collections::HashMap::new();
    for (resolved, state) in rt.registry.check_all() {
        let mut v = serde_json::to_value(&state).unwrap_or(Value::Null);
        let key = format!("{}@{}", resolved.name, resolved.version);
        if let Some(e) = rt.pool.reload_error(&key) {
            v["reloadError"] = Value::String(e);
        }
        if rt.pool.reloading(&key) {
            v["reloading"] = Value::Bool(true);
        }
        if let Some(e) = rt.migrations.failure(&resolved.dir) {
            v["migrationError"] = e;
        }
        by_name.entry(resolved.name).or_default().push(v);
    }
    let list: Vec<Value> = rt
        .registry
        .list()
        .into_iter()
        .map(|a| {
            let states = by_name.remove(&a.name).unwrap_or_default();
            let mut v =
                api_remove::with_source(serde_json::to_value(&a).unwrap_or(Value::Null), &a.path, rt.registry.dirs());
            v["states"] = Value::Array(states);
            v
        })
        .collect();
    reply(&list)
}

async fn workers(State(rt): State<Arc<Runtime>>) -> ApiResult {
    reply(&json!({
        "workers": rt.pool.workers(),
        "pool": rt.pool.metrics(),
        "sandbox": rt.pool.sandbox(),
        "requests": rt.stats.view(),
    }))
}

/// Every plugin directory on disk, loaded or not (Buntime's `[{name, path, source, removable}]`).
async fn plugins(State(rt): State<Arc<Runtime>>) -> ApiResult {
    let dirs = &rt.config.plugin_dirs;
    let found: Vec<Value> = marina_plugins::manifest::scan(dirs)
        .into_iter()
        .map(|f| api_remove::with_source(serde_json::to_value(&f).unwrap_or(Value::Null), &f.path, dirs))
        .collect();
    reply(&found)
}

/// Rescan and reload; the old instances are shut down.
async fn plugins_reload(State(rt): State<Arc<Runtime>>) -> ApiResult {
    let set = rt.reload_plugins().await?;
    let plugins: Vec<Value> = set
        .plugins()
        .iter()
        .filter(|p| p.spec.name != marina_plugins::auth::NAME)
        .map(|p| json!({ "name": p.spec.name, "version": p.spec.version }))
        .collect();
    reply(&json!({ "ok": true, "plugins": plugins }))
}

/// `/api/keys[/meta|/:id]` (buntime.md §4.2). The gate already checked the key and its permission;
/// the identity it found becomes `createdBy`.
async fn keys(
    State(rt): State<Arc<Runtime>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    identity: Option<Extension<Arc<marina_auth::Identity>>>,
    body: Bytes,
) -> ApiResult {
    let rest = uri.path().strip_prefix(rt.api_base.as_str()).and_then(|p| p.strip_prefix("/keys")).unwrap_or("");
    let caller = identity.as_ref().map(|Extension(i)| &**i);
    let (status, value) = marina_auth::keys_api::handle(rt.auth.keys(), &method, rest, body, caller).await?;
    let mut resp = reply(&value)?;
    *resp.status_mut() = status;
    Ok(resp)
}

async fn plugins_loaded(State(rt): State<Arc<Runtime>>) -> ApiResult {
    let loaded: Vec<Value> = rt
        .plugins()
        .plugins()
        .iter()
        // Built-in authentication is part of the core, as Buntime's API key check is: not a
        // plugin from a plugin dir, so not listed.
        .filter(|p| p.spec.name != marina_plugins::auth::NAME)
        .map(|p| {
            json!({
                "name": p.spec.name,
                "base": p.spec.base,
                "dependencies": p.spec.dependencies,
                "optionalDependencies": p.spec.optional_dependencies,
                "menus": p.spec.menus,
            })
        })
        .collect();
    reply(&loaded)
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiResult {
    Err(Error::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no API route {method} {}", uri.path())).into())
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiResult {
    Err(Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into())
}
