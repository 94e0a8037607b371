//! Runtime configuration in two stages: raw strings as the user wrote them (flags or env vars),
//! then a validated [`RuntimeConfig`]. Every value is checked alone and the first bad one stops
//! start-up with a message that names the variable, quotes the value and says what was expected
//! (the CLI exits 2 on it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use marina_core::units::parse_duration;

/// Values as given on the command line or in the environment, before any check.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    /// `PORT` / `--port`.
    pub port: Option<String>,
    /// `RUNTIME_HOST` / `--host`.
    pub host: Option<String>,
    /// `RUNTIME_WORKER_DIRS` / `--worker-dirs`, colon-separated.
    pub worker_dirs: Option<String>,
    /// `RUNTIME_PLUGIN_DIRS` / `--plugin-dirs`, colon-separated.
    pub plugin_dirs: Option<String>,
    /// `RUNTIME_API_PREFIX` / `--api-prefix`.
    pub api_prefix: Option<String>,
    /// `RUNTIME_POOL_SIZE` / `--pool-size`.
    pub pool_size: Option<String>,
    /// `RUNTIME_LOG_LEVEL` / `--log-level`.
    pub log_level: Option<String>,
    /// `RUNTIME_LOG_FORMAT` / `--log-format`.
    pub log_format: Option<String>,
    /// `RUNTIME_STATE_DIR` / `--state-dir`.
    pub state_dir: Option<String>,
    /// `NODE_ENV` / `--node-env`.
    pub node_env: Option<String>,
    /// `RUNTIME_SHUTDOWN_TIMEOUT` / `--shutdown-timeout`.
    pub shutdown_timeout: Option<String>,
    /// `RUNTIME_EPHEMERAL_CONCURRENCY`.
    pub ephemeral_concurrency: Option<String>,
    /// `RUNTIME_EPHEMERAL_QUEUE_LIMIT`.
    pub ephemeral_queue_limit: Option<String>,
    /// `RUNTIME_JS`: `bun`, `node` or a path.
    pub js_runtime: Option<String>,
    /// `DATABASE_URL`.
    pub database_url: Option<String>,
}

/// `NODE_ENV`: picks the log format and how much error detail clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEnv {
    /// Readable logs, full error messages.
    Development,
    /// JSON logs, internal error messages hidden from clients.
    Production,
    /// Like production, for a staging deployment.
    Staging,
    /// Used by test suites.
    Test,
}

impl NodeEnv {
    /// The value as written in `NODE_ENV`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeEnv::Development => "development",
            NodeEnv::Production => "production",
            NodeEnv::Staging => "staging",
            NodeEnv::Test => "test",
        }
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration of `marina serve`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Listen address.
    pub host: String,
    /// Listen port (0 = any free port, useful for tests).
    pub port: u16,
    /// Where apps live, in priority order.
    pub worker_dirs: Vec<PathBuf>,
    /// Where plugins live.
    pub plugin_dirs: Vec<PathBuf>,
    /// Prefix of the internal API: `""` gives `/api`, `/_` gives `/_/api`.
    pub api_prefix: String,
    /// Upper bound of warm workers (LRU).
    pub pool_size: usize,
    /// `debug`, `info`, `warn` or `error`.
    pub log_level: String,
    /// Text or JSON log lines.
    pub log_format: LogFormat,
    /// Runtime state: sockets, the SQLite database, app databases.
    pub state_dir: PathBuf,
    /// `NODE_ENV`.
    pub node_env: NodeEnv,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// `ttl: 0` requests running at once.
    pub ephemeral_concurrency: usize,
    /// `ttl: 0` requests waiting before 503.
    pub ephemeral_queue_limit: usize,
    /// `RUNTIME_JS`.
    pub js_runtime: Option<String>,
    /// `DATABASE_URL` (`None` = SQLite in the state dir).
    pub database_url: Option<String>,
}

