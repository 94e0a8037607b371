//! Plugin directories and their `manifest.yaml` (buntime.md §5.1–§5.2).
//!
//! Discovery: for each dir of `RUNTIME_PLUGIN_DIRS`, every `{dir}/{name}/` and
//! `{dir}/@scope/{name}/` holding `manifest.yaml` (or `.yml`); names starting with `.` are
//! skipped; the first plugin of a name wins. Keys: `name` (required), `base`, `enabled`,
//! `dependencies`, `optionalDependencies`, `menus`, `config`, plus marina's `onRequestFailOpen`
//! and `hookTimeout`; every other key is an option of the plugin.

use std::path::{Path, PathBuf};

use marina_core::Error;
use marina_core::units::duration_from_value;
use serde_json::{Map, Value, json};

use crate::plugin::{DEFAULT_HOOK_TIMEOUT, PluginSpec};

/// A plugin directory found on disk, for `GET /api/plugins`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    /// The directory name (`plugin-keyval`, `@acme/plugin-x`).
    pub name: String,
    /// The absolute directory.
    pub path: PathBuf,
}

/// A manifest read from a plugin directory.
#[derive(Debug)]
pub struct Discovered {
    /// Where it was found.
    pub found: Found,
    /// The spec, or why the manifest was refused.
    pub spec: Result<PluginSpec, Error>,
    /// `enabled: false`.
    pub disabled: bool,
}

/// The manifest file of a plugin dir, if any.
fn manifest_file(dir: &Path) -> Option<PathBuf> {
    ["manifest.yaml", "manifest.yml"].iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Every plugin directory under `dirs`, in scan order (each dir's entries sorted by name, so
/// the order does not depend on the file system).
pub fn scan(dirs: &[PathBuf]) -> Vec<Found> {
    let mut out = Vec::new();
    for dir in dirs {
        for (name, path) in sorted_entries(dir) {
            if name.starts_with('@') {
                for (inner, inner_path) in sorted_entries(&path) {
                    if manifest_file(&inner_path).is_some() {
                        out.push(Found { name: format!("{name}/{inner}"), path: inner_path });
                    }
                }
            } else if manifest_file(&path).is_some() {
                out.push(Found { name, path });
            }
        }
    }
    out
}

fn sorted_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut entries: Vec<(String, PathBuf)> = read
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    entries.sort();
    entries
}

/// Read every manifest under `dirs`. `reserved` are bases no plugin may take.
pub fn discover(dirs: &[PathBuf], reserved: &[String]) -> Vec<Discovered> {
    scan(dirs)
        .into_iter()
        .map(|found| {
            let file = manifest_file(&found.path).unwrap_or_else(|| found.path.join("manifest.yaml"));
            let parsed = std::fs::read_to_string(&file)
                .map_err(|e| Error::internal(format!("cannot read {}: {e}", file.display())))
                .and_then(|text| {
                    serde_saphyr::from_str::<Value>(&text)
                        .map_err(|e| invalid(&file, "", format!("not valid YAML: {e}")))
                });
            let (spec, disabled) = match parsed {
                Ok(value) => {
                    let disabled = value.get("enabled").and_then(Value::as_bool) == Some(false);
                    (
                        spec_from_value(&value, &file, reserved).map(|mut s| {
                            s.dir = Some(found.path.clone());
                            s
                        }),
                        disabled,
                    )
                }
                Err(e) => (Err(e), false),
            };
            Discovered { found, spec, disabled }
        })
        .collect()
}

fn invalid(file: &Path, key: &str, message: String) -> Error {
    let at = if key.is_empty() { String::new() } else { format!(" `{key}`:") };
    Error::internal(format!("invalid plugin manifest {}:{at} {message}", file.display()))
        .with_data(json!({ "file": file.display().to_string(), "path": key }))
}

/// Keys with a meaning of their own; every other key is an option of the plugin.
const KNOWN: &[&str] = &[
    "name",
    "version",
    "enabled",
    "entrypoint",
    "dependencies",
    "optionalDependencies",
    "onRequestFailOpen",
    "hookTimeout",
];

/// A spec from a parsed manifest. `file` is for messages.
///
/// # Errors
/// A message naming the file and the key when a value has the wrong type, the name is missing,
/// or the base is malformed or reserved.
pub fn spec_from_value(value: &Value, file: &Path, reserved: &[String]) -> Result<PluginSpec, Error> {
    let Some(map) = value.as_object() else {
        return Err(invalid(file, "", "expected a mapping of keys".into()));
    };
    let name = match map.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(other) => return Err(invalid(file, "name", format!("expected a non-empty string, found {other}"))),
        None => return Err(invalid(file, "name", "is required".into())),
    };
    let base = match map.get("base") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(file, "base", format!("expected a string such as \"/keyval\", found {other}")));
        }
    };
    if !base.is_empty() && !valid_base(&base) {
        return Err(invalid(
            file,
            "base",
            format!("{base:?} must be \"/\" or match ^/[a-zA-Z0-9_-]+$ (an invalid base path)"),
        ));
    }
    if reserved.iter().any(|r| r == &base) {
        return Err(invalid(
            file,
            "base",
            format!("{base:?} is reserved for marina itself (a plugin cannot use reserved path {base:?})"),
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>, Error> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        invalid(file, &format!("{key}[{i}]"), format!("expected a plugin name, found {v}"))
                    })
                })
                .collect(),
            Some(other) => Err(invalid(file, key, format!("expected a list of plugin names, found {other}"))),
        }
    };
    let fail_open = match map.get("onRequestFailOpen") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(file, "onRequestFailOpen", format!("expected true or false, found {other}")));
        }
    };
    let hook_timeout = match map.get("hookTimeout") {
        None | Some(Value::Null) => DEFAULT_HOOK_TIMEOUT,
        Some(v) => duration_from_value(v).map_err(|e| invalid(file, "hookTimeout", e.to_string()))?,
    };
    let options: Map<String, Value> =
        map.iter().filter(|(k, _)| !KNOWN.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut spec = PluginSpec::new(name, base);
    spec.dependencies = strings("dependencies")?;
    spec.optional_dependencies = strings("optionalDependencies")?;
    spec.menus = map.get("menus").cloned().unwrap_or(Value::Array(Vec::new()));
    spec.config_schema = map.get("config").cloned().unwrap_or(Value::Null);
    spec.entrypoint = map.get("entrypoint").and_then(Value::as_str).map(str::to_string);
    spec.version = map.get("version").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
    spec.fail_open = fail_open;
    spec.hook_timeout = hook_timeout;
    spec.options = options;
    Ok(spec)
}

