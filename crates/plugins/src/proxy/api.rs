//! `/redirects/api/rules`: Buntime's rule API (buntime.md §6.3) with its bodies.
//!
//! | call | answer |
//! |---|---|
//! | `GET /rules` | every rule in match order, each with `readonly` |
//! | `GET /rules/:id` | one rule, 404 `RULE_NOT_FOUND` |
//! | `POST /rules` | 201 and the rule (`pattern` and `target` required; the id is a UUID) |
//! | `PUT /rules/reorder` `{ids}` | every API rule's id in the new order; `order` becomes the index |
//! | `PUT /rules/:id` | merge: the fields given replace the rule's (`null` removes one) |
//! | `PATCH /rules/:id/toggle` | flips `enabled` |
//! | `DELETE /rules/:id` | `{"success": true}` |
//!
//! Configuration rules are read-only (403 `RULE_READONLY`). Every bad body is a 400 naming the
//! field: `INVALID_JSON` (not JSON, or a field of the wrong type), `INVALID_PROXY_RULE` (a bad
//! pattern, target, rewrite, header, an unknown field).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response as AxumResponse;
use axum::routing::{get, patch, put};
use http::StatusCode;
use marina_core::Error;
use marina_proxy::{Rule, RuleSpec};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{MAX_RULES, Rules};
use crate::api::{ApiError, Json, parse_json, reply};

type Handler = Result<AxumResponse, ApiError>;

/// The largest request body the rules API reads (a rule is a few hundred bytes; a reorder of
/// every rule a few KiB). Reading stops there with 413: a huge body is never buffered whole.
pub const MAX_BODY: usize = 256 * 1024;

/// The router, relative to the plugin's base (`/api/rules`).
pub fn router(rules: Arc<Rules>) -> Router {
    Router::new()
        .route("/api/rules", get(list).post(create))
        .route("/api/rules/reorder", put(reorder))
        .route("/api/rules/{id}", get(one).put(update).delete(remove))
        .route("/api/rules/{id}/toggle", patch(toggle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(rules)
}

/// A rule as the API shows it: its fields, `id` and `readonly`.
fn view(rule: &Rule) -> Value {
    let mut v = serde_json::to_value(&rule.spec).unwrap_or_else(|_| json!({}));
    v["id"] = Value::String(rule.id.clone());
    v["readonly"] = Value::Bool(rule.readonly);
    v
}

// The body's `error` keeps Buntime's fixed texts (its clients compare them exactly); `message`
// says more.

fn not_found(id: &str) -> Error {
    Error::new(StatusCode::NOT_FOUND, "RULE_NOT_FOUND", format!("no proxy rule has the id '{id}'"))
        .with_data(json!({ "id": id }))
        .with_error_text("Rule not found")
}

fn readonly(id: &str, deleting: bool) -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        "RULE_READONLY",
        format!("proxy rule '{id}' comes from configuration and cannot be changed through the API"),
    )
    .with_data(json!({ "id": id }))
    .with_error_text(if deleting { "Cannot delete static rules" } else { "Cannot modify static rules" })
}

/// A rule refused for its `pattern` or `target`, with Buntime's text as `error`.
fn in_buntime_words(e: Error) -> Error {
    if e.code() != "INVALID_PROXY_RULE" {
        return e;
    }
    let field = e.data().and_then(|d| d["field"].as_str()).unwrap_or_default().to_string();
    let missing = e.message().contains("missing field") || e.message().contains("is required");
    match field.as_str() {
        "pattern" | "target" if missing => e.with_error_text("pattern and target are required"),
        "pattern" => e.with_error_text("Invalid regex pattern"),
        _ => e,
    }
}

