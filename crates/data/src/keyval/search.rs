//! `/indexes` and `/search` (Buntime's shapes) over `marina_store::kv::search`.

use std::collections::HashMap;

use http::Response;
use marina_core::{Body, Error};
use marina_store::kv::{Filter, Namespace};
use serde_json::{Value as Json, json};

use super::{key_param, path_key};
use crate::web;

fn missing(name: &str) -> Error {
    Error::bad_request("QUERY_INVALID", format!("{name}: this parameter is required"))
        .with_data(json!({ "path": name }))
}

/// `POST /indexes {prefix, options: {fields, tokenize}}`; `{prefix, fields}` too, which
/// Buntime's own client sends.
pub(super) async fn create(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let prefix = key_param(b.get("prefix").ok_or_else(|| missing("prefix"))?, "prefix")?;
    let opts = b.get("options").unwrap_or(&b);
    let fields = match opts.get("fields") {
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.as_str().map(str::to_string).ok_or_else(|| {
                    Error::bad_request(
                        "KV_INDEX_INVALID",
                        format!("options.fields[{i}]: expected a field path (a string)"),
                    )
                    .with_data(json!({ "path": format!("options.fields[{i}]") }))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(Error::bad_request(
                "KV_INDEX_INVALID",
                "options.fields: fields must be a non-empty array of field paths",
            )
            .with_data(json!({ "path": "options.fields" })));
        }
    };
    let tokenize = opts.get("tokenize").and_then(Json::as_str).map(str::to_string);
    ns.create_index(prefix, fields, tokenize).await?;
    Ok(web::ok(&json!({ "ok": true })))
}

pub(super) async fn list(ns: &Namespace) -> Result<Response<Body>, Error> {
    Ok(web::ok(&Json::Array(ns.list_indexes().await?.iter().map(|i| i.to_json()).collect())))
}

pub(super) async fn remove(ns: &Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    let prefix = path_key(q.get("prefix").ok_or_else(|| missing("prefix"))?);
    let removed = ns.remove_index(&prefix).await?;
    Ok(web::ok(&json!({ "ok": true, "removed": removed })))
}

fn entries(list: &[marina_store::kv::Entry]) -> Json {
    Json::Array(list.iter().map(|e| e.to_json()).collect())
}

pub(super) async fn search_get(ns: &Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    let prefix = path_key(q.get("prefix").filter(|p| !p.is_empty()).ok_or_else(|| missing("prefix"))?);
    let query = q.get("query").filter(|p| !p.is_empty()).ok_or_else(|| missing("query"))?;
    let found = ns.search(&prefix, query, web::query_num(q, "limit")?, None).await?;
    Ok(web::ok(&entries(&found)))
}

/// `POST /search {prefix, query, options: {limit, where}}`.
pub(super) async fn search_post(ns: &Namespace, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let prefix = key_param(b.get("prefix").ok_or_else(|| missing("prefix"))?, "prefix")?;
    let query = b.get("query").and_then(Json::as_str).filter(|q| !q.is_empty()).ok_or_else(|| missing("query"))?;
    let opts = b.get("options").cloned().unwrap_or(Json::Null);
    let limit = match opts.get("limit") {
        None | Some(Json::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            Error::bad_request("KV_LIMIT_INVALID", format!("options.limit: expected a positive integer, found {v}"))
                .with_data(json!({ "path": "options.limit" }))
        })? as usize),
    };
    let filter = match opts.get("where") {
        None | Some(Json::Null) => None,
        Some(w) => Some(Filter::parse(w, "options.where")?),
    };
    Ok(web::ok(&entries(&ns.search(&prefix, query, limit, filter.as_ref()).await?)))
}
