//! `/keyval/api/keys...` and `/keyval/api/atomic`.

use std::collections::HashMap;
use std::time::Duration;

use http::{Response, StatusCode};
use marina_core::{Body, Error};
use marina_store::kv::key::{self, Key};
use marina_store::kv::{Filter, ListOptions, Namespace, Selector, atomic};
use serde_json::{Value as Json, json};

use super::{key_param, path_key};
use crate::web;

fn where_of(body: &Json) -> Result<Option<Filter>, Error> {
    match body.get("where") {
        None | Some(Json::Null) => Ok(None),
        Some(w) => Filter::parse(w, "where").map(Some),
    }
}

fn selector_query(q: &HashMap<String, String>) -> Selector {
    let k = |name: &str| q.get(name).filter(|v| !v.is_empty()).map(|v| path_key(v));
    Selector { prefix: Some(k("prefix").unwrap_or_default()), start: k("start"), end: k("end") }
}

fn selector_body(b: &Json) -> Result<Selector, Error> {
    let k = |name: &str| -> Result<Option<Key>, Error> {
        match b.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => key_param(v, name).map(Some),
        }
    };
    Ok(Selector { prefix: Some(k("prefix")?.unwrap_or_default()), start: k("start")?, end: k("end")? })
}

fn entries(list: &[marina_store::kv::Entry]) -> Json {
    Json::Array(list.iter().map(|e| e.to_json()).collect())
}

pub(super) async fn get(ns: &Namespace, path: &[&str]) -> Result<Response<Body>, Error> {
    let k = key::key_from_path(path);
    match ns.get(&k).await? {
        Some(e) => Ok(web::ok(&e.to_json())),
        None => Err(Error::new(StatusCode::NOT_FOUND, "KEY_NOT_FOUND", "Key not found")
            .with_data(json!({ "key": key::key_to_json(&k) }))),
    }
}

pub(super) async fn set(
    ns: &Namespace,
    path: &[&str],
    q: &HashMap<String, String>,
    body: Body,
) -> Result<Response<Body>, Error> {
    let value = web::json_required(body).await?;
    let expire = match q.get("expiresIn").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(Duration::from_millis(v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::bad_request(
                "KV_EXPIRES_INVALID",
                format!("expiresIn must be a positive number (milliseconds), found '{v}'"),
            )
            .with_data(json!({ "path": "expiresIn" }))
        })?)),
    };
    let vs = ns.set(key::key_from_path(path), value, expire).await?;
    Ok(web::ok(&json!({ "ok": true, "versionstamp": vs })))
}

pub(super) async fn delete(ns: &Namespace, path: &[&str], body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_body(body).await?.unwrap_or(Json::Null);
    let exact = b.get("exact").and_then(Json::as_bool).unwrap_or(false);
    let filter = where_of(&b)?;
    let n = ns.delete(&key::key_from_path(path), exact, filter.as_ref()).await?;
    Ok(web::ok(&json!({ "deletedCount": n })))
}

pub(super) async fn list_get(ns: &Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    let opts = ListOptions {
        selector: selector_query(q),
        limit: web::query_num(q, "limit")?,
        reverse: web::query_bool(q, "reverse"),
        ..Default::default()
    };
    Ok(web::ok(&entries(&ns.list(&opts).await?.entries)))
}

pub(super) async fn list_post(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_body(body).await?.unwrap_or(json!({}));
    let limit = match b.get("limit") {
        None | Some(Json::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            Error::bad_request("KV_LIMIT_INVALID", format!("limit: expected a positive integer, found {v}"))
                .with_data(json!({ "path": "limit" }))
        })? as usize),
    };
    let opts = ListOptions {
        selector: selector_body(&b)?,
        limit,
        reverse: b.get("reverse").and_then(Json::as_bool).unwrap_or(false),
        cursor: b.get("cursor").and_then(Json::as_str).map(str::to_string),
        filter: where_of(&b)?,
    };
    Ok(web::ok(&entries(&ns.list(&opts).await?.entries)))
}

pub(super) async fn count(ns: &Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    Ok(web::ok(&json!({ "count": ns.count(&selector_query(q), None).await? })))
}

pub(super) async fn paginate(ns: &Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    let opts = ListOptions {
        selector: selector_query(q),
        limit: web::query_num(q, "limit")?,
        reverse: web::query_bool(q, "reverse"),
        cursor: q.get("cursor").filter(|c| !c.is_empty()).cloned(),
        filter: None,
    };
    let page = ns.list(&opts).await?;
    Ok(web::ok(&json!({ "entries": entries(&page.entries), "cursor": page.cursor, "hasMore": page.has_more })))
}

fn keys_of(b: &Json) -> Result<Vec<Key>, Error> {
    let Some(Json::Array(keys)) = b.get("keys") else {
        return Err(Error::bad_request("KV_KEY_INVALID", "keys: expected an array of keys")
            .with_data(json!({ "path": "keys" })));
    };
    keys.iter().enumerate().map(|(i, k)| key_param(k, &format!("keys[{i}]"))).collect()
}

pub(super) async fn batch(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let keys = keys_of(&b)?;
    // Buntime answers an empty batch 400: asking for nothing is a client's mistake.
    if keys.is_empty() {
        return Err(
            Error::bad_request("KV_KEY_INVALID", "keys must be a non-empty array").with_data(json!({ "path": "keys" }))
        );
    }
    let got = ns.get_many(&keys).await?;
    let out: Vec<Json> = keys
        .iter()
        .zip(got)
        .map(|(k, e)| {
            e.map_or_else(
                || json!({ "key": key::key_to_json(k), "value": null, "versionstamp": null }),
                |e| e.to_json(),
            )
        })
        .collect();
    Ok(web::ok(&Json::Array(out)))
}

pub(super) async fn delete_batch(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let keys = keys_of(&b)?;
    let exact = b.get("exact").and_then(Json::as_bool).unwrap_or(false);
    let n = ns.delete_many(&keys, exact, where_of(&b)?.as_ref()).await?;
    Ok(web::ok(&json!({ "deletedCount": n })))
}

pub(super) async fn atomic(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let (checks, mutations) = atomic::parse_request(&b)?;
    Ok(web::ok(&match ns.atomic(checks, mutations).await? {
        Some(vs) => json!({ "ok": true, "versionstamp": vs }),
        None => json!({ "ok": false }),
    }))
}
