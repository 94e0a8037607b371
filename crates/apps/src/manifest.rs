//! An app's manifest, typed.
//!
//! The struct below is the contract every other part of marina reads; parsing and validation
//! live beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Every key of an app manifest, resolved to its typed value with Buntime's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// `entrypoint`: relative to the app dir; `None` = auto (index.html, index.ts, index.js, index.mjs).
    pub entrypoint: Option<String>,
    /// `ttl` (default 0 = a fresh worker per request). Sliding.
    pub ttl: Duration,
    /// `idleTimeout` (default 60 s): after this much inactivity `onIdle` runs; notification only.
    pub idle_timeout: Duration,
    /// `timeout` (default 30 s): per-request deadline, then 504 and the worker is replaced.
    pub timeout: Duration,
    /// `maxRequests` (default 1000): the worker is recycled after this many requests.
    pub max_requests: u64,
    /// `lowMemory` (default false): start the JS engine in its low-memory mode where it has one.
    pub low_memory: bool,
    /// `autoInstall` (default false): `bun install --frozen-lockfile --ignore-scripts` first.
    pub auto_install: bool,
    /// `maxBodySize` in bytes (default 10 MiB, capped at 100 MiB with a warning).
    pub max_body_size: u64,
    /// `env` merged with the app's `.env` (`.env` wins).
    pub env: BTreeMap<String, String>,
    /// `envPrefix` (default `["PUBLIC_", "VITE_"]`): env vars injected into HTML as `window.__env__`.
    pub env_prefix: Vec<String>,
    /// `injectBase` (default false): inject `<base href="{x-base}/">` into HTML responses.
    pub inject_base: bool,
    /// `publicRoutes`: paths (globs) auth plugins should skip, per method.
    pub public_routes: PublicRoutes,
    /// `visibility` (default public).
    pub visibility: Visibility,
    /// `enabled` (default true): a disabled app answers 404.
    pub enabled: bool,
    /// `name` (informational; used by uploads).
    pub name: Option<String>,
    /// `version` (informational; used by uploads).
    pub version: Option<String>,
    /// marina: `command`, e.g. `["python3", "app.py"]`: run as a process app listening on `PORT`.
    pub command: Option<Vec<String>>,
    /// marina: `healthPath`: a process app is ready when this path answers (else when the port accepts).
    pub health_path: Option<String>,
    /// marina: `instances` (default 1/1): processes per app version.
    pub instances: Instances,
    /// marina: `maxMemory` in bytes: restart a worker whose RSS goes above it (a wasm
    /// instance's linear memory may not grow past it).
    pub max_memory: Option<u64>,
    /// `proxy`: reverse-proxy rules matched against the path below the app (docs/proxy.md).
    pub proxy: Vec<marina_proxy::RuleSpec>,
    /// marina: `autoMigrate` (default true): apply the app's pending `migrations/` to its own
    /// database before its first worker starts.
    pub auto_migrate: bool,
    /// marina: `sandbox.read`: absolute paths the app's workers may read besides their app dir,
    /// runtime and system files (Landlock; see [`crate::sandbox_key`] and docs/security.md).
    pub sandbox_read: Vec<PathBuf>,
    /// `allowedOutboundHosts` (Spin's key; wasm apps): where outgoing HTTP may go, as
    /// `scheme://host[:port]` patterns (`*` for any scheme, host or port; `*.example.com`).
    /// Empty (the default) denies all outgoing HTTP.
    pub allowed_outbound_hosts: Vec<String>,
    /// marina: `reuseInstances` (default false; wasm apps): one instance serves request after
    /// request instead of a fresh one per request.
    pub reuse_instances: bool,
}

/// `instances: 2` or `instances: {min: 1, max: 4}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instances {
    /// Processes kept running while the app is warm.
    pub min: u32,
    /// Upper bound on processes for the app version.
    pub max: u32,
}

/// `publicRoutes`: an array (all methods) or a map of method → globs (`ALL` applies to every method).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicRoutes {
    /// Method (upper case, or `ALL`) → glob patterns relative to the app base.
    pub by_method: BTreeMap<String, Vec<String>>,
}

