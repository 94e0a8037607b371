//! `/watch/poll` and `/watch/prefix/poll`: one answer with what changed since the
//! versionstamps the client last saw, for clients that cannot hold an event stream open
//! (Buntime's shapes). The client keeps the state; nothing is kept here between requests.
//!
//! - `GET /watch/poll?keys=a/b,c&versionstamps=vs1,vs2` → `{entries, versionstamps: [vs or ""]}`:
//!   the entries whose versionstamp differs from the one at the same position (absent keys
//!   count as `""`);
//! - `GET /watch/prefix/poll?prefix=a&versionstamps=a/1:vs1,a/2:vs2&limit=` → `{entries,
//!   versionstamps: "a/1:vs1,..."}`: new or changed entries under the prefix, and keys the client
//!   listed that are gone (with `value: null`). Keys are written as paths (`users/1`); a key
//!   whose parts contain `/`, `,` or `:` cannot be told apart in this form (use the SSE watch).

use std::collections::{HashMap, HashSet};

use http::Response;
use marina_core::{Body, Error};
use marina_store::kv::key::{self, Key, KeyPart};
use marina_store::kv::{ListOptions, Namespace, Selector};
use serde_json::{Value as Json, json};

use super::path_key;
use crate::web;

/// The `keys` query parameter (comma-separated paths).
pub(super) fn keys_query(q: &HashMap<String, String>) -> Result<Vec<Key>, Error> {
    Ok(q.get("keys").map(|k| k.split(',').filter(|s| !s.is_empty()).map(path_key).collect()).unwrap_or_default())
}

fn missing(name: &str) -> Error {
    Error::bad_request("QUERY_INVALID", format!("{name}: this query parameter is required"))
        .with_data(json!({ "path": name }))
}

/// A key as a path, the form the prefix poll's `versionstamps` uses.
fn key_path(k: &[KeyPart]) -> String {
    k.iter()
        .map(|p| match key::part_to_json(p) {
            Json::String(s) => s,
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

pub(super) async fn keys(ns: &Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    let keys = keys_query(q)?;
    if keys.is_empty() {
        return Err(missing("keys"));
    }
    for (i, k) in keys.iter().enumerate() {
        ns.check_key(k, &format!("keys[{i}]"), false)?;
    }
    let seen: Vec<&str> = q.get("versionstamps").map(|v| v.split(',').collect()).unwrap_or_default();
    let now = ns.get_many(&keys).await?;
    let mut entries = Vec::new();
    let mut stamps = Vec::new();
    for (i, (k, e)) in keys.iter().zip(now).enumerate() {
        let current = e.as_ref().map_or("", |e| e.versionstamp.as_str());
        if seen.get(i).copied().unwrap_or("") != current {
            entries.push(match &e {
                Some(e) => e.to_json(),
                None => json!({ "key": key::key_to_json(k), "value": null, "versionstamp": null }),
            });
        }
        stamps.push(current.to_string());
    }
    Ok(web::ok(&json!({ "entries": entries, "versionstamps": stamps })))
}

pub(super) async fn prefix(ns: &Namespace, q: &HashMap<String, String>) -> Result<Response<Body>, Error> {
    let prefix = path_key(q.get("prefix").filter(|p| !p.is_empty()).ok_or_else(|| missing("prefix"))?);
    ns.check_key(&prefix, "prefix", true)?;
    let seen: HashMap<&str, &str> = q
        .get("versionstamps")
        .map(|v| {
            v.split(',')
                .filter_map(|pair| pair.rsplit_once(':'))
                .filter(|(k, vs)| !k.is_empty() && !vs.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let opts = ListOptions {
        selector: Selector { prefix: Some(prefix), ..Default::default() },
        limit: web::query_num(q, "limit")?,
        ..Default::default()
    };
    let now = ns.list(&opts).await?.entries;
    let mut entries = Vec::new();
    let mut current = HashSet::new();
    let mut stamps = Vec::new();
    for e in &now {
        let path = key_path(&e.key);
        if seen.get(path.as_str()) != Some(&e.versionstamp.as_str()) {
            entries.push(e.to_json());
        }
        stamps.push(format!("{path}:{}", e.versionstamp));
        current.insert(path);
    }
    let mut gone: Vec<&&str> = seen.keys().filter(|k| !current.contains(**k)).collect();
    gone.sort();
    for k in gone {
        entries.push(json!({ "key": key::key_to_json(&path_key(k)), "value": null, "versionstamp": null }));
    }
    Ok(web::ok(&json!({ "entries": entries, "versionstamps": stamps.join(",") })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_back_as_the_same_key() {
        for p in ["users/1", "a/b/c", "x/-2/true"] {
            assert_eq!(key_path(&path_key(p)), p);
        }
    }
}
