//! The `sandbox` key of an app manifest: what an app's workers may read beyond the defaults.
//!
//! ```yaml
//! sandbox:
//!   read: [/usr/share/fonts, /opt/models/small]
//! ```
//!
//! Landlock confines a worker to its app dir, its runtime and a short list of system paths
//! (docs/security.md). An app that needs more — fonts, a model, a shared read-only data set —
//! lists the paths under `sandbox.read`. The manifest is the app author's, so the key only ever
//! *adds reads*: each entry must be an absolute, normalised path (no `.`, `..`, `//`), and not
//! `/` itself. The workers layer refuses, when it starts a worker, entries that overlap marina's
//! state dir, the worker dirs (other apps) or the plugin dirs, and the worker's uid still needs
//! the file permissions to read what Landlock lets through.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::manifest::{describe, suggest};

/// The keys allowed under `sandbox`.
pub const SANDBOX_KEYS: [&str; 1] = ["read"];

/// Most entries `sandbox.read` may have (each is a Landlock rule, opened per worker start).
pub const MAX_READS: usize = 64;

/// Problems and warnings under `sandbox`, as `(key path, message)`.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The paths, when all were valid.
    pub read: Vec<PathBuf>,
    /// `(path, message)` problems.
    pub problems: Vec<(String, String)>,
    /// Warnings (unknown keys).
    pub warnings: Vec<String>,
}

/// Reads and validates `sandbox`.
pub fn parse(v: &Value) -> Parsed {
    let mut out = Parsed::default();
    let Value::Object(map) = v else {
        out.problems.push((
            "sandbox".into(),
            format!("expected a map such as `{{read: [/usr/share/fonts]}}`, found {}", describe(v)),
        ));
        return out;
    };
    for key in map.keys().filter(|k| !SANDBOX_KEYS.contains(&k.as_str())) {
        let hint = suggest(key, &SANDBOX_KEYS).map(|s| format!(": did you mean `sandbox.{s}`?")).unwrap_or_default();
        let shown: String = key.chars().take(64).collect();
        out.warnings.push(format!("unknown key `sandbox.{shown}` is ignored{hint}"));
    }
    let Some(read) = map.get("read").filter(|v| !v.is_null()) else { return out };
    let Value::Array(items) = read else {
        out.problems.push((
            "sandbox.read".into(),
            format!("expected a list of absolute paths such as `[/usr/share/fonts]`, found {}", describe(read)),
        ));
        return out;
    };
    if items.len() > MAX_READS {
        out.problems
            .push(("sandbox.read".into(), format!("at most {MAX_READS} paths are allowed, found {}", items.len())));
        return out;
    }
    for (i, item) in items.iter().enumerate() {
        let at = format!("sandbox.read[{i}]");
        let Value::String(s) = item else {
            out.problems.push((at, format!("expected an absolute path (a string), found {}", describe(item))));
            continue;
        };
        match check_path(s) {
            Ok(p) => out.read.push(p),
            Err(why) => out.problems.push((at, format!("{why}, found {}", describe(item)))),
        }
    }
    if !out.problems.is_empty() {
        out.read.clear();
    }
    out
}

/// An absolute, normalised path other than `/`.
fn check_path(s: &str) -> Result<PathBuf, &'static str> {
    if s.contains('\0') {
        return Err("must not contain a NUL byte");
    }
    if !s.starts_with('/') {
        return Err("must be an absolute path");
    }
    if s.trim_end_matches('/').is_empty() {
        return Err("must not be `/` (that would let the app read everything its uid can)");
    }
    let p = Path::new(s);
    let normal = p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    // `Path::components` quietly drops `.` and repeated `/`: compare the text to see them.
    let rebuilt: PathBuf = p.components().collect();
    if !normal || rebuilt.as_os_str() != p.as_os_str().to_string_lossy().trim_end_matches('/') {
        return Err("must be a normalised path (no `.`, `..` or `//`)");
    }
    Ok(rebuilt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absolute_normal_paths_are_read() {
        let p = parse(&json!({"read": ["/usr/share/fonts", "/opt/models/small/"]}));
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.read, [PathBuf::from("/usr/share/fonts"), PathBuf::from("/opt/models/small")]);
        assert!(parse(&json!({})).read.is_empty());
    }

    #[test]
    fn bad_entries_say_what_is_expected_with_their_path() {
        let p = parse(&json!({"read": ["relative/x", "/a/../etc", "/a/./b", "//a", "/", 3], "raed": 1}));
        let got: Vec<(&str, &str)> = p.problems.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(
            got,
            [
                ("sandbox.read[0]", "must be an absolute path, found the string \"relative/x\""),
                ("sandbox.read[1]", "must be a normalised path (no `.`, `..` or `//`), found the string \"/a/../etc\""),
                ("sandbox.read[2]", "must be a normalised path (no `.`, `..` or `//`), found the string \"/a/./b\""),
                ("sandbox.read[3]", "must be a normalised path (no `.`, `..` or `//`), found the string \"//a\""),
                (
                    "sandbox.read[4]",
                    "must not be `/` (that would let the app read everything its uid can), found the string \"/\""
                ),
                ("sandbox.read[5]", "expected an absolute path (a string), found the number 3"),
            ]
        );
        assert!(p.read.is_empty());
        assert_eq!(p.warnings, ["unknown key `sandbox.raed` is ignored: did you mean `sandbox.read`?"]);
        assert_eq!(parse(&json!("x")).problems[0].0, "sandbox");
        assert_eq!(parse(&json!({"read": "/x"})).problems[0].0, "sandbox.read");
        let many: Vec<String> = (0..=MAX_READS).map(|i| format!("/p{i}")).collect();
        assert_eq!(parse(&json!({ "read": many })).problems.len(), 1);
    }
}
