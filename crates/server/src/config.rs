//! Runtime configuration in two stages: raw strings as the user wrote them (flags or env vars),
//! then a validated [`RuntimeConfig`]. Every value is checked alone and the first bad one stops
//! start-up with a message that names the variable, quotes the value and says what was expected
//! (the CLI exits 2 on it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use marina_core::settings::{dir_list, normalize_prefix, parse_cidrs, setting};
use marina_workers::process::sandbox::SandboxOptions;

pub use marina_core::settings::{ConfigError, RawSettings as RawConfig};

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

/// `RUNTIME_SCHEDULER`: where a connection's work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Every connection is a task of one work-stealing runtime of `RUNTIME_THREADS` threads.
    Shared,
    /// Each connection stays on one of `RUNTIME_THREADS` single-threaded runtimes (the
    /// module doc of `conn_threads` says why); background work runs on a shared runtime of one
    /// thread.
    PerThread,
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
    /// `RUNTIME_THREADS`: the async runtime's worker threads; `None` leaves tokio's default, one
    /// per CPU this process may run on (its affinity and cgroup quota count).
    ///
    /// Fewer can be faster: marina's app workers are processes doing the apps' work on the same
    /// CPUs, and on this project's 2-CPU machine one thread served 1 KiB static files and a JS
    /// app doing ~0.2 ms of work per request faster than two, with fewer context switches per
    /// request. It is not the default because one thread serves a burst of requests one after
    /// the other: with 32 requests arriving together every 5 ms its p50 was 1.78 ms against 1.27
    /// with two (BENCHMARKS.md, "One async thread on 2 CPUs").
    pub threads: Option<usize>,
    /// `RUNTIME_SCHEDULER`: how connections are spread over the threads.
    pub scheduler: Scheduler,
    /// `debug`, `info`, `warn` or `error`.
    pub log_level: String,
    /// Text or JSON log lines.
    pub log_format: LogFormat,
    /// Runtime state: sockets, the SQLite database, app databases.
    pub state_dir: PathBuf,
    /// `NODE_ENV`.
    pub node_env: NodeEnv,
    /// The longest the whole exit after SIGTERM/SIGINT may take (delay and workers included).
    pub shutdown_timeout: Duration,
    /// How long marina keeps serving after SIGTERM/SIGINT, readiness already 503.
    pub shutdown_delay: Duration,
    /// `RUNTIME_MAX_CONNECTIONS`: open client connections at most.
    pub max_connections: usize,
    /// `RUNTIME_HEADER_TIMEOUT`: time to a request's headers, from connecting or the previous request.
    pub header_timeout: Duration,
    /// `RUNTIME_BODY_TIMEOUT`: the time a worker may wait on the client for a request's body.
    pub body_timeout: Duration,
    /// `RUNTIME_SEND_TIMEOUT`: how long a response may wait for the client to read on.
    pub send_timeout: Duration,
    /// `ttl: 0` requests running at once.
    pub ephemeral_concurrency: usize,
    /// `ttl: 0` requests waiting before 503.
    pub ephemeral_queue_limit: usize,
    /// `RUNTIME_EPHEMERAL_SPARES`: fresh workers started ahead per `ttl: 0` app in use.
    pub ephemeral_spares: usize,
    /// `RUNTIME_JS`.
    pub js_runtime: Option<String>,
    /// `DATABASE_URL` (`None` = SQLite in the state dir).
    pub database_url: Option<String>,
    /// Root key and JWT settings (`RUNTIME_ROOT_KEY`, `RUNTIME_JWT_*`).
    pub auth: marina_auth::AuthConfig,
    /// Every value as given, for the plugins' own variables (`GATEWAY_*`, ...).
    pub raw: RawConfig,
    /// Worker isolation (docs/security.md).
    pub sandbox: SandboxOptions,
    /// `RUNTIME_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The default worker dirs: the bundled examples when run from the repository, else `./apps`.
pub fn default_worker_dirs(cwd: &Path) -> Vec<PathBuf> {
    let bundled = cwd.join("examples/apps");
    if bundled.is_dir() { vec![bundled] } else { vec![cwd.join("apps")] }
}

/// The default plugin dirs: the bundled examples when run from the repository, else `./plugins`.
pub fn default_plugin_dirs(cwd: &Path) -> Vec<PathBuf> {
    let bundled = cwd.join("examples/plugins");
    if bundled.is_dir() { vec![bundled] } else { vec![cwd.join("plugins")] }
}

