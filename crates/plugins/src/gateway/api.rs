//! `/gateway/api`: Buntime's endpoints (buntime.md §6.2), behind the internal API's key rules
//! ([`crate::api::guard`]: reading needs a key once keys exist, changing needs an admin key or
//! the root key, and without keys a state-changing call needs a same-host `Origin`).
//!
//! | Method & path | Answer |
//! |---|---|
//! | GET `/stats` | `{totalRequests, allowedRequests, blockedRequests, preflights, activeBuckets, shell: {enabled, dir?, excludesCount?}}` |
//! | GET `/config` | `{rateLimit, cors, cache: null, shell, trustedProxies}` |
//! | GET `/sse` | an event each second: `{timestamp, rateLimit: {metrics, config}, cors, shell, recentLogs}` ([`super::sse`]) |
//! | GET `/rate-limit/metrics` | `{totalRequests, allowedRequests, blockedRequests, activeBuckets}` |
//! | GET `/rate-limit/buckets?limit=100` | `[{key, rule, remaining, requests, blocked, lastSeen}]`, most recent first |
//! | DELETE `/rate-limit/buckets/:key` | `{deleted, key, rules}`: the key forgotten under every rule |
//! | POST `/rate-limit/clear` | `{cleared: <keys>}` |
//! | GET `/metrics/history?limit=60` | `[{timestamp, totalRequests, blockedRequests, allowedRequests, activeBuckets}]`, newest first, one a second, at most 3600, kept across restarts ([`super::history`]) |
//! | DELETE `/metrics/history` | `{cleared: true}` |
//! | GET `/shell/excludes` | `[{basename, source: "env" \| "keyval", addedAt?}]` |
//! | POST `/shell/excludes` `{basename}` | `{added, basename, source: "keyval"}`, stored in marina's database ([`super::excludes`]) |
//! | DELETE `/shell/excludes/:basename` | `{removed, basename}`; 409 `EXCLUDE_CONFIGURED` for a configured one |
//! | GET `/logs?limit=50&ip=&rateLimited=true&statusRange=4` | `[{timestamp, ip, method, path, status, duration, rateLimited, requestId}]`, newest first |
//! | DELETE `/logs` | `{cleared: true}` |
//! | GET `/logs/stats` | `{total, capacity, rateLimited, byStatus, avgDuration}` |
//! | POST `/cache/invalidate` | always 400 `CACHE_DISABLED` (Buntime: 400 "Cache not enabled"; there is no cache) |
//!
//! Without a rate limit, the `/rate-limit/*` routes answer 400 `RATE_LIMIT_DISABLED` (Buntime:
//! 400 "Rate limiting not enabled"); without a shell, `/shell/excludes` answers 400
//! `SHELL_DISABLED` (Buntime: 400 "Shell not configured"). A bad basename (or one over
//! 255 bytes) is 400 `INVALID_BASENAME` naming the field and quoting what was sent (or its length).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State as Extract};
use axum::response::Response;
use axum::routing::{delete, get, post};
use marina_core::Error;
use serde::Deserialize;
use serde_json::json;

use super::log::Filter;
use super::manage::{self, limits_enabled as enabled};
use super::{State, sse};
use crate::api::{ApiError, reply};

type S = Extract<Arc<State>>;

/// The router, with paths below the plugin's base.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/api/stats", get(stats))
        .route("/api/config", get(|Extract(s): S| async move { reply(&s.config_json()) }))
        .route("/api/sse", get(|Extract(s): S| async move { sse::stream(s) }))
        .route("/api/rate-limit/metrics", get(metrics))
        .route("/api/rate-limit/buckets", get(buckets))
        .route("/api/rate-limit/buckets/{key}", delete(manage::delete_bucket))
        .route("/api/rate-limit/clear", post(manage::clear_buckets))
        .route("/api/metrics/history", get(manage::history).delete(manage::clear_history))
        .route("/api/shell/excludes", get(manage::list_excludes).post(manage::add_exclude))
        .route("/api/shell/excludes/{basename}", delete(manage::remove_exclude))
        .route("/api/cache/invalidate", post(manage::invalidate_cache))
        .route(
            "/api/logs",
            get(logs).delete(|Extract(s): S| async move {
                s.log.clear();
                reply(&json!({ "cleared": true }))
            }),
        )
        .route("/api/logs/stats", get(|Extract(s): S| async move { reply(&s.log.stats()) }))
        .with_state(state)
}

/// The counters, and Buntime's `shell` summary (`{enabled: false}` without a shell).
async fn stats(Extract(s): S) -> Result<Response, ApiError> {
    let mut v = s.stats_json();
    v["shell"] = match &s.shell {
        Some(shell) => {
            json!({ "enabled": true, "dir": shell.describe()["dir"], "excludesCount": shell.entries().len() })
        }
        None => json!({ "enabled": false }),
    };
    reply(&v)
}

async fn metrics(Extract(s): S) -> Result<Response, ApiError> {
    enabled(&s)?;
    reply(&s.metrics_json())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketQuery {
    limit: Option<usize>,
}

async fn buckets(Extract(s): S, Query(q): Query<BucketQuery>) -> Result<Response, ApiError> {
    enabled(&s)?;
    let limit = q.limit.unwrap_or(100);
    let mut all: Vec<serde_json::Value> = Vec::new();
    for rule in &s.limits.rules {
        for b in rule.limiter.buckets(limit) {
            let mut v = serde_json::to_value(&b).unwrap_or_default();
            v["rule"] = json!(rule.name());
            all.push(v);
        }
    }
    all.sort_by(|a, b| b["lastSeen"].as_u64().cmp(&a["lastSeen"].as_u64()));
    all.truncate(limit);
    reply(&all)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LogQuery {
    limit: Option<usize>,
    ip: Option<String>,
    rate_limited: Option<String>,
    status_range: Option<String>,
}

async fn logs(Extract(s): S, Query(q): Query<LogQuery>) -> Result<Response, ApiError> {
    let ip = match q.ip.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
        None => None,
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            Error::bad_request("INVALID_QUERY", format!("ip: expected an IP address, found {text:?}"))
                .with_data(json!({ "field": "ip" }))
        })?),
    };
    let rate_limited = match q.rate_limited.as_deref() {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::bad_request(
                "INVALID_QUERY",
                format!("rateLimited: expected true or false, found {other:?}"),
            )
            .with_data(json!({ "field": "rateLimited" }))
            .into());
        }
    };
    let status_class = match q.status_range.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => match r.trim_end_matches("xx").parse::<u16>() {
            Ok(c) if (1..=5).contains(&c) => Some(c),
            _ => {
                return Err(Error::bad_request(
                    "INVALID_QUERY",
                    format!("statusRange: expected 1 to 5 (4 = 4xx), found {r:?}"),
                )
                .with_data(json!({ "field": "statusRange" }))
                .into());
            }
        },
    };
    let filter = Filter { limit: q.limit.unwrap_or(50), ip, rate_limited, status_class };
    reply(&s.log.select(&filter))
}
