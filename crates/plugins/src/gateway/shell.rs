//! The app shell (buntime.md §6.2): one app, from `GATEWAY_SHELL_DIR` (or the manifest's
//! `shellDir`), that answers browser page loads nothing else claimed, at base `/`.
//!
//! marina places it in the route table after plugin routes and apps (DESIGN.md), so an app
//! always answers its own paths; Buntime asked the shell first, in a hook. What reaches the
//! shell follows Buntime's rules:
//!
//! - never the internal API (`{RUNTIME_API_PREFIX}/api/...`);
//! - never a path whose first segment is excluded: `GATEWAY_SHELL_EXCLUDES` (or `shellExcludes`),
//!   the excludes added through `/gateway/api/shell/excludes` ([`super::excludes`], stored in
//!   marina's database), or the `gateway_shell_excludes` / `GATEWAY_SHELL_EXCLUDES` cookie
//!   (comma-separated); basenames match `^[a-zA-Z0-9_-]+$`;
//! - then a document navigation (`Sec-Fetch-Dest: document`), or a single-segment path
//!   (`/`, `/settings`) that is not being embedded (`Sec-Fetch-Dest` other than `iframe`,
//!   `embed`, `object`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, header};
use marina_apps::App;
use marina_apps::registry::{Registry, Resolved};
use marina_core::Error;
use marina_core::settings::RawSettings;
use serde_json::{Value, json};

use super::excludes::Stored;

/// The name the shell app runs under in the worker pool (`gateway-shell@latest`).
pub const APP_NAME: &str = "gateway-shell";

/// Cookie names a browser may set to bypass the shell for some first segments.
const COOKIES: [&str; 2] = ["gateway_shell_excludes", "GATEWAY_SHELL_EXCLUDES"];

/// Whether `name` is an acceptable basename (`^[a-zA-Z0-9_-]+$`).
pub fn is_basename(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The configured shell.
pub struct Shell {
    resolved: Resolved,
    registry: Arc<Registry>,
    excludes: HashSet<String>,
    /// The excludes added at runtime, once the gateway's `init` has read them.
    stored: OnceLock<Stored>,
    api_base: String,
}

impl Shell {
    /// The shell from `GATEWAY_SHELL_DIR`/`GATEWAY_SHELL_EXCLUDES` (which win) or the manifest's
    /// `shellDir`/`shellExcludes`; `None` when no dir is configured. A relative dir is taken
    /// from marina's working directory.
    ///
    /// # Errors
    /// A dir that is not a directory or whose app does not load (its manifest's error), an
    /// exclude that is not a basename — each naming its variable or option.
    pub fn configure(
        options: &serde_json::Map<String, Value>,
        settings: &RawSettings,
        registry: Arc<Registry>,
        api_base: &str,
    ) -> Result<Option<Self>, Error> {
        let (dir, from) = match settings.get("GATEWAY_SHELL_DIR") {
            Some(d) => (d.to_string(), "GATEWAY_SHELL_DIR"),
            None => match options.get("shellDir") {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(d)) if d.trim().is_empty() => return Ok(None),
                Some(Value::String(d)) => (d.clone(), "shellDir"),
                Some(other) => return Err(bad("shellDir", format!("expected a directory path, found {other}"))),
            },
        };
        let mut path = PathBuf::from(&dir);
        if path.is_relative() {
            let cwd = std::env::current_dir().map_err(|e| Error::internal(format!("working directory: {e}")))?;
            path = cwd.join(path);
        }
        if !path.is_dir() {
            return Err(bad(from, format!("{} is not a directory", path.display())));
        }
        let dir_from = from;
        let (list, from) = match settings.get("GATEWAY_SHELL_EXCLUDES") {
            Some(csv) => (csv.split(',').map(|s| s.trim().to_string()).collect(), "GATEWAY_SHELL_EXCLUDES"),
            None => match options.get("shellExcludes") {
                None | Some(Value::Null) => (Vec::new(), "shellExcludes"),
                Some(Value::String(csv)) => (csv.split(',').map(|s| s.trim().to_string()).collect(), "shellExcludes"),
                Some(Value::Array(items)) => (
                    items.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect(),
                    "shellExcludes",
                ),
                Some(other) => {
                    return Err(bad(
                        "shellExcludes",
                        format!("expected a list or comma-separated text, found {other}"),
                    ));
                }
            },
        };
        let mut excludes = HashSet::new();
        for name in list.into_iter().filter(|n: &String| !n.is_empty()) {
            if !is_basename(&name) {
                return Err(bad(from, format!("{name:?} is not a basename (letters, digits, '-' and '_')")));
            }
            excludes.insert(name);
        }
        let shell = Self {
            resolved: Resolved { name: APP_NAME.into(), version: "latest".into(), dir: path },
            registry,
            excludes,
            stored: OnceLock::new(),
            api_base: api_base.to_string(),
        };
        // Its manifest and entrypoint are checked now, so a broken shell stops start-up.
        shell
            .registry
            .load(&shell.resolved)
            .map_err(|e| bad(dir_from, format!("the shell app does not load: {}", e.message())))?;
        Ok(Some(shell))
    }

    /// The shell app when the request is the shell's by the rules in the module docs.
    pub fn serve(&self, path: &str, headers: &HeaderMap) -> Option<Arc<App>> {
        if self.wants(path, headers) {
            // A failure (the shell's files changed under it) is logged once by the registry;
            // the request then meets the 404 it would have met without a shell.
            self.registry.load(&self.resolved).ok()
        } else {
            None
        }
    }

    fn wants(&self, path: &str, headers: &HeaderMap) -> bool {
        let under_api =
            path == self.api_base || path.strip_prefix(self.api_base.as_str()).is_some_and(|r| r.starts_with('/'));
        if under_api {
            return false;
        }
        let rest = path.trim_start_matches('/');
        let (first, single) = match rest.find('/') {
            Some(i) => (&rest[..i], false),
            None => (rest, true),
        };
        let stored = || self.stored.get().is_some_and(|s| s.contains(first));
        if !first.is_empty() && (self.excludes.contains(first) || stored() || cookie_excludes(headers, first)) {
            return false;
        }
        let dest = headers.get("sec-fetch-dest").and_then(|v| v.to_str().ok()).unwrap_or("");
        dest.eq_ignore_ascii_case("document")
            || (single && !["iframe", "embed", "object"].iter().any(|d| dest.eq_ignore_ascii_case(d)))
    }

    /// Hand over the stored excludes (once, at init).
    pub fn set_stored(&self, stored: Stored) {
        let _ = self.stored.set(stored);
    }

    /// The stored excludes, once read.
    pub fn stored(&self) -> Option<&Stored> {
        self.stored.get()
    }

    /// Whether the configuration (variable or manifest) excludes `basename`.
    pub fn configured(&self, basename: &str) -> bool {
        self.excludes.contains(basename)
    }

    /// Every exclude as Buntime lists them: `{basename, source: "env"}` for configured ones,
    /// then `{basename, source: "keyval", addedAt}` for stored ones (Buntime's name for the
    /// persisted kind; marina keeps them in its database).
    pub fn entries(&self) -> Vec<Value> {
        let mut configured: Vec<&String> = self.excludes.iter().collect();
        configured.sort();
        let mut out: Vec<Value> = configured.iter().map(|b| json!({ "basename": b, "source": "env" })).collect();
        for (name, at) in self.stored().map(Stored::all).unwrap_or_default() {
            if !self.excludes.contains(&name) {
                out.push(json!({ "basename": name, "source": "keyval", "addedAt": at }));
            }
        }
        out
    }

    /// The configuration as `/gateway/api/config` shows it.
    pub fn describe(&self) -> Value {
        let mut excludes: Vec<&String> = self.excludes.iter().collect();
        excludes.sort();
        json!({ "dir": self.resolved.dir, "excludes": excludes })
    }
}