fn valid_base(base: &str) -> bool {
    base == "/"
        || base.strip_prefix('/').is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<PluginSpec, Error> {
        let v: Value = serde_saphyr::from_str(yaml).unwrap();
        spec_from_value(&v, Path::new("/p/manifest.yaml"), &["/api".to_string()])
    }

    #[test]
    fn keys_and_options() {
        let s = spec(
            "name: \"@buntime/plugin-gateway\"\nbase: /gateway\ndependencies: [a]\noptionalDependencies: [b]\nonRequestFailOpen: true\nhookTimeout: 2s\nrateLimit: {requests: 5}\nmenus: [{title: G}]\n",
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.base.as_str()), ("@buntime/plugin-gateway", "/gateway"));
        assert_eq!((s.dependencies.clone(), s.optional_dependencies.clone()), (vec!["a".into()], vec!["b".into()]));
        assert!(s.fail_open);
        assert_eq!(s.hook_timeout, std::time::Duration::from_secs(2));
        assert_eq!(s.options["rateLimit"]["requests"], 5);
        assert!(s.options.contains_key("base") && s.options.contains_key("menus"), "base and menus are options too");
        assert!(!s.options.contains_key("name"));
    }

    #[test]
    fn bad_manifests_name_the_key() {
        for (yaml, needle) in [
            ("base: /x\n", "`name`: is required"),
            ("name: 3\n", "`name`: expected a non-empty string"),
            ("name: a\nbase: keyval\n", "`base`: \"keyval\" must be"),
            ("name: a\nbase: /a/b\n", "`base`: \"/a/b\" must be"),
            ("name: a\nbase: /api\n", "`base`: \"/api\" is reserved"),
            ("name: a\ndependencies: [1]\n", "`dependencies[0]`: expected a plugin name"),
            ("name: a\ndependencies: b\n", "`dependencies`: expected a list"),
            ("name: a\nonRequestFailOpen: \"yes\"\n", "`onRequestFailOpen`: expected true or false"),
            ("name: a\nhookTimeout: soon\n", "`hookTimeout`: invalid duration"),
            ("- a\n", "expected a mapping"),
        ] {
            let err = spec(yaml).unwrap_err();
            assert!(err.message().contains(needle), "{yaml:?}: {}", err.message());
            assert!(err.message().contains("/p/manifest.yaml"), "{}", err.message());
        }
    }

    #[test]
    fn scan_finds_plain_and_scoped_dirs_and_skips_hidden_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["b", "a", "@scope/c", ".hidden", "nomanifest"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for d in ["b", "a", "@scope/c", ".hidden"] {
            std::fs::write(root.join(d).join("manifest.yaml"), format!("name: {}\n", d.replace('/', "-"))).unwrap();
        }
        let names: Vec<String> = scan(&[root.to_path_buf()]).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["@scope/c", "a", "b"]);
    }
}