impl RuntimeConfig {
    /// Check every raw value (against its row of [`marina_core::settings::SETTINGS`]), then
    /// resolve them; relative dirs are resolved against `cwd`.
    pub fn from_raw(raw: &RawConfig, cwd: &Path) -> Result<Self, ConfigError> {
        raw.validate()?;
        let port = raw.get("PORT").map(|s| s.parse::<u16>().unwrap_or_default()).unwrap_or(8000);
        let host = raw.get("RUNTIME_HOST").unwrap_or("127.0.0.1").to_string();
        let absolute = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
        let worker_dirs = match raw.get("RUNTIME_WORKER_DIRS") {
            None => default_worker_dirs(cwd),
            Some(s) => dir_list(s).into_iter().map(absolute).collect(),
        };
        let plugin_dirs = match raw.get("RUNTIME_PLUGIN_DIRS") {
            None => default_plugin_dirs(cwd),
            Some(s) => dir_list(s).into_iter().map(absolute).collect(),
        };
        let api_prefix = raw.get("RUNTIME_API_PREFIX").and_then(normalize_prefix).unwrap_or_default();
        let pool_size = raw.count("RUNTIME_POOL_SIZE", 100)?;
        let threads = raw.get("RUNTIME_THREADS").map(|_| raw.count("RUNTIME_THREADS", 1)).transpose()?;
        let scheduler = match raw.choice("RUNTIME_SCHEDULER")?.as_deref() {
            Some("per-thread") => Scheduler::PerThread,
            _ => Scheduler::Shared,
        };
        let log_level = raw.choice("RUNTIME_LOG_LEVEL")?.unwrap_or_else(|| "info".into());
        let node_env = match raw.choice("NODE_ENV")?.as_deref() {
            Some("production") => NodeEnv::Production,
            Some("staging") => NodeEnv::Staging,
            Some("test") => NodeEnv::Test,
            _ => NodeEnv::Development,
        };
        let log_format = match raw.choice("RUNTIME_LOG_FORMAT")?.as_deref() {
            Some("json") => LogFormat::Json,
            Some(_) => LogFormat::Text,
            None if node_env == NodeEnv::Production => LogFormat::Json,
            None => LogFormat::Text,
        };
        let state_dir =
            raw.get("RUNTIME_STATE_DIR").map(PathBuf::from).map(absolute).unwrap_or_else(|| cwd.join(".marina"));
        let shutdown_timeout = raw.seconds("RUNTIME_SHUTDOWN_TIMEOUT", Duration::from_secs(30))?;
        let shutdown_delay = raw.seconds("RUNTIME_SHUTDOWN_DELAY", Duration::ZERO)?;
        let max_connections = raw.count("RUNTIME_MAX_CONNECTIONS", 10_000)?;
        let header_timeout = raw.seconds("RUNTIME_HEADER_TIMEOUT", Duration::from_secs(10))?;
        let body_timeout = raw.seconds("RUNTIME_BODY_TIMEOUT", Duration::from_secs(60))?;
        let send_timeout = raw.seconds("RUNTIME_SEND_TIMEOUT", Duration::from_secs(30))?;
        let ephemeral_concurrency = raw.count("RUNTIME_EPHEMERAL_CONCURRENCY", 2)?.min(pool_size);
        let ephemeral_queue_limit = raw.count("RUNTIME_EPHEMERAL_QUEUE_LIMIT", 100)?;
        let ephemeral_spares = raw.count("RUNTIME_EPHEMERAL_SPARES", 1)?;
        let js_runtime = match raw.get("RUNTIME_JS") {
            None => None,
            Some(s) if s == "bun" || s == "node" => Some(s.to_string()),
            Some(s) if is_executable_file(&absolute(PathBuf::from(s))) => {
                Some(absolute(PathBuf::from(s)).display().to_string())
            }
            Some(s) => return Err(ConfigError::new("RUNTIME_JS", s, setting("RUNTIME_JS").check.expected())),
        };
        let database_url = raw.get("DATABASE_URL").map(str::to_string);
        let sandbox = SandboxOptions {
            worker_user: raw.get("RUNTIME_WORKER_USER").map(str::to_string),
            worker_uids: raw.get("RUNTIME_WORKER_UIDS").map(str::to_string),
            cgroup_parent: raw.get("RUNTIME_CGROUP_PARENT").map(str::to_string),
            max_procs: Some(raw.count("RUNTIME_WORKER_MAX_PROCS", 512)? as u32),
        };
        let auth = auth_config(raw)?;
        let trusted_proxies = raw.get("RUNTIME_TRUSTED_PROXIES").and_then(parse_cidrs).unwrap_or_default();
        check_rate_limit(raw)?;
        Ok(Self {
            trusted_proxies,
            sandbox,
            host,
            port,
            worker_dirs,
            plugin_dirs,
            api_prefix,
            pool_size,
            threads,
            scheduler,
            log_level,
            log_format,
            state_dir,
            node_env,
            shutdown_timeout,
            shutdown_delay,
            max_connections,
            header_timeout,
            body_timeout,
            send_timeout,
            ephemeral_concurrency,
            ephemeral_queue_limit,
            ephemeral_spares,
            js_runtime,
            database_url,
            auth,
            raw: raw.clone(),
        })
    }

