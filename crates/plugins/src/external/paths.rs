//! Which requests an external plugin's hook is asked about: `hooks.paths` (the hook checks only
//! paths matching one of these globs; absent: every path) and `hooks.excludePaths` (never these),
//! the names the gateway's `rateLimit.excludePaths` uses.
//!
//! ```yaml
//! hooks:
//!   onRequest: /check
//!   paths: ["/admin", "/admin/**", "/reports/*/download"]
//!   excludePaths: ["/admin/assets/**"]
//! ```
//!
//! Globs (the `globset` crate, as the gateway's) match the request's full path as received,
//! without the query: `*` stays within a segment, `**` crosses segments, so `/admin/**` does not
//! match `/admin` itself (list both). Buntime had no such filter: its hooks saw every request
//! and filtered in their own code, which here would cost a worker round trip per request.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use marina_core::Error;
use serde_json::{Value, json};

/// The compiled `paths` and `excludePaths`.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

fn bad(key: &str, message: String) -> Error {
    Error::internal(format!("`{key}`: {message}")).with_data(json!({ "path": key }))
}

/// One list of globs from `hooks.<key>`; `None` when absent.
fn globs(hooks: &serde_json::Map<String, Value>, key: &str) -> Result<Option<GlobSet>, Error> {
    let at = format!("hooks.{key}");
    let items = match hooks.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad(&at, format!("expected at least one path glob (omit `{key}` to have none), found []")));
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(bad(&at, format!("expected a list of path globs such as [\"/admin/**\"], found {other}")));
        }
    };
    let mut set = GlobSetBuilder::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("{at}[{i}]");
        let text = match item.as_str() {
            Some(t) if t.starts_with('/') => t,
            _ => return Err(bad(&key, format!("expected a path glob starting with '/', found {item}"))),
        };
        let glob = GlobBuilder::new(text)
            .literal_separator(true)
            .build()
            .map_err(|e| bad(&key, format!("{text:?} is not a glob: {}", e.kind())))?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|e| bad(&at, e.to_string()))
}

impl PathFilter {
    /// `hooks.paths` and `hooks.excludePaths`.
    ///
    /// # Errors
    /// A list that is not one, empty, or holds something other than a `/`-rooted glob, naming
    /// the key (`hooks.paths[1]`) and quoting what was found.
    pub fn from_hooks(hooks: &serde_json::Map<String, Value>) -> Result<Self, Error> {
        Ok(Self { include: globs(hooks, "paths")?, exclude: globs(hooks, "excludePaths")? })
    }

    /// Whether the hook is asked about `path`.
    ///
    /// The globs see the path as received, but routing decodes the app segment and workers
    /// usually decode and normalise the rest, so `/%61dmin/x`, `/app//admin` or
    /// `/app/assets/../secret` can mean a path the globs would have caught. Such a path is
    /// always asked about: a filter narrows the hook, it never lets an ambiguous spelling past it.
    pub fn allows(&self, path: &str) -> bool {
        if (self.include.is_some() || self.exclude.is_some()) && ambiguous(path) {
            return true;
        }
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(path))
    }
}

/// A path whose meaning may change when decoded or normalised: a percent escape, an empty
/// segment, a `.` or `..` segment, or a backslash (which some servers read as `/`).
fn ambiguous(path: &str) -> bool {
    path.contains('%')
        || path.contains('\\')
        || path.contains("//")
        || path.split('/').any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(v: Value) -> Result<PathFilter, Error> {
        PathFilter::from_hooks(v.as_object().unwrap())
    }

    #[test]
    fn paths_and_excludes_narrow_the_hook() {
        let all = filter(json!({})).unwrap();
        assert!(all.allows("/anything/at/all"));
        let f = filter(json!({ "paths": ["/admin", "/admin/**", "/r/*/dl"], "excludePaths": ["/admin/assets/**"] }))
            .unwrap();
        for (path, asked) in [
            ("/admin", true),
            ("/admin/users/7", true),
            ("/r/2024/dl", true),
            ("/r/2024/x/dl", false),
            ("/administrator", false),
            ("/admin/assets/app.css", false),
            ("/shop", false),
            // Spellings that decode or normalise to a filtered path are always asked about.
            ("/%61dmin/x", true),
            ("/shop//admin", true),
            ("/admin/assets/../secret", true),
            ("/admin/assets/%2e%2e/secret", true),
            ("/shop/.", true),
        ] {
            assert_eq!(f.allows(path), asked, "{path}");
        }
        let only_excludes = filter(json!({ "excludePaths": ["/health"] })).unwrap();
        assert!(!only_excludes.allows("/health") && only_excludes.allows("/healthz"));
    }

    #[test]
    fn bad_lists_name_their_key_and_quote_what_was_found() {
        let msg = |v: Value| filter(v).unwrap_err().message().to_string();
        assert_eq!(
            msg(json!({ "paths": "/admin" })),
            "`hooks.paths`: expected a list of path globs such as [\"/admin/**\"], found \"/admin\""
        );
        assert!(msg(json!({ "paths": [] })).starts_with("`hooks.paths`: expected at least one"));
        assert_eq!(
            msg(json!({ "paths": ["/ok", "admin/**"] })),
            "`hooks.paths[1]`: expected a path glob starting with '/', found \"admin/**\""
        );
        assert!(
            msg(json!({ "excludePaths": ["/a/[z"] })).starts_with("`hooks.excludePaths[0]`: \"/a/[z\" is not a glob")
        );
        assert!(msg(json!({ "excludePaths": [3] })).starts_with("`hooks.excludePaths[0]`: expected a path glob"));
        let e = filter(json!({ "paths": [7] })).unwrap_err();
        assert_eq!(e.data().unwrap()["path"], "hooks.paths[0]");
    }
}