/// A configuration value that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var} (--{flag}) {got:?}: expected {expected}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The command-line flag.
    pub flag: &'static str,
    /// The value as given.
    pub got: String,
    /// What would have been accepted.
    pub expected: String,
}

fn bad(var: &'static str, flag: &'static str, got: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError { var, flag, got: got.to_string(), expected: expected.into() }
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn number(
    raw: &Option<String>,
    var: &'static str,
    flag: &'static str,
    range: std::ops::RangeInclusive<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    match nonempty(raw) {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| bad(var, flag, s, format!("a whole number from {} to {}", range.start(), range.end()))),
    }
}

fn dir_list(raw: &str) -> Vec<PathBuf> {
    raw.split(':').map(str::trim).filter(|s| !s.is_empty()).map(PathBuf::from).collect()
}

/// The default worker dirs: the bundled examples when run from the repository, else `./apps`.
pub fn default_worker_dirs(cwd: &Path) -> Vec<PathBuf> {
    let bundled = cwd.join("examples/apps");
    if bundled.is_dir() { vec![bundled] } else { vec![cwd.join("apps")] }
}

impl RuntimeConfig {
    /// Check every raw value; relative dirs are resolved against `cwd`.
    pub fn from_raw(raw: &RawConfig, cwd: &Path) -> Result<Self, ConfigError> {
        let port = match nonempty(&raw.port) {
            None => 8000,
            Some(s) => s.parse::<u16>().map_err(|_| bad("PORT", "port", s, "a port number from 0 to 65535"))?,
        };
        let host = match nonempty(&raw.host) {
            None => "127.0.0.1".to_string(),
            Some(s) => {
                if s.parse::<std::net::IpAddr>().is_err() && s != "localhost" {
                    return Err(bad("RUNTIME_HOST", "host", s, "an IP address such as 127.0.0.1 or 0.0.0.0"));
                }
                s.to_string()
            }
        };
        let absolute = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
        let worker_dirs = match nonempty(&raw.worker_dirs) {
            None => default_worker_dirs(cwd),
            Some(s) => {
                let dirs = dir_list(s);
                if dirs.is_empty() {
                    return Err(bad("RUNTIME_WORKER_DIRS", "worker-dirs", s, "a colon-separated list of directories"));
                }
                dirs.into_iter().map(absolute).collect()
            }
        };
        let plugin_dirs = match nonempty(&raw.plugin_dirs) {
            None => vec![cwd.join("plugins")],
            Some(s) => dir_list(s).into_iter().map(absolute).collect(),
        };
        let api_prefix = match nonempty(&raw.api_prefix) {
            None => String::new(),
            Some(s) => normalize_prefix(s).ok_or_else(|| {
                bad(
                    "RUNTIME_API_PREFIX",
                    "api-prefix",
                    s,
                    "a path prefix such as \"/_\" (letters, digits, '-', '_', '.', separated by '/')",
                )
            })?,
        };
        let pool_size = number(&raw.pool_size, "RUNTIME_POOL_SIZE", "pool-size", 1..=100_000, 100)?;
        let log_level = match nonempty(&raw.log_level) {
            None => "info".to_string(),
            Some(s) => {
                let l = s.to_ascii_lowercase();
                if !["trace", "debug", "info", "warn", "error"].contains(&l.as_str()) {
                    return Err(bad("RUNTIME_LOG_LEVEL", "log-level", s, "one of trace, debug, info, warn, error"));
                }
                l
            }
        };
        let node_env = match nonempty(&raw.node_env) {
            None => NodeEnv::Development,
            Some("development") => NodeEnv::Development,
            Some("production") => NodeEnv::Production,
            Some("staging") => NodeEnv::Staging,
            Some("test") => NodeEnv::Test,
            Some(s) => return Err(bad("NODE_ENV", "node-env", s, "one of development, production, staging, test")),
        };
        let log_format = match nonempty(&raw.log_format) {
            None if node_env == NodeEnv::Production => LogFormat::Json,
            None => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(s) => return Err(bad("RUNTIME_LOG_FORMAT", "log-format", s, "text or json")),
        };
        let state_dir =
            nonempty(&raw.state_dir).map(PathBuf::from).map(absolute).unwrap_or_else(|| cwd.join(".marina"));
        let shutdown_timeout = match nonempty(&raw.shutdown_timeout) {
            None => Duration::from_secs(30),
            Some(s) => {
                // A bare number here means seconds, like every other duration flag of marina.
                let parsed = match s.parse::<f64>() {
                    Ok(secs) if secs.is_finite() && secs >= 0.0 => Some(Duration::from_secs_f64(secs)),
                    Ok(_) => None,
                    Err(_) => parse_duration(s).ok(),
                };
                parsed.ok_or_else(|| {
                    bad(
                        "RUNTIME_SHUTDOWN_TIMEOUT",
                        "shutdown-timeout",
                        s,
                        "a duration such as 30 (seconds), \"10s\" or \"2m\"",
                    )
                })?
            }
        };
        let ephemeral_concurrency = number(
            &raw.ephemeral_concurrency,
            "RUNTIME_EPHEMERAL_CONCURRENCY",
            "ephemeral-concurrency",
            1..=10_000,
            2,
        )?
        .min(pool_size);
        let ephemeral_queue_limit = number(
            &raw.ephemeral_queue_limit,
            "RUNTIME_EPHEMERAL_QUEUE_LIMIT",
            "ephemeral-queue-limit",
            0..=1_000_000,
            100,
        )?;
        let js_runtime = match nonempty(&raw.js_runtime) {
            None => None,
            Some(s) if s == "bun" || s == "node" => Some(s.to_string()),
            Some(s) if s.contains('/') && is_executable_file(&absolute(PathBuf::from(s))) => {
                Some(absolute(PathBuf::from(s)).display().to_string())
            }
            Some(s) => {
                return Err(bad("RUNTIME_JS", "js-runtime", s, "bun, node, or the path of an executable Bun or Node"));
            }
        };
        let database_url = match nonempty(&raw.database_url) {
            None => None,
            Some(s) if s.starts_with("sqlite:") || s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                Some(s.to_string())
            }
            Some(s) => return Err(bad("DATABASE_URL", "database-url", s, "sqlite://PATH or postgres://USER@HOST/DB")),
        };
        Ok(Self {
            host,
            port,
            worker_dirs,
            plugin_dirs,
            api_prefix,
            pool_size,
            log_level,
            log_format,
            state_dir,
            node_env,
            shutdown_timeout,
            ephemeral_concurrency,
            ephemeral_queue_limit,
            js_runtime,
            database_url,
        })
    }

    /// The internal API's base path, e.g. `/api` or `/_/api`.
    pub fn api_base(&self) -> String {
        format!("{}/api", self.api_prefix)
    }
}