    /// The internal API's base path, e.g. `/api` or `/_/api`.
    pub fn api_base(&self) -> String {
        format!("{}/api", self.api_prefix)
    }

    /// Whether clients see only the code and request id of server-side errors.
    pub fn hides_error_detail(&self) -> bool {
        matches!(self.node_env, NodeEnv::Production | NodeEnv::Staging)
    }
}

/// The gateway's rate limit must be possible: a window too short for the count (under 1 ns per
/// request, or zero) would leave no quota, and a gateway that cannot build its limiter must not
/// start without it. Checked here so that `marina serve` stops with exit code 2 naming the
/// variable, before anything binds.
fn check_rate_limit(raw: &RawConfig) -> Result<(), ConfigError> {
    let Some(requests) = raw.get("GATEWAY_RATE_LIMIT_REQUESTS") else { return Ok(()) };
    let n = raw.count("GATEWAY_RATE_LIMIT_REQUESTS", 1)? as u128;
    let window = raw.seconds("GATEWAY_RATE_LIMIT_WINDOW", Duration::from_secs(60))?;
    if window.as_nanos() < n {
        let got = raw.get("GATEWAY_RATE_LIMIT_WINDOW").unwrap_or("1m");
        return Err(ConfigError::new(
            "GATEWAY_RATE_LIMIT_WINDOW",
            got,
            format!("a window long enough for {requests} requests (at least 1 ns per request, so at least {n} ns)"),
        ));
    }
    Ok(())
}

/// The authentication settings; a bad one names its variable and never echoes a secret.
fn auth_config(raw: &RawConfig) -> Result<marina_auth::AuthConfig, ConfigError> {
    marina_auth::AuthConfig::from_lookup(|var| raw.get(var).map(str::to_owned)).map_err(|e| {
        let data = e.data().cloned().unwrap_or_default();
        let row = setting(data["variable"].as_str().unwrap_or("RUNTIME_JWT_SECRET"));
        let secret = matches!(row.var, "RUNTIME_ROOT_KEY" | "RUNTIME_MASTER_KEY" | "RUNTIME_JWT_SECRET");
        let got = if secret { "(hidden)".to_string() } else { raw.get(row.var).unwrap_or_default().to_string() };
        let expected = data["expected"].as_str().unwrap_or(e.message()).to_string();
        ConfigError { var: row.var, flag: row.flag, got, expected }
    })
}