/// `visibility`: used by the deployments UI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Listed and writable.
    #[default]
    Public,
    /// Listed, read-only.
    Protected,
    /// Hidden.
    Internal,
}

/// The default `maxBodySize`.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 10 * 1024 * 1024;
/// The ceiling on `maxBodySize`; larger values are capped with a warning.
pub const MAX_BODY_SIZE_CAP: u64 = 100 * 1024 * 1024;

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            entrypoint: None,
            ttl: Duration::ZERO,
            idle_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            max_requests: 1000,
            low_memory: false,
            auto_install: false,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            env: BTreeMap::new(),
            env_prefix: vec!["PUBLIC_".into(), "VITE_".into()],
            inject_base: false,
            public_routes: PublicRoutes::default(),
            visibility: Visibility::Public,
            enabled: true,
            name: None,
            version: None,
            command: None,
            health_path: None,
            instances: Instances { min: 1, max: 1 },
            max_memory: None,
            proxy: Vec::new(),
            auto_migrate: true,
            sandbox_read: Vec::new(),
            allowed_outbound_hosts: Vec::new(),
            reuse_instances: false,
        }
    }
}

/// Where a manifest was read from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSource(pub Option<PathBuf>);

// ---------------------------------------------------------------------------------------------
// Loading, parsing and validation.
//
// Two stages, as the style guide asks: the file is read into an untyped `serde_json::Value`
// (YAML through serde-saphyr, JSON through serde_json), then every known key is checked alone
// and converted, collecting every problem instead of stopping at the first; cross-field rules
// run last, only on keys that were individually valid. Walking a `Value` (rather than deriving
// `Deserialize` on a raw struct) is what lets one pass report *all* problems with their key
// paths, and lets unknown keys be warnings instead of failures.
// ---------------------------------------------------------------------------------------------

use std::fmt;
use std::path::Path;

use serde_json::{Map, Value, json};

use marina_core::app_file;
use marina_core::units::{UnitError, duration_from_value, size_from_value};

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

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path inside the file (`env.PORT`, `publicRoutes.GET[1]`, `instances.min`); empty
    /// when the problem is about the whole document (a syntax error, a non-map top level).
    pub path: String,
    /// What was wrong: what was found (quoted) and what was expected.
    pub message: String,
}

