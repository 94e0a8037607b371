//! An app manifest's `publicRoutes`: paths (relative to the app) that need no credentials.
//!
//! Patterns are globs (the `globset` crate) with Buntime's meaning (buntime.md §5.6): `*`
//! stays inside one path segment, `**` crosses segments, and a pattern starting with `(` is a
//! regular expression (the `regex` crate, so no pattern can backtrack catastrophically). The
//! array form applies to every method; the map form is `ALL` plus the request's method (`HEAD`
//! also consults `GET`).
//!
//! Matching happens on the percent-decoded path, the one a worker routes on. A path that does
//! not decode, or that has `.`/`..` segments, is never public: otherwise
//! `/public/..%2Fadmin` would pass as public and reach the worker's `/admin`.

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::Method;
use marina_core::Error;
use parking_lot::Mutex;
use regex::Regex;

/// One method's compiled patterns.
#[derive(Debug, Clone)]
struct Patterns {
    globs: GlobSet,
    regexes: Vec<Regex>,
}

impl Patterns {
    fn matches(&self, path: &str) -> bool {
        self.globs.is_match(path) || self.regexes.iter().any(|r| r.is_match(path))
    }
}

/// Compiled `publicRoutes` of one app.
#[derive(Debug, Clone, Default)]
pub struct PublicRoutes {
    by_method: Vec<(String, Patterns)>,
}

impl PublicRoutes {
    /// Compile a manifest's `publicRoutes` (method or `ALL` → patterns).
    ///
    /// # Errors
    /// 400 `PUBLIC_ROUTE_INVALID` naming the pattern (`publicRoutes.GET[0]`) and why.
    pub fn compile(routes: &BTreeMap<String, Vec<String>>) -> Result<Self, Error> {
        let mut by_method = Vec::new();
        for (method, list) in routes {
            let mut globs = GlobSetBuilder::new();
            let mut regexes = Vec::new();
            for (i, pattern) in list.iter().enumerate() {
                let bad = |why: String| {
                    Error::bad_request("PUBLIC_ROUTE_INVALID", format!("publicRoutes.{method}[{i}] {pattern:?}: {why}"))
                        .with_data(serde_json::json!({ "path": format!("publicRoutes.{method}[{i}]") }))
                };
                if pattern.starts_with('(') {
                    let re = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| bad(e.to_string()))?;
                    regexes.push(re);
                } else {
                    let glob = GlobBuilder::new(pattern)
                        .literal_separator(true)
                        .backslash_escape(true)
                        .build()
                        .map_err(|e| bad(e.to_string()))?;
                    globs.add(glob);
                }
            }
            let globs = globs.build().map_err(|e| Error::bad_request("PUBLIC_ROUTE_INVALID", e.to_string()))?;
            by_method.push((method.to_ascii_uppercase(), Patterns { globs, regexes }));
        }
        Ok(Self { by_method })
    }

    /// Whether `method` on the app-relative `raw_path` (as on the wire, starting with `/`)
    /// needs no credentials.
    pub fn is_public(&self, method: &Method, raw_path: &str) -> bool {
        if self.by_method.is_empty() {
            return false;
        }
        let Some(path) = decode_path(raw_path) else { return false };
        self.by_method.iter().any(|(m, p)| {
            (m == "ALL" || m == method.as_str() || (method == Method::HEAD && m == "GET")) && p.matches(&path)
        })
    }
}

/// A manifest's `publicRoutes` as written: method (or `ALL`) → patterns.
pub type RouteMap = BTreeMap<String, Vec<String>>;

/// Compiled `publicRoutes` per app version, rebuilt when the manifest's routes change.
#[derive(Debug, Default)]
pub struct PublicRoutesCache {
    entries: Mutex<std::collections::HashMap<String, (RouteMap, Arc<PublicRoutes>)>>,
}

impl PublicRoutesCache {
    /// The compiled routes of app version `key` whose manifest says `routes`.
    ///
    /// # Errors
    /// As [`PublicRoutes::compile`].
    pub fn get(&self, key: &str, routes: &BTreeMap<String, Vec<String>>) -> Result<Arc<PublicRoutes>, Error> {
        if let Some((known, compiled)) = self.entries.lock().get(key)
            && known == routes
        {
            return Ok(compiled.clone());
        }
        let compiled = Arc::new(PublicRoutes::compile(routes)?);
        self.entries.lock().insert(key.to_string(), (routes.clone(), compiled.clone()));
        Ok(compiled)
    }
}

/// The percent-decoded path, or `None` when it is not UTF-8, contains NUL or a backslash, or
/// has `.`/`..` segments (which a worker might resolve past a public prefix).
fn decode_path(raw: &str) -> Option<String> {
    let s = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
    if s.contains('\0') || s.contains('\\') || s.split('/').any(|seg| seg == "." || seg == "..") {
        return None;
    }
    Some(s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(pairs: &[(&str, &[&str])]) -> PublicRoutes {
        let map = pairs.iter().map(|(m, l)| (m.to_string(), l.iter().map(|s| s.to_string()).collect())).collect();
        PublicRoutes::compile(&map).unwrap()
    }

    #[test]
    fn buntime_glob_semantics() {
        let r =
            routes(&[("ALL", &["/health", "/public/**", "/img/*.png", "(/v[0-9]+/status)"]), ("POST", &["/hooks/*"])]);
        let get = Method::GET;
        assert!(r.is_public(&get, "/health"));
        assert!(!r.is_public(&get, "/health/x"));
        assert!(r.is_public(&get, "/public/a/b/c"));
        assert!(r.is_public(&get, "/img/a.png"));
        assert!(!r.is_public(&get, "/img/a/b.png"), "* stays inside a segment");
        assert!(r.is_public(&get, "/v12/status"));
        assert!(!r.is_public(&get, "/v12/status/x"), "regexes are anchored");
        assert!(r.is_public(&Method::POST, "/hooks/github"));
        assert!(!r.is_public(&get, "/hooks/github"), "POST-only");
        assert!(!r.is_public(&get, "/private"));
    }

    #[test]
    fn decoding_cannot_escape_a_public_prefix() {
        let r = routes(&[("ALL", &["/public/*", "/public/**"])]);
        assert!(r.is_public(&Method::GET, "/public/a%20b"));
        assert!(!r.is_public(&Method::GET, "/public/..%2Fadmin"));
        assert!(!r.is_public(&Method::GET, "/public/%2e%2e/admin"));
        assert!(!r.is_public(&Method::GET, "/public/../admin"));
        assert!(!r.is_public(&Method::GET, "/public/%ff"));
        assert!(!r.is_public(&Method::GET, "/public/a%00"));
    }

    #[test]
    fn head_follows_get_and_bad_patterns_are_named() {
        let r = routes(&[("GET", &["/x"])]);
        assert!(r.is_public(&Method::HEAD, "/x"));
        let map = BTreeMap::from([("GET".to_string(), vec!["/ok".to_string(), "([".to_string()])]);
        let e = PublicRoutes::compile(&map).unwrap_err();
        assert_eq!(e.code(), "PUBLIC_ROUTE_INVALID");
        assert_eq!(e.data().unwrap()["path"], "publicRoutes.GET[1]");
    }
}