/// A file that exists and has an execute bit (whether it runs is only known when it does).
fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `"/_/"` → `"/_"`, `"_"` → `"/_"`, `"/"` → `""`; `None` for anything that is not a clean path.
fn normalize_prefix(s: &str) -> Option<String> {
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return Some(String::new());
    }
    let ok = trimmed.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    ok.then(|| format!("/{trimmed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig::default()
    }

    #[test]
    fn defaults() {
        let cfg = RuntimeConfig::from_raw(&raw(), Path::new("/nowhere")).unwrap();
        assert_eq!(cfg.port, 8000);
        assert_eq!(cfg.pool_size, 100);
        assert_eq!(cfg.api_prefix, "");
        assert_eq!(cfg.api_base(), "/api");
        assert_eq!(cfg.worker_dirs, vec![PathBuf::from("/nowhere/apps")]);
        assert_eq!(cfg.state_dir, PathBuf::from("/nowhere/.marina"));
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(cfg.ephemeral_concurrency, 2);
    }

    #[test]
    fn bad_values_name_the_variable_and_say_what_is_expected() {
        type Case = (fn(&mut RawConfig), &'static str);
        let cases: &[Case] = &[
            (|r| r.port = Some("80a".into()), "invalid PORT (--port) \"80a\": expected a port number from 0 to 65535"),
            (
                |r| r.port = Some("70000".into()),
                "invalid PORT (--port) \"70000\": expected a port number from 0 to 65535",
            ),
            (
                |r| r.pool_size = Some("0".into()),
                "invalid RUNTIME_POOL_SIZE (--pool-size) \"0\": expected a whole number from 1 to 100000",
            ),
            (
                |r| r.pool_size = Some("many".into()),
                "invalid RUNTIME_POOL_SIZE (--pool-size) \"many\": expected a whole number from 1 to 100000",
            ),
            (
                |r| r.log_level = Some("loud".into()),
                "invalid RUNTIME_LOG_LEVEL (--log-level) \"loud\": expected one of trace, debug, info, warn, error",
            ),
            (
                |r| r.node_env = Some("prod".into()),
                "invalid NODE_ENV (--node-env) \"prod\": expected one of development, production, staging, test",
            ),
            (
                |r| r.api_prefix = Some("/a b".into()),
                "invalid RUNTIME_API_PREFIX (--api-prefix) \"/a b\": expected a path prefix such as \"/_\" (letters, digits, '-', '_', '.', separated by '/')",
            ),
            (
                |r| r.api_prefix = Some("/../x".into()),
                "invalid RUNTIME_API_PREFIX (--api-prefix) \"/../x\": expected a path prefix such as \"/_\" (letters, digits, '-', '_', '.', separated by '/')",
            ),
            (
                |r| r.shutdown_timeout = Some("soon".into()),
                "invalid RUNTIME_SHUTDOWN_TIMEOUT (--shutdown-timeout) \"soon\": expected a duration such as 30 (seconds), \"10s\" or \"2m\"",
            ),
            (
                |r| r.database_url = Some("mysql://x".into()),
                "invalid DATABASE_URL (--database-url) \"mysql://x\": expected sqlite://PATH or postgres://USER@HOST/DB",
            ),
            (
                |r| r.log_format = Some("xml".into()),
                "invalid RUNTIME_LOG_FORMAT (--log-format) \"xml\": expected text or json",
            ),
            (
                |r| r.js_runtime = Some("deno".into()),
                "invalid RUNTIME_JS (--js-runtime) \"deno\": expected bun, node, or the path of an executable Bun or Node",
            ),
            (
                |r| r.js_runtime = Some("/no/such/bun".into()),
                "invalid RUNTIME_JS (--js-runtime) \"/no/such/bun\": expected bun, node, or the path of an executable Bun or Node",
            ),
            (
                |r| r.host = Some("my host".into()),
                "invalid RUNTIME_HOST (--host) \"my host\": expected an IP address such as 127.0.0.1 or 0.0.0.0",
            ),
        ];
        for (set, message) in cases {
            let mut r = raw();
            set(&mut r);
            assert_eq!(RuntimeConfig::from_raw(&r, Path::new("/")).unwrap_err().to_string(), *message);
        }
    }

    #[test]
    fn prefixes_are_normalised() {
        for (given, want) in [("/_", "/_"), ("_/", "/_"), ("/", ""), ("/a/b/", "/a/b")] {
            let mut r = raw();
            r.api_prefix = Some(given.into());
            assert_eq!(RuntimeConfig::from_raw(&r, Path::new("/")).unwrap().api_prefix, want);
        }
    }

    #[test]
    fn production_logs_json_and_dirs_resolve_against_cwd() {
        let mut r = raw();
        r.node_env = Some("production".into());
        r.worker_dirs = Some("apps:/abs/more::".into());
        r.shutdown_timeout = Some("5s".into());
        let cfg = RuntimeConfig::from_raw(&r, Path::new("/srv")).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.worker_dirs, vec![PathBuf::from("/srv/apps"), PathBuf::from("/abs/more")]);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(5));
    }
}