/// Every problem found in one manifest file. Its `Display` is the exact text `marina check`
/// prints for the file; it converts into the 500 `APP_MANIFEST_INVALID` error an app with a bad
/// manifest answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file the problems are in.
    pub file: PathBuf,
    /// All problems, in key order (never empty).
    pub problems: Vec<Problem>,
    /// Warnings found while reading the same file, so a typo (`tll`) is shown beside the error
    /// it causes.
    pub warnings: Vec<String>,
    /// The file was not read at all: it leads outside the app dir, is not a regular file or is
    /// too large ([`marina_core::app_file`]). Answered as `APP_FILE_REFUSED`, and its message
    /// never quotes the file.
    pub refused: bool,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        if self.refused {
            writeln!(f, "error: refused app file {}", self.file.display())?;
        } else {
            writeln!(
                f,
                "error: invalid app manifest {} ({n} problem{})",
                self.file.display(),
                if n == 1 { "" } else { "s" }
            )?;
        }
        for p in &self.problems {
            if p.path.is_empty() {
                writeln!(f, "  - {}", p.message)?;
            } else {
                writeln!(f, "  - `{}`: {}", p.path, p.message)?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {}: {w}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

impl From<ManifestError> for marina_core::Error {
    fn from(err: ManifestError) -> Self {
        let first = err
            .problems
            .first()
            .map(|p| if p.path.is_empty() { p.message.clone() } else { format!("`{}`: {}", p.path, p.message) });
        let more = err.problems.len().saturating_sub(1);
        let errors: Vec<Value> = err.problems.iter().map(|p| json!({ "path": p.path, "message": p.message })).collect();
        if err.refused {
            let why = err.problems.first().map(|p| p.message.as_str()).unwrap_or("refused");
            return marina_core::Error::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "APP_FILE_REFUSED",
                format!("app file {} refused: {why}", err.file.display()),
            )
            .with_data(json!({ "file": err.file.display().to_string(), "errors": errors }));
        }
        let mut message = format!("invalid app manifest {}", err.file.display());
        if let Some(first) = first {
            message.push_str(": ");
            message.push_str(&first);
        }
        if more > 0 {
            message.push_str(&format!(" (and {more} more)"));
        }
        marina_core::Error::new(http::StatusCode::INTERNAL_SERVER_ERROR, "APP_MANIFEST_INVALID", message)
            .with_data(json!({ "file": err.file.display().to_string(), "errors": errors }))
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

/// Parse a `.env` file as Buntime does: `KEY=VALUE` lines, `#` comments and blank lines skipped,
/// one layer of matching `'`/`"` around the value stripped, no interpolation. A leading
/// `export ` is accepted (shell habit). Lines without `=` are skipped with a warning.
///
/// Not `dotenvy`: it expands `${VAR}` and processes escapes inside double quotes, so the same
/// `.env` would give a Buntime app different values.
pub fn parse_dotenv(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut vars = BTreeMap::new();
    let mut warnings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            let shown: String = raw.chars().take(MAX_QUOTED_KEY_CHARS).collect();
            let cut = if shown.len() < raw.len() { "…" } else { "" };
            warnings.push(format!("line {} is ignored: expected KEY=VALUE, found {shown:?}{cut}", i + 1));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            warnings.push(format!("line {} is ignored: the key before `=` is empty", i + 1));
            continue;
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)).filter(|_| value.len() >= 2))
            .unwrap_or(value);
        vars.insert(key.to_string(), unquoted.to_string());
    }
    (vars, warnings)
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

/// Keep the first [`MAX_REPORTED`] items and say how many more there were.
fn cap<T>(items: &mut Vec<T>, more: impl Fn(usize) -> T) {
    if items.len() > MAX_REPORTED {
        let n = items.len() - MAX_REPORTED;
        items.truncate(MAX_REPORTED);
        items.push(more(n));
    }
}

/// serde-saphyr's plain message (no source snippet) with the position spelled out first.
fn yaml_error_message(e: &serde_saphyr::Error) -> String {
    let plain = e.without_snippet().to_string();
    let plain = plain.trim();
    match e.location() {
        Some(loc) if loc.line() > 0 => {
            let at = format!("line {}, column {}", loc.line(), loc.column());
            // Drop the library's own "at line X column Y" suffix so the position is said once.
            let msg = strip_location_suffix(plain);
            // The library's advice names its own API, which means nothing to a manifest author.
            let msg = msg.split(", set DuplicateKeyPolicy").next().unwrap_or(msg);
            format!("{at}: invalid YAML: {msg}")
        }
        _ => format!("invalid YAML: {plain}"),
    }
}

fn strip_location_suffix(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].trim_end_matches([',', ' ']),
        None => msg,
    }
}

/// serde_json's message without its trailing " at line L column C".
fn json_error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    strip_location_suffix(&s).to_string()
}

/// What a value is, quoted, for "found ..." in messages.
pub fn describe(value: &Value) -> String {
    fn clip(s: String) -> String {
        if s.chars().count() > 48 { format!("{}…", s.chars().take(47).collect::<String>()) } else { s }
    }
    match value {
        Value::Null => "nothing (null)".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", clip(Value::String(s.clone()).to_string())),
        Value::Array(_) => format!("a list {}", clip(value.to_string())),
        Value::Object(_) => format!("a map {}", clip(value.to_string())),
    }
}

/// A key path segment: `.key` for plain names, `["a.b"]` for anything else.
fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", Value::String(key.to_string())),
    }
}

