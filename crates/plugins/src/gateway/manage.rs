//! The state-changing half of `/gateway/api` (and the history and shell reads that go with it):
//! rate-limit buckets forgotten, metrics history, shell excludes, cache invalidation. Answers
//! keep Buntime's shapes; the table is in [`super::api`].

use std::sync::Arc;

use axum::extract::{Path, Query, State as Extract};
use axum::response::Response;
use http::StatusCode;
use marina_core::Error;
use serde::Deserialize;
use serde_json::json;

use super::State;
use super::history::CAPACITY;
use super::shell::{Shell, is_basename};
use crate::api::{ApiError, Json, reply};

type S = Extract<Arc<State>>;

/// 400 `RATE_LIMIT_DISABLED` without a rate limit (Buntime: 400 "Rate limiting not enabled").
pub(super) fn limits_enabled(s: &State) -> Result<(), ApiError> {
    if s.limits.is_empty() {
        return Err(Error::bad_request(
            "RATE_LIMIT_DISABLED",
            "Rate limiting not enabled: set GATEWAY_RATE_LIMIT_REQUESTS or the manifest's rateLimit",
        )
        .into());
    }
    Ok(())
}

/// `DELETE /rate-limit/buckets/:key`: the key is forgotten under every rule (its next request
/// meets full allowances). `{deleted, key, rules}`; `deleted: false` when no rule knew it.
pub(super) async fn delete_bucket(Extract(s): S, Path(key): Path<String>) -> Result<Response, ApiError> {
    limits_enabled(&s)?;
    let rules: Vec<&str> = s.limits.rules.iter().filter(|r| r.limiter.remove(&key)).map(|r| r.name()).collect();
    reply(&json!({ "deleted": !rules.is_empty(), "key": key, "rules": rules }))
}

/// `POST /rate-limit/clear`: every key of every rule forgotten. `{cleared: <keys>}`.
pub(super) async fn clear_buckets(Extract(s): S) -> Result<Response, ApiError> {
    limits_enabled(&s)?;
    let cleared: usize = s.limits.rules.iter().map(|r| r.limiter.clear()).sum();
    reply(&json!({ "cleared": cleared }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /metrics/history?limit=60`: the newest snapshots first, at most [`CAPACITY`].
pub(super) async fn history(Extract(s): S, Query(q): Query<HistoryQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(60);
    if limit == 0 || limit > CAPACITY {
        return Err(Error::bad_request("INVALID_QUERY", format!("limit: expected 1 to {CAPACITY}, found {limit}"))
            .with_data(json!({ "field": "limit" }))
            .into());
    }
    reply(&s.history.newest(limit))
}

/// `DELETE /metrics/history`: memory and the stored rows.
pub(super) async fn clear_history(Extract(s): S) -> Result<Response, ApiError> {
    s.history.clear().await?;
    reply(&json!({ "cleared": true }))
}

/// The shell, or 400 `SHELL_DISABLED` (Buntime: 400 "Shell not configured").
fn shell(s: &State) -> Result<&Shell, ApiError> {
    s.shell.as_ref().ok_or_else(|| {
        Error::bad_request("SHELL_DISABLED", "Shell not configured: set GATEWAY_SHELL_DIR or the manifest's shellDir")
            .into()
    })
}

/// The shell's stored excludes; 503 when `init` could not read them (its error is in the log).
fn stored(shell: &Shell) -> Result<&super::excludes::Stored, ApiError> {
    shell.stored().ok_or_else(|| {
        Error::unavailable(
            "EXCLUDES_UNAVAILABLE",
            "the stored shell excludes could not be read at start-up (see the log); restart or reload plugins",
        )
        .into()
    })
}

/// The longest basename accepted through the API, in bytes: a file name's limit. Stored
/// excludes are repeated in every `/gateway/api/sse` event and every `/shell/excludes` answer.
pub(super) const BASENAME_MAX: usize = 255;

/// A basename from a client: 400 `INVALID_BASENAME` naming the field and quoting it (an
/// overlong one by its length, with the limit).
fn basename(field: &str, got: &str) -> Result<String, ApiError> {
    let name = got.trim();
    if name.len() > BASENAME_MAX {
        return Err(Error::bad_request(
            "INVALID_BASENAME",
            format!("{field}: expected at most {BASENAME_MAX} bytes (a file name's limit), found {} bytes", name.len()),
        )
        .with_data(json!({ "field": field, "limit": BASENAME_MAX }))
        .into());
    }
    if is_basename(name) {
        return Ok(name.to_string());
    }
    // The words Buntime's messages carry ("required", "Invalid") are kept for its clients.
    let message = if name.is_empty() {
        format!("{field} is required: expected a first path segment of letters, digits, '-' and '_', found nothing")
    } else {
        format!(
            "Invalid {field}: expected a first path segment of letters, digits, '-' and '_' (^[a-zA-Z0-9_-]+$), found {got:?}"
        )
    };
    Err(Error::bad_request("INVALID_BASENAME", message).with_data(json!({ "field": field })).into())
}

/// 409 `EXCLUDE_CONFIGURED`: the configuration owns that exclude.
fn configured(name: &str, action: &str) -> ApiError {
    Error::new(
        StatusCode::CONFLICT,
        "EXCLUDE_CONFIGURED",
        format!(
            "{name:?} is excluded by the environment (GATEWAY_SHELL_EXCLUDES) or the manifest's shellExcludes; {action} it there, not through the API"
        ),
    )
    .with_data(json!({ "basename": name, "source": "env" }))
    .into()
}

/// `GET /shell/excludes`: `[{basename, source: "env" | "keyval", addedAt?}]`.
pub(super) async fn list_excludes(Extract(s): S) -> Result<Response, ApiError> {
    reply(&shell(&s)?.entries())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddExclude {
    basename: String,
}

/// `POST /shell/excludes {basename}`: stored, and honoured by the next request.
/// `{added, basename, source: "keyval"}`; `added: false` when it was stored already.
pub(super) async fn add_exclude(Extract(s): S, Json(body): Json<AddExclude>) -> Result<Response, ApiError> {
    let shell = shell(&s)?;
    let name = basename("basename", &body.basename)?;
    if shell.configured(&name) {
        return Err(configured(&name, "it is already excluded; change"));
    }
    let added = stored(shell)?.add(&name).await?;
    reply(&json!({ "added": added, "basename": name, "source": "keyval" }))
}

/// `DELETE /shell/excludes/:basename`: `{removed, basename}`; `removed: false` when it was not
/// stored; 409 for a configured one.
pub(super) async fn remove_exclude(Extract(s): S, Path(name): Path<String>) -> Result<Response, ApiError> {
    let shell = shell(&s)?;
    let name = basename("basename", &name)?;
    if shell.configured(&name) {
        return Err(configured(&name, "remove"));
    }
    let removed = stored(shell)?.remove(&name).await?;
    reply(&json!({ "removed": removed, "basename": name }))
}

/// `POST /cache/invalidate`: marina's gateway has no response cache (Buntime's was never
/// enabled either), so always 400 `CACHE_DISABLED`, as Buntime's 400 "Cache not enabled".
pub(super) async fn invalidate_cache() -> Result<Response, ApiError> {
    Err(Error::bad_request(
        "CACHE_DISABLED",
        "Cache not enabled: the gateway has no response cache, nothing to invalidate (Buntime's was never enabled either)",
    )
    .into())
}
