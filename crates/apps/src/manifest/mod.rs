//! An app's manifest, typed.
//!
//! [`AppConfig`] (in `config`) is the contract every other part of marina reads. Reading a file
//! into it takes two stages, as the style guide asks: the file is read into an untyped
//! `serde_json::Value` (YAML through serde-saphyr, JSON through serde_json), then every known
//! key is checked alone and converted (`validate`, with one reader per kind of value in
//! `values`), collecting every problem instead of stopping at the first; cross-field rules run
//! last, only on keys that were individually valid. Walking a `Value` (rather than deriving
//! `Deserialize` on a raw struct) is what lets one pass report *all* problems with their key
//! paths, and lets unknown keys be warnings instead of failures. How problems are worded,
//! bounded and turned into errors is `report`; the `.env` file is `dotenv`.

mod config;
mod dotenv;
mod report;
mod validate;
mod values;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use marina_core::app_file;

pub use config::{
    AppConfig, DEFAULT_MAX_BODY_SIZE, Instances, MAX_BODY_SIZE_CAP, ManifestSource, PublicRoutes, Visibility,
};
pub use dotenv::parse_dotenv;
pub use report::{
    MAX_REPORTED, MAX_SUGGEST_CANDIDATES, MAX_SUGGEST_KEY_CHARS, ManifestError, Problem, describe, suggest,
};
use report::{cap, json_error_text, yaml_error_message};
use validate::Validator;

/// Manifest file names, in the order they are looked for. The first that exists is read; the
/// others are ignored with a warning. `worker.config.json` is Buntime's legacy name.
pub const MANIFEST_FILES: [&str; 3] = ["manifest.yaml", "manifest.yml", "worker.config.json"];

/// Every top-level key a manifest may have, in the order problems are reported.
pub const KNOWN_KEYS: [&str; 25] = [
    "entrypoint",
    "ttl",
    "idleTimeout",
    "timeout",
    "maxRequests",
    "lowMemory",
    "autoInstall",
    "maxBodySize",
    "env",
    "envPrefix",
    "injectBase",
    "publicRoutes",
    "visibility",
    "enabled",
    "name",
    "version",
    "command",
    "healthPath",
    "instances",
    "maxMemory",
    "proxy",
    "autoMigrate",
    "sandbox",
    "allowedOutboundHosts",
    "reuseInstances",
];

/// The keys allowed in the map form of `publicRoutes`.
pub const PUBLIC_ROUTE_METHODS: [&str; 8] = ["ALL", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The most processes `instances` may ask for per app version.
pub const MAX_INSTANCES: u32 = 64;

/// A manifest read from an app dir: the typed config, what deserves a warning, and which file it
/// came from (`None` when the dir has no manifest and defaults apply).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedManifest {
    /// The typed config, defaults applied, `.env` merged over `env`.
    pub config: AppConfig,
    /// Human-readable warnings (unknown keys, clamped values, ignored files).
    pub warnings: Vec<String>,
    /// The manifest file that was read, if any.
    pub source: Option<PathBuf>,
}

/// The syntax of a manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `manifest.yaml` / `manifest.yml`.
    Yaml,
    /// The legacy `worker.config.json`.
    Json,
}