fn bad(from: &str, message: String) -> Error {
    Error::internal(format!("{from}: {message}")).with_data(json!({ "key": from }))
}

/// Whether a shell-exclude cookie lists `first`.
fn cookie_excludes(headers: &HeaderMap, first: &str) -> bool {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).any(|line| {
        line.split(';').filter_map(|pair| pair.trim().split_once('=')).any(|(name, value)| {
            COOKIES.contains(&name.trim())
                && percent_encoding::percent_decode_str(value.trim().trim_matches('"'))
                    .decode_utf8_lossy()
                    .split(',')
                    .any(|n| n.trim() == first)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(excludes: &[&str]) -> Shell {
        Shell {
            resolved: Resolved { name: APP_NAME.into(), version: "latest".into(), dir: PathBuf::from("/nonexistent") },
            registry: Arc::new(Registry::new(Vec::new())),
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
            stored: OnceLock::new(),
            api_base: "/api".into(),
        }
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn buntimes_sec_fetch_dest_rules() {
        let s = shell(&["cpanel"]);
        let doc = h(&[("sec-fetch-dest", "document")]);
        assert!(s.wants("/", &doc));
        assert!(s.wants("/deep/page/x", &doc));
        assert!(s.wants("/settings", &HeaderMap::new()), "single segment, no dest (curl)");
        assert!(s.wants("/main.js", &h(&[("sec-fetch-dest", "script")])));
        assert!(!s.wants("/a/b.js", &h(&[("sec-fetch-dest", "script")])), "multi-segment, not a document");
        for dest in ["iframe", "embed", "object", "IFRAME"] {
            let hd = HeaderMap::from_iter([(http::HeaderName::from_static("sec-fetch-dest"), dest.parse().unwrap())]);
            assert!(!s.wants("/page", &hd), "{dest}");
        }
        assert!(!s.wants("/api", &doc) && !s.wants("/api/health", &doc), "never the internal API");
        assert!(s.wants("/apis", &doc));
        assert!(!s.wants("/cpanel/x", &doc), "excluded by configuration");
        let cookie = h(&[("sec-fetch-dest", "document"), ("cookie", "a=1; gateway_shell_excludes=todo%2Cblog")]);
        assert!(!s.wants("/todo", &cookie) && !s.wants("/blog/post", &cookie));
        assert!(s.wants("/other", &cookie));
        let upper = h(&[("cookie", "GATEWAY_SHELL_EXCLUDES=\"x,y\"")]);
        assert!(!s.wants("/y", &upper));
    }

    #[test]
    fn basenames() {
        assert!(is_basename("cp-anel_2"));
        assert!(!is_basename("") && !is_basename("a/b") && !is_basename("a.b") && !is_basename("é"));
    }
}