/// A JSON object body, or 400.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    match parse_json::<Value>(bytes)? {
        Value::Object(map) => Ok(map),
        other => Err(Error::bad_request(
            "INVALID_JSON",
            format!("the body must be a JSON object (a rule), found {}", kind(&other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A rule spec from a JSON object, with the bad field's path in the error.
fn spec_from(mut map: Map<String, Value>) -> Result<RuleSpec, Error> {
    // Clients send back what GET gave them; marina decides these.
    map.remove("id");
    map.remove("readonly");
    serde_path_to_error::deserialize::<_, RuleSpec>(Value::Object(map)).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if field == "." {
            // serde names the field of an unknown-field error in its message only.
            inner.split('`').nth(1).unwrap_or("").to_string()
        } else {
            field
        };
        Error::bad_request("INVALID_PROXY_RULE", format!("{field}: {inner}")).with_data(json!({ "field": field }))
    })
}

fn find(rules: &Rules, id: &str) -> Result<Arc<Rule>, Error> {
    rules.current().rules().iter().find(|r| r.id == id).cloned().ok_or_else(|| not_found(id))
}

async fn list(State(rules): State<Arc<Rules>>) -> Handler {
    let all: Vec<Value> = rules.current().rules().iter().map(|r| view(r)).collect();
    reply(&all)
}

async fn one(State(rules): State<Arc<Rules>>, Path(id): Path<String>) -> Handler {
    let rule = find(&rules, &id)?;
    reply(&view(&rule))
}

async fn create(State(rules): State<Arc<Rules>>, body: Bytes) -> Handler {
    let mut spec = spec_from(object(&body)?).map_err(in_buntime_words)?;
    // Buntime's answers spell these defaults out.
    spec.enabled.get_or_insert(true);
    spec.order.get_or_insert(0);
    spec.ws.get_or_insert(true);
    let rule = Arc::new(rules.compile(uuid::Uuid::new_v4().to_string(), spec).map_err(in_buntime_words)?);
    let _guard = rules.writes.lock().await;
    let mut dynamic = rules.dynamic.lock().clone();
    if dynamic.len() >= MAX_RULES {
        return Err(Error::new(
            StatusCode::CONFLICT,
            "TOO_MANY_RULES",
            format!("there are already {MAX_RULES} proxy rules; delete some first"),
        )
        .into());
    }
    dynamic.push(rule.clone());
    let set = rules.build(&dynamic)?;
    rules.store.insert(&rule.id, &rule.spec).await?;
    rules.swap(dynamic, set);
    let mut resp = reply(&view(&rule))?;
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// Replace one API rule with `change(current spec)`, written and swapped in.
async fn replace(rules: &Rules, id: &str, change: impl FnOnce(&RuleSpec) -> Result<RuleSpec, Error>) -> Handler {
    let _guard = rules.writes.lock().await;
    let current = find(rules, id)?;
    if current.readonly {
        return Err(readonly(id, false).into());
    }
    let spec = change(&current.spec).map_err(in_buntime_words)?;
    let rule = Arc::new(rules.compile(id.to_string(), spec).map_err(in_buntime_words)?);
    let mut dynamic = rules.dynamic.lock().clone();
    let Some(slot) = dynamic.iter_mut().find(|r| r.id == id) else { return Err(not_found(id).into()) };
    *slot = rule.clone();
    let set = rules.build(&dynamic)?;
    rules.store.update(&[(rule.id.clone(), rule.spec.clone())]).await?;
    rules.swap(dynamic, set);
    reply(&view(&rule))
}

async fn update(State(rules): State<Arc<Rules>>, Path(id): Path<String>, body: Bytes) -> Handler {
    let patch = object(&body)?;
    replace(&rules, &id, |current| {
        let Value::Object(mut merged) = serde_json::to_value(current).unwrap_or_else(|_| json!({})) else {
            return Err(Error::internal("a rule did not serialise to an object"));
        };
        for (k, v) in patch {
            if v.is_null() {
                merged.remove(&k);
            } else {
                merged.insert(k, v);
            }
        }
        spec_from(merged)
    })
    .await
}

async fn toggle(State(rules): State<Arc<Rules>>, Path(id): Path<String>) -> Handler {
    replace(&rules, &id, |current| {
        let mut spec = current.clone();
        spec.enabled = Some(!current.is_enabled());
        Ok(spec)
    })
    .await
}

async fn remove(State(rules): State<Arc<Rules>>, Path(id): Path<String>) -> Handler {
    let _guard = rules.writes.lock().await;
    let current = find(&rules, &id)?;
    if current.readonly {
        return Err(readonly(&id, true).into());
    }
    let dynamic: Vec<_> = rules.dynamic.lock().iter().filter(|r| r.id != id).cloned().collect();
    let set = rules.build(&dynamic)?;
    rules.store.delete(&id).await?;
    rules.swap(dynamic, set);
    reply(&json!({ "success": true }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reorder {
    ids: Vec<String>,
}

async fn reorder(State(rules): State<Arc<Rules>>, Json(body): Json<Reorder>) -> Handler {
    let _guard = rules.writes.lock().await;
    let dynamic = rules.dynamic.lock().clone();
    let bad = |field: String, message: String| -> ApiError {
        Error::bad_request("INVALID_REORDER", format!("{field}: {message}")).with_data(json!({ "field": field })).into()
    };
    let mut seen = std::collections::HashSet::new();
    let mut ordered = Vec::with_capacity(body.ids.len());
    for (i, id) in body.ids.iter().enumerate() {
        if !seen.insert(id.as_str()) {
            return Err(bad(format!("ids[{i}]"), format!("'{id}' is listed twice")));
        }
        match dynamic.iter().find(|r| &r.id == id) {
            Some(rule) => ordered.push(rule.clone()),
            None if rules.statics.iter().any(|r| &r.id == id) => {
                return Err(bad(format!("ids[{i}]"), format!("'{id}' comes from configuration and keeps its place")));
            }
            None => return Err(bad(format!("ids[{i}]"), format!("no API rule has the id '{id}'"))),
        }
    }
    let missing: Vec<&str> = dynamic.iter().map(|r| r.id.as_str()).filter(|id| !seen.contains(id)).collect();
    if !missing.is_empty() {
        return Err(bad("ids".into(), format!("must list every API rule; missing {}", missing.join(", "))));
    }
    let mut reordered = Vec::with_capacity(ordered.len());
    for (i, rule) in ordered.iter().enumerate() {
        let mut spec = rule.spec.clone();
        spec.order = Some(i as i64);
        reordered.push(Arc::new(rules.compile(rule.id.clone(), spec)?));
    }
    let set = rules.build(&reordered)?;
    let rows: Vec<(String, RuleSpec)> = reordered.iter().map(|r| (r.id.clone(), r.spec.clone())).collect();
    rules.store.update(&rows).await?;
    rules.swap(reordered, set);
    let all: Vec<Value> = rules.current().rules().iter().map(|r| view(r)).collect();
    reply(&all)
}