/// A file that exists and has an execute bit (whether it runs is only known when it does).
fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig::default()
    }

    fn set(r: &mut RawConfig, var: &str, value: &str) {
        r.set(var, value);
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
        assert_eq!(cfg.threads, None, "tokio's default: one per CPU");
        assert_eq!(cfg.scheduler, Scheduler::Shared);
    }

    #[test]
    fn threads_can_be_set() {
        let mut r = raw();
        set(&mut r, "RUNTIME_THREADS", "3");
        assert_eq!(RuntimeConfig::from_raw(&r, Path::new("/")).unwrap().threads, Some(3));
    }

    #[test]
    fn the_scheduler_can_be_per_thread() {
        let mut r = raw();
        set(&mut r, "RUNTIME_SCHEDULER", "Per-Thread");
        assert_eq!(RuntimeConfig::from_raw(&r, Path::new("/")).unwrap().scheduler, Scheduler::PerThread);
        set(&mut r, "RUNTIME_SCHEDULER", "shared");
        assert_eq!(RuntimeConfig::from_raw(&r, Path::new("/")).unwrap().scheduler, Scheduler::Shared);
    }

    #[test]
    fn bad_values_name_the_variable_and_say_what_is_expected() {
        type Case = (fn(&mut RawConfig), &'static str);
        let cases: &[Case] = &[
            (|r| set(r, "PORT", "80a"), "invalid PORT (--port) \"80a\": expected a port number from 0 to 65535"),
            (|r| set(r, "PORT", "70000"), "invalid PORT (--port) \"70000\": expected a port number from 0 to 65535"),
            (
                |r| set(r, "RUNTIME_POOL_SIZE", "0"),
                "invalid RUNTIME_POOL_SIZE (--pool-size) \"0\": expected a whole number from 1 to 100000",
            ),
            (
                |r| set(r, "RUNTIME_POOL_SIZE", "many"),
                "invalid RUNTIME_POOL_SIZE (--pool-size) \"many\": expected a whole number from 1 to 100000",
            ),
            (
                |r| set(r, "RUNTIME_THREADS", "0"),
                "invalid RUNTIME_THREADS (--threads) \"0\": expected a whole number from 1 to 1024",
            ),
            (
                |r| set(r, "RUNTIME_THREADS", "auto"),
                "invalid RUNTIME_THREADS (--threads) \"auto\": expected a whole number from 1 to 1024",
            ),
            (
                |r| set(r, "RUNTIME_SCHEDULER", "per-core"),
                "invalid RUNTIME_SCHEDULER (--scheduler) \"per-core\": expected shared or per-thread",
            ),
            (
                |r| set(r, "RUNTIME_LOG_LEVEL", "loud"),
                "invalid RUNTIME_LOG_LEVEL (--log-level) \"loud\": expected one of trace, debug, info, warn, error",
            ),
            (
                |r| set(r, "NODE_ENV", "prod"),
                "invalid NODE_ENV (--node-env) \"prod\": expected one of development, production, staging, test",
            ),
            (
                |r| set(r, "RUNTIME_API_PREFIX", "/a b"),
                "invalid RUNTIME_API_PREFIX (--api-prefix) \"/a b\": expected a path prefix such as \"/_\" (letters, digits, '-', '_', '.', separated by '/')",
            ),
            (
                |r| set(r, "RUNTIME_API_PREFIX", "/../x"),
                "invalid RUNTIME_API_PREFIX (--api-prefix) \"/../x\": expected a path prefix such as \"/_\" (letters, digits, '-', '_', '.', separated by '/')",
            ),
            (
                |r| set(r, "RUNTIME_SHUTDOWN_TIMEOUT", "soon"),
                "invalid RUNTIME_SHUTDOWN_TIMEOUT (--shutdown-timeout) \"soon\": expected a duration such as 30 (seconds), \"10s\" or \"2m\"",
            ),
            (
                |r| set(r, "DATABASE_URL", "mysql://x"),
                "invalid DATABASE_URL (--database-url) \"mysql://x\": expected sqlite://PATH or postgres://USER@HOST/DB",
            ),
            (
                |r| set(r, "RUNTIME_LOG_FORMAT", "xml"),
                "invalid RUNTIME_LOG_FORMAT (--log-format) \"xml\": expected text or json",
            ),
            (
                |r| set(r, "RUNTIME_JS", "deno"),
                "invalid RUNTIME_JS (--js-runtime) \"deno\": expected bun, node, or the path of an executable Bun or Node",
            ),
            (
                |r| set(r, "RUNTIME_JS", "/no/such/bun"),
                "invalid RUNTIME_JS (--js-runtime) \"/no/such/bun\": expected bun, node, or the path of an executable Bun or Node",
            ),
            (
                |r| set(r, "RUNTIME_HOST", "my host"),
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
            r.set("RUNTIME_API_PREFIX", given);
            assert_eq!(RuntimeConfig::from_raw(&r, Path::new("/")).unwrap().api_prefix, want);
        }
    }

    #[test]
    fn production_logs_json_and_dirs_resolve_against_cwd() {
        let mut r = raw();
        r.set("NODE_ENV", "production");
        r.set("RUNTIME_WORKER_DIRS", "apps:/abs/more::");
        r.set("RUNTIME_SHUTDOWN_TIMEOUT", "5s");
        let cfg = RuntimeConfig::from_raw(&r, Path::new("/srv")).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.worker_dirs, vec![PathBuf::from("/srv/apps"), PathBuf::from("/abs/more")]);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(5));
    }
}