/// Format a duration for messages: whole seconds as `30s`, else milliseconds.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Longest key the "did you mean" suggester looks at: a typo of a known key is short, and the
/// edit distance costs `len(key) × len(candidate)` per candidate.
pub const MAX_SUGGEST_KEY_CHARS: usize = 64;
/// Most candidates the suggester compares against.
pub const MAX_SUGGEST_CANDIDATES: usize = 64;
/// Most problems and most warnings one manifest reports (the rest are counted in a last line),
/// so a manifest of 100,000 unknown keys does not become 100,000 log lines and a huge error body.
pub const MAX_REPORTED: usize = 50;
/// Longest key quoted in a message; longer ones are cut with `…`.
const MAX_QUOTED_KEY_CHARS: usize = 64;

/// The known key closest to `key` when it is close enough to be a likely typo. Bounded: keys
/// longer than [`MAX_SUGGEST_KEY_CHARS`] get no suggestion, and only the first
/// [`MAX_SUGGEST_CANDIDATES`] candidates are compared.
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    if key.chars().nth(MAX_SUGGEST_KEY_CHARS).is_some() {
        return None;
    }
    let known = &known[..known.len().min(MAX_SUGGEST_CANDIDATES)];
    let norm = |s: &str| s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect::<String>();
    let k = norm(key);
    let mut best: Option<(usize, &'a str)> = None;
    for &cand in known {
        let d = osa_distance(&k, &norm(cand));
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    let (d, cand) = best?;
    let limit = (k.chars().count().max(3) / 3).max(1);
    (d <= limit).then_some(cand)
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions (`tll` → `ttl`
/// is one edit), which is what typos usually are.
fn osa_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

fn unknown_key_warning(path: &str, key: &str, known: &[&str]) -> String {
    let shown: String = if key.chars().nth(MAX_QUOTED_KEY_CHARS).is_some() {
        format!("{}…", key.chars().take(MAX_QUOTED_KEY_CHARS - 1).collect::<String>())
    } else {
        key.to_string()
    };
    let full = join_key(path, &shown);
    match suggest(key, known) {
        Some(s) => format!("unknown key `{full}` is ignored: did you mean `{}`?", join_key(path, s)),
        None => format!("unknown key `{full}` is ignored"),
    }
}

struct Validator {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Validator {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_string(), message: message.into() });
    }

    /// A scalar written as a string where Buntime's schema coerces it (`"true"`, `"500"`):
    /// accepted, with a warning that says how it was read.
    fn coerced(&mut self, path: &str, got: &Value, read_as: &str) {
        self.warnings.push(format!("`{path}` is {}; read as {read_as} (write it without quotes)", describe(got)));
    }

    fn expected(&mut self, path: &str, what: &str, got: &Value) {
        self.problem(path, format!("expected {what}, found {}", describe(got)));
    }

    fn config(&mut self, map: &Map<String, Value>) -> AppConfig {
        let mut c = AppConfig::default();
        // `null` (a key written with no value) means "not set": the default applies.
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());

        if let Some(v) = get("entrypoint") {
            c.entrypoint = self.entrypoint(v);
        }
        let ttl = get("ttl").and_then(|v| self.duration("ttl", v));
        let idle = get("idleTimeout").and_then(|v| self.duration("idleTimeout", v));
        let timeout = get("timeout").and_then(|v| self.duration("timeout", v));
        // ttl 0 means ephemeral; idleTimeout and timeout must be above 0.
        if let Some(t) = ttl {
            c.ttl = t;
        }
        if let Some(d) = idle {
            if d.is_zero() {
                self.problem("idleTimeout", format!("must be greater than 0, found {}", describe(&map["idleTimeout"])));
            } else {
                c.idle_timeout = d;
            }
        }
        if let Some(d) = timeout {
            if d.is_zero() {
                self.problem("timeout", format!("must be greater than 0, found {}", describe(&map["timeout"])));
            } else {
                c.timeout = d;
            }
        }

        if let Some(v) = get("maxRequests") {
            c.max_requests = self.uint("maxRequests", v).unwrap_or(c.max_requests);
        }
        for (key, slot) in [
            ("lowMemory", &mut c.low_memory),
            ("autoInstall", &mut c.auto_install),
            ("injectBase", &mut c.inject_base),
            ("enabled", &mut c.enabled),
            ("autoMigrate", &mut c.auto_migrate),
            ("reuseInstances", &mut c.reuse_instances),
        ] {
            if let Some(v) = get(key) {
                match v {
                    Value::Bool(b) => *slot = *b,
                    // Buntime's schema coerces these strings; accepted so its manifests keep working.
                    Value::String(s) if s == "true" || s == "false" => {
                        *slot = s == "true";
                        self.coerced(key, v, s);
                    }
                    other => self.expected(key, "a boolean (true or false)", other),
                }
            }
        }
        if let Some(size) = get("maxBodySize").and_then(|v| self.size("maxBodySize", v)) {
            if size == 0 {
                // 0 would refuse every request with a body; Buntime's schema rejects it too.
                self.problem("maxBodySize", format!("must be greater than 0, found {}", describe(&map["maxBodySize"])));
            } else if size > MAX_BODY_SIZE_CAP {
                self.warnings.push(format!(
                        "`maxBodySize` {size} bytes is above the ceiling of {MAX_BODY_SIZE_CAP} bytes (100mb) and is capped to it"
                    ));
                c.max_body_size = MAX_BODY_SIZE_CAP;
            } else {
                c.max_body_size = size;
            }
        }
        if let Some(v) = get("env") {
            c.env = self.env(v);
        }
        if let Some(list) = get("envPrefix").and_then(|v| self.string_list("envPrefix", v, false)) {
            c.env_prefix = list;
        }
        if let Some(v) = get("publicRoutes") {
            c.public_routes = self.public_routes(v);
        }
        if let Some(v) = get("visibility") {
            match v.as_str() {
                Some("public") => c.visibility = Visibility::Public,
                Some("protected") => c.visibility = Visibility::Protected,
                Some("internal") => c.visibility = Visibility::Internal,
                _ => self.expected("visibility", "one of \"public\", \"protected\", \"internal\"", v),
            }
        }
        for (key, slot) in [("name", &mut c.name), ("version", &mut c.version)] {
            if let Some(v) = get(key) {
                match v {
                    Value::String(s) if !s.trim().is_empty() => *slot = Some(s.clone()),
                    Value::Number(n) => self.problem(
                        key,
                        format!("expected a non-empty string, found the number {n} (quote it: {key}: \"{n}\")"),
                    ),
                    other => self.expected(key, "a non-empty string", other),
                }
            }
        }
        if let Some(v) = get("command") {
            c.command = self.string_list("command", v, true);
            if c.command.as_ref().is_some_and(Vec::is_empty) {
                self.problem(
                    "command",
                    "expected a non-empty list such as [\"python3\", \"app.py\"], found an empty list",
                );
                c.command = None;
            }
        }
        if let Some(v) = get("healthPath") {
            match v {
                Value::String(s) if s.starts_with('/') => c.health_path = Some(s.clone()),
                other => self.expected("healthPath", "a path starting with `/` (such as \"/health\")", other),
            }
        }
        if let Some(i) = get("instances").and_then(|v| self.instances(v)) {
            c.instances = i;
        }
        if let Some(v) = get("maxMemory") {
            match self.size("maxMemory", v) {
                Some(0) => self.problem("maxMemory", "must be greater than 0, found 0"),
                Some(n) => c.max_memory = Some(n),
                None => {}
            }
        }

        if let Some(v) = get("sandbox") {
            let parsed = crate::sandbox_key::parse(v);
            for (path, message) in parsed.problems {
                self.problem(&path, message);
            }
            self.warnings.extend(parsed.warnings);
            c.sandbox_read = parsed.read;
        }

        if let Some(v) = get("proxy") {
            let (rules, problems) = crate::proxy_rules::parse(v);
            for (path, message) in problems {
                self.problem(&path, message);
            }
            c.proxy = rules;
        }
        if let Some(list) = get("allowedOutboundHosts").and_then(|v| self.string_list("allowedOutboundHosts", v, true))
        {
            let mut ok = true;
            for (i, pattern) in list.iter().enumerate() {
                if let Err(e) = crate::outbound::HostPattern::parse(pattern) {
                    self.problem(&format!("allowedOutboundHosts[{i}]"), e);
                    ok = false;
                }
            }
            if ok {
                c.allowed_outbound_hosts = list;
            }
        }

        // Cross-field rules (Buntime `libs/pool/config.ts`), only between keys that were valid
        // alone; an invalid key would otherwise be reported twice.
        let all_ok = |k: &str, parsed: Option<Duration>| get(k).is_none() || parsed.is_some_and(|d| !d.is_zero());
        let ttl_ok = get("ttl").is_none() || ttl.is_some();
        if ttl_ok && !c.ttl.is_zero() && all_ok("timeout", timeout) && all_ok("idleTimeout", idle) {
            if c.ttl < c.timeout {
                self.problem(
                    "ttl",
                    format!(
                        "must be at least `timeout` ({}) when ttl is above 0, found {}",
                        fmt_duration(c.timeout),
                        fmt_duration(c.ttl)
                    ),
                );
            }
            if c.idle_timeout < c.timeout {
                self.problem(
                    "idleTimeout",
                    format!(
                        "must be at least `timeout` ({}) when ttl is above 0, found {}",
                        fmt_duration(c.timeout),
                        fmt_duration(c.idle_timeout)
                    ),
                );
            }
            if c.idle_timeout > c.ttl && c.ttl >= c.timeout {
                self.warnings.push(format!(
                    "`idleTimeout` ({}) is longer than `ttl` ({}) and is clamped to it",
                    fmt_duration(c.idle_timeout),
                    fmt_duration(c.ttl)
                ));
                c.idle_timeout = c.ttl;
            }
        }

        for key in map.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                let w = unknown_key_warning("", key, &KNOWN_KEYS);
                self.warnings.push(w);
            }
        }
        c
    }

    fn entrypoint(&mut self, v: &Value) -> Option<String> {
        let Value::String(s) = v else {
            self.expected("entrypoint", "a file path relative to the app dir (such as \"index.ts\")", v);
            return None;
        };
        if s.trim().is_empty() {
            self.expected("entrypoint", "a file path relative to the app dir (such as \"index.ts\")", v);
            return None;
        }
        let p = Path::new(s);
        if p.is_absolute() {
            self.problem("entrypoint", format!("must be relative to the app dir, found the absolute path {v}"));
            return None;
        }
        let mut depth: i64 = 0;
        for comp in p.components() {
            match comp {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                self.problem(
                    "entrypoint",
                    format!("must stay inside the app dir, found {v} which leaves it through `..`"),
                );
                return None;
            }
        }
        Some(s.clone())
    }

    fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        match duration_from_value(v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(path, unit_message(e, v));
                None
            }
        }
    }

    fn size(&mut self, path: &str, v: &Value) -> Option<u64> {
        match size_from_value(v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(path, unit_message(e, v));
                None
            }
        }
    }

    fn uint(&mut self, path: &str, v: &Value) -> Option<u64> {
        if let Value::String(s) = v
            && let Ok(n) = s.trim().parse::<u64>()
        {
            self.coerced(path, v, &n.to_string());
            return Some(n);
        }
        match v.as_u64() {
            Some(n) => Some(n),
            None => {
                self.expected(path, "a whole number of 0 or more", v);
                None
            }
        }
    }

    fn string_list(&mut self, path: &str, v: &Value, non_empty_items: bool) -> Option<Vec<String>> {
        let Value::Array(items) = v else {
            self.expected(path, "a list of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) if !(non_empty_items && s.is_empty()) => out.push(s.clone()),
                other => {
                    let what = if non_empty_items { "a non-empty string" } else { "a string" };
                    self.expected(&format!("{path}[{i}]"), what, other);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn env(&mut self, v: &Value) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Object(map) = v else {
            self.expected("env", "a map of variable names to values (such as `PORT: \"3000\"`)", v);
            return out;
        };
        for (k, val) in map {
            let path = join_key("env", k);
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.problem(
                    &path,
                    format!("invalid variable name {}: must be non-empty without `=`", Value::String(k.clone())),
                );
                continue;
            }
            // Values are coerced to strings, as Buntime's schema does; null becomes "".
            let s = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => {
                    self.expected(&path, "a string, number or boolean", other);
                    continue;
                }
            };
            if s.contains('\0') {
                self.problem(&path, "must not contain a NUL character");
                continue;
            }
            out.insert(k.clone(), s);
        }
        out
    }

    fn public_routes(&mut self, v: &Value) -> PublicRoutes {
        let mut out = PublicRoutes::default();
        match v {
            Value::Array(_) => {
                if let Some(list) = self.string_list("publicRoutes", v, true) {
                    out.by_method.insert("ALL".to_string(), list);
                }
            }
            Value::Object(map) => {
                for (method, list) in map {
                    let path = join_key("publicRoutes", method);
                    if !PUBLIC_ROUTE_METHODS.contains(&method.as_str()) {
                        let hint = match suggest(method, &PUBLIC_ROUTE_METHODS) {
                            Some(s) => format!(" (did you mean `{s}`?)"),
                            None => String::new(),
                        };
                        self.problem(
                            &path,
                            format!(
                                "unknown method {}: expected one of {}{hint}",
                                Value::String(method.clone()),
                                PUBLIC_ROUTE_METHODS.join(", ")
                            ),
                        );
                        continue;
                    }
                    if list.is_null() {
                        continue;
                    }
                    if let Some(list) = self.string_list(&path, list, true) {
                        out.by_method.insert(method.clone(), list);
                    }
                }
            }
            other => self.expected(
                "publicRoutes",
                "a list of paths, or a map of method (ALL, GET, POST, ...) to a list of paths",
                other,
            ),
        }
        out
    }

    fn instances(&mut self, v: &Value) -> Option<Instances> {
        let in_range = |n: u64| (1..=u64::from(MAX_INSTANCES)).contains(&n);
        match v {
            Value::Number(_) => match v.as_u64().filter(|n| in_range(*n)) {
                Some(n) => Some(Instances { min: n as u32, max: n as u32 }),
                None => {
                    self.expected("instances", &format!("a whole number from 1 to {MAX_INSTANCES}"), v);
                    None
                }
            },
            Value::Object(map) => {
                let field = |this: &mut Self, key: &str| -> Result<Option<u32>, ()> {
                    match map.get(key).filter(|v| !v.is_null()) {
                        None => Ok(None),
                        Some(x) => match x.as_u64().filter(|n| in_range(*n)) {
                            Some(n) => Ok(Some(n as u32)),
                            None => {
                                this.expected(
                                    &format!("instances.{key}"),
                                    &format!("a whole number from 1 to {MAX_INSTANCES}"),
                                    x,
                                );
                                Err(())
                            }
                        },
                    }
                };
                let min = field(self, "min");
                let max = field(self, "max");
                for k in map.keys().filter(|k| *k != "min" && *k != "max") {
                    let w = unknown_key_warning("instances", k, &["min", "max"]);
                    self.warnings.push(w);
                }
                let (Ok(min), Ok(max)) = (min, max) else { return None };
                let min_v = min.unwrap_or(1);
                let max_v = max.unwrap_or(min_v);
                if min_v > max_v {
                    self.problem(
                        "instances.min",
                        format!("must not be above `instances.max` ({max_v}), found {min_v}"),
                    );
                    return None;
                }
                Some(Instances { min: min_v, max: max_v })
            }
            other => {
                self.expected(
                    "instances",
                    &format!("a whole number from 1 to {MAX_INSTANCES} or a map {{min, max}}"),
                    other,
                );
                None
            }
        }
    }
}