impl Format {
    /// The format a manifest file name implies (`.json` → JSON, anything else YAML).
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// The manifest file of an app dir: the first of [`MANIFEST_FILES`] that exists, whatever it is
/// (a FIFO or a symlink leading out of the dir is found, so that it is refused, not skipped).
pub fn find_manifest(dir: &Path) -> Option<PathBuf> {
    MANIFEST_FILES.iter().find(|n| app_file::has_entry(dir, n)).map(|n| dir.join(n))
}

/// Read one of the app's own files (manifest, `.env`) through [`app_file::read_in_dir`]:
/// `Ok(None)` when it does not exist, an error saying why it was refused otherwise.
fn read_app_file(dir: &Path, file: &Path, warnings: &[String]) -> Result<Option<Vec<u8>>, ManifestError> {
    let name = file.file_name().map(Path::new).unwrap_or(file);
    app_file::read_in_dir(dir, name, app_file::MAX_APP_FILE_BYTES).map_err(|r| ManifestError {
        file: file.to_path_buf(),
        refused: r.is_unsafe(),
        problems: vec![Problem { path: String::new(), message: r.to_string() }],
        warnings: warnings.to_vec(),
    })
}

/// Read the manifest of the app in `dir` (none = defaults) and merge the dir's `.env` over its
/// `env`.
///
/// # Errors
/// A [`ManifestError`] listing every problem when the manifest cannot be read, is not valid
/// YAML/JSON, or has keys of the wrong type or value.
pub fn load(dir: &Path) -> Result<LoadedManifest, ManifestError> {
    let mut warnings = Vec::new();
    let source = find_manifest(dir);
    if let Some(src) = &source {
        for other in
            MANIFEST_FILES.iter().filter(|n| app_file::has_entry(dir, n)).map(|n| dir.join(n)).filter(|p| p != src)
        {
            warnings.push(format!(
                "{} is ignored because {} is read first",
                other.display(),
                src.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
    }
    let mut loaded = match &source {
        None => LoadedManifest { config: AppConfig::default(), warnings: Vec::new(), source: None },
        Some(file) => {
            let text = read_app_file(dir, file, &warnings)?.ok_or_else(|| ManifestError {
                file: file.clone(),
                problems: vec![Problem {
                    path: String::new(),
                    message: "cannot read it: a symlink to nothing (dangling)".to_string(),
                }],
                warnings: warnings.clone(),
                refused: false,
            })?;
            let text = String::from_utf8(text).map_err(|e| ManifestError {
                file: file.clone(),
                problems: vec![Problem {
                    path: String::new(),
                    message: format!("the file is not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()),
                }],
                warnings: warnings.clone(),
                refused: false,
            })?;
            parse_str(&text, Format::from_path(file), file).map_err(|mut e| {
                warnings.append(&mut e.warnings);
                e.warnings = std::mem::take(&mut warnings);
                e
            })?
        }
    };
    warnings.append(&mut loaded.warnings);
    loaded.warnings = warnings;

    // The `.env` is held to the manifest's rules: an app whose `.env` leads out of its dir, is a
    // FIFO or is huge does not load (running it without its settings would be worse).
    let env_file = dir.join(".env");
    match read_app_file(dir, &env_file, &loaded.warnings) {
        Ok(Some(bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            let (vars, env_warnings) = parse_dotenv(&text);
            loaded.config.env.extend(vars);
            loaded.warnings.extend(env_warnings.into_iter().map(|w| format!("{}: {w}", env_file.display())));
        }
        Ok(None) => {}
        Err(e) if e.refused => return Err(e),
        Err(e) => loaded.warnings.push(format!("{} is ignored: {}", env_file.display(), e.problems[0].message)),
    }
    cap(&mut loaded.warnings, |n| format!("{n} more warnings are not shown"));
    Ok(loaded)
}

/// Parse and validate manifest text. `file` is only used in messages. `.env` is not read.
///
/// # Errors
/// A [`ManifestError`] with every problem found.
pub fn parse_str(text: &str, format: Format, file: &Path) -> Result<LoadedManifest, ManifestError> {
    let fail = |message: String| ManifestError {
        file: file.to_path_buf(),
        problems: vec![Problem { path: String::new(), message }],
        warnings: Vec::new(),
        refused: false,
    };
    let value: Value = match format {
        Format::Yaml => {
            if text.trim().is_empty() {
                Value::Null
            } else {
                serde_saphyr::from_str::<Value>(text).map_err(|e| fail(yaml_error_message(&e)))?
            }
        }
        Format::Json => serde_json::from_str::<Value>(text).map_err(|e| {
            fail(format!("line {}, column {}: invalid JSON: {}", e.line(), e.column(), json_error_text(&e)))
        })?,
    };
    let map = match value {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        other => {
            return Err(fail(format!(
                "expected a map of keys (such as `entrypoint: index.ts`) at the top level, found {}",
                describe(&other)
            )));
        }
    };
    let mut v = Validator { problems: Vec::new(), warnings: Vec::new() };
    let config = v.config(&map);
    cap(&mut v.warnings, |n| format!("{n} more warnings are not shown"));
    cap(&mut v.problems, |n| Problem { path: String::new(), message: format!("{n} more problems are not shown") });
    if v.problems.is_empty() {
        Ok(LoadedManifest { config, warnings: v.warnings, source: Some(file.to_path_buf()) })
    } else {
        Err(ManifestError { file: file.to_path_buf(), problems: v.problems, warnings: v.warnings, refused: false })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Parse YAML manifest text as if read from an app dir (the other modules' tests use it too).
    pub(super) fn parse(yaml: &str) -> Result<LoadedManifest, ManifestError> {
        parse_str(yaml, Format::Yaml, Path::new("/apps/x/manifest.yaml"))
    }

    #[test]
    fn empty_manifest_is_all_defaults() {
        let m = parse("").unwrap();
        assert_eq!(m.config, AppConfig::default());
        assert!(m.warnings.is_empty());
        assert_eq!(parse("# only a comment\n").unwrap().config, AppConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let m = parse(
            r#"
entrypoint: dist/index.html
ttl: 5m
idleTimeout: 60
timeout: "30s"
maxRequests: 10
lowMemory: true
autoInstall: true
maxBodySize: 2mb
env: {PORT: 3000, DEBUG: true, NAME: x}
envPrefix: [APP_]
injectBase: true
publicRoutes: {GET: ["/assets/**"], ALL: ["/health"]}
visibility: internal
enabled: false
name: todo
version: 1.2.3
command: [python3, app.py]
healthPath: /health
instances: {min: 2, max: 4}
maxMemory: 256mb
sandbox: {read: [/usr/share/fonts]}
"#,
        )
        .unwrap();
        let c = m.config;
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert_eq!(c.entrypoint.as_deref(), Some("dist/index.html"));
        assert_eq!(c.ttl, Duration::from_secs(300));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.max_requests, 10);
        assert!(c.low_memory && c.auto_install && c.inject_base && !c.enabled);
        assert_eq!(c.max_body_size, 2 * 1024 * 1024);
        assert_eq!(c.env["PORT"], "3000");
        assert_eq!(c.env["DEBUG"], "true");
        assert_eq!(c.env_prefix, vec!["APP_"]);
        assert_eq!(c.public_routes.by_method["GET"], vec!["/assets/**"]);
        assert_eq!(c.visibility, Visibility::Internal);
        assert_eq!(c.command.as_deref(), Some(&["python3".to_string(), "app.py".to_string()][..]));
        assert_eq!(c.instances, Instances { min: 2, max: 4 });
        assert_eq!(c.max_memory, Some(256 * 1024 * 1024));
        assert_eq!(c.sandbox_read, [PathBuf::from("/usr/share/fonts")]);
    }

    #[test]
    fn idle_timeout_above_ttl_is_clamped_with_a_warning() {
        let m = parse("ttl: 40s\nidleTimeout: 2m\n").unwrap();
        assert_eq!(m.config.idle_timeout, Duration::from_secs(40));
        assert_eq!(m.warnings, vec!["`idleTimeout` (120s) is longer than `ttl` (40s) and is clamped to it"]);
    }

    #[test]
    fn all_problems_are_collected() {
        let e = parse("ttl: 5x\ntimeout: 0\nenv: {A: [1]}\ninstances: {min: 0}\n").unwrap_err();
        let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["ttl", "timeout", "env.A", "instances.min"]);
    }

    #[test]
    fn json_manifest() {
        let m = parse_str(r#"{"ttl": 60, "entrypoint": "index.js"}"#, Format::Json, Path::new("w.json")).unwrap();
        assert_eq!(m.config.ttl, Duration::from_secs(60));
        let e = parse_str("{\"ttl\": }", Format::Json, Path::new("w.json")).unwrap_err();
        assert!(e.problems[0].message.starts_with("line 1, column 9: invalid JSON"), "{e}");
    }

    #[test]
    fn deeply_nested_manifests_are_errors_not_stack_overflows() {
        // A hostile app's manifest is read by marina itself: nesting must hit the parsers' depth
        // limits (serde-saphyr's budget, serde_json's recursion limit), never the stack.
        let depth = 100_000;
        let yaml = format!("env: {}{}\n", "[".repeat(depth), "]".repeat(depth));
        assert!(parse(&yaml).is_err());
        let json = format!("{{\"env\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_str(&json, Format::Json, Path::new("w.json")).is_err());
        let yaml_maps = format!("env: {}1{}\n", "{a: ".repeat(depth), "}".repeat(depth));
        assert!(parse(&yaml_maps).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,64}") {
            let _ = parse(&s);
            let _ = parse_str(&s, Format::Json, Path::new("x.json"));
        }
    }
}