/// Units' own messages already quote the value; a wrong JSON type reads better said plainly.
fn unit_message(e: UnitError, v: &Value) -> String {
    match (&e, v) {
        (UnitError::Duration { .. }, Value::Bool(_) | Value::Array(_) | Value::Object(_)) => format!(
            "expected a duration (a number of seconds or a string such as \"30s\", \"5m\"), found {}",
            describe(v)
        ),
        (UnitError::Size { .. }, Value::Bool(_) | Value::Array(_) | Value::Object(_)) => format!(
            "expected a size (a number of bytes or a string such as \"512kb\", \"10mb\"), found {}",
            describe(v)
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<LoadedManifest, ManifestError> {
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
    fn typos_get_a_suggestion() {
        assert_eq!(suggest("tll", &KNOWN_KEYS), Some("ttl"));
        assert_eq!(suggest("idle_timeout", &KNOWN_KEYS), Some("idleTimeout"));
        assert_eq!(suggest("maxbodysize", &KNOWN_KEYS), Some("maxBodySize"));
        assert_eq!(suggest("database", &KNOWN_KEYS), None);
        let m = parse("tll: 5\n").unwrap();
        assert_eq!(m.warnings, vec!["unknown key `tll` is ignored: did you mean `ttl`?"]);
    }

    #[test]
    fn the_suggester_and_the_reports_are_bounded() {
        // A key far longer than any typo gets no suggestion (and costs no edit distance).
        let long = "t".repeat(MAX_SUGGEST_KEY_CHARS + 1);
        assert_eq!(suggest(&long, &KNOWN_KEYS), None);
        let huge = "x".repeat(200_000);
        let m = parse_str(&format!("{{\"{huge}\": 1}}"), Format::Json, Path::new("/a/worker.config.json")).unwrap();
        assert_eq!(m.warnings.len(), 1);
        assert!(m.warnings[0].len() < 200, "{}", m.warnings[0]);
        // Thousands of unknown keys: the first MAX_REPORTED warnings and a count.
        let many: String = (0..5000).map(|i| format!("k{i}: 1\n")).collect();
        let m = parse(&many).unwrap();
        assert_eq!(m.warnings.len(), MAX_REPORTED + 1);
        assert_eq!(m.warnings.last().unwrap(), &format!("{} more warnings are not shown", 5000 - MAX_REPORTED));
        let bad: String = (0..500).map(|i| format!("env:\n  K{i}: [1]\n")).take(1).collect::<String>()
            + &(0..500).map(|i| format!("  K{i}x: [1]\n")).collect::<String>();
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.problems.len(), MAX_REPORTED + 1, "{e}");
    }

    #[test]
    fn converts_into_the_500_error_body() {
        let e = parse("ttl: 5x\nvisibility: secret\n").unwrap_err();
        let err: marina_core::Error = e.into();
        assert_eq!(err.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.code(), "APP_MANIFEST_INVALID");
        assert!(
            err.message().starts_with("invalid app manifest /apps/x/manifest.yaml: `ttl`: invalid duration \"5x\"")
        );
        assert!(err.message().ends_with("(and 1 more)"));
        let data = err.data().unwrap();
        assert_eq!(data["file"], "/apps/x/manifest.yaml");
        assert_eq!(data["errors"][1]["path"], "visibility");
    }

    #[test]
    fn dotenv_as_buntime_reads_it() {
        let (vars, warnings) =
            parse_dotenv("# c\n\nA=1\nB=\"two words\"\nC='x'\nexport D = y \nE=a=b\nnoequals\nF=\"\n");
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x");
        assert_eq!(vars["D"], "y");
        assert_eq!(vars["E"], "a=b");
        assert_eq!(vars["F"], "\"");
        assert_eq!(warnings, vec!["line 8 is ignored: expected KEY=VALUE, found \"noequals\""]);
    }

    #[test]
    fn json_manifest() {
        let m = parse_str(r#"{"ttl": 60, "entrypoint": "index.js"}"#, Format::Json, Path::new("w.json")).unwrap();
        assert_eq!(m.config.ttl, Duration::from_secs(60));
        let e = parse_str("{\"ttl\": }", Format::Json, Path::new("w.json")).unwrap_err();
        assert!(e.problems[0].message.starts_with("line 1, column 9: invalid JSON"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,64}") {
            let _ = parse(&s);
            let _ = parse_str(&s, Format::Json, Path::new("x.json"));
        }
    }
}
