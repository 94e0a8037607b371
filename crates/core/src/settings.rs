//! The one table of configuration variables: environment variable, flag, default, help and
//! validation. `marina serve`'s flags, its `--help`, the README's configuration table
//! (`marina config --markdown`) and the start-up checks all come from [`SETTINGS`], so they
//! cannot drift apart (a test compares the README with the generated table).
//!
//! Values travel as [`RawSettings`] — strings as the user wrote them, keyed by variable — so a
//! plugin reads its own variables (`GATEWAY_*`) from the same map the server reads `PORT` from.
//! [`RawSettings::validate`] checks every given value against its row before anything starts;
//! the typed getters parse with the same functions, so a value that passed validation parses.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::units::parse_duration;

/// How a value is checked; also produces the "expected …" text of the error.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// Any text.
    Text,
    /// A TCP port, 0–65535.
    Port,
    /// An IP address or `localhost`.
    Host,
    /// A whole number in a range.
    Count {
        /// Smallest accepted value.
        min: usize,
        /// Largest accepted value.
        max: usize,
    },
    /// One of a fixed list (case-insensitive).
    OneOf(&'static [&'static str]),
    /// A colon-separated list of directories with at least one entry.
    Dirs,
    /// A colon-separated list of directories, possibly empty.
    DirsOrNone,
    /// A path prefix such as `/_`.
    Prefix,
    /// A duration: a bare number is seconds, else `ms` syntax (`"10s"`, `"2m"`).
    Seconds,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    Bool,
    /// `sqlite:…` or `postgres://…`.
    DatabaseUrl,
    /// `bun`, `node` or a path (whether it is executable is checked against the working dir).
    JsRuntime,
    /// `*` or a comma-separated list of origins (`https://app.example.com`, with an optional
    /// port and no path).
    Origins,
    /// A comma-separated list of IP ranges (`10.0.0.0/8`) or single addresses (`10.1.2.3`).
    Cidrs,
    /// A comma-separated list of basenames (`^[a-zA-Z0-9_-]+$`).
    Basenames,
}

impl Check {
    /// Whether `value` (already trimmed, non-empty) is acceptable.
    pub fn accepts(&self, value: &str) -> bool {
        match *self {
            Check::Text | Check::DirsOrNone => true,
            Check::Port => value.parse::<u16>().is_ok(),
            Check::Host => value.parse::<std::net::IpAddr>().is_ok() || value == "localhost",
            Check::Count { min, max } => parse_count(value, min, max).is_some(),
            Check::OneOf(list) => list.iter().any(|c| c.eq_ignore_ascii_case(value)),
            Check::Dirs => !dir_list(value).is_empty(),
            Check::Prefix => normalize_prefix(value).is_some(),
            Check::Seconds => parse_seconds(value).is_some(),
            Check::Bool => parse_bool(value).is_some(),
            Check::JsRuntime => value == "bun" || value == "node" || value.contains('/'),
            Check::Origins => value == "*" || value.split(',').all(|o| is_origin(o.trim())),
            Check::Cidrs => parse_cidrs(value).is_some(),
            Check::Basenames => value
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .all(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
            Check::DatabaseUrl => {
                value.starts_with("sqlite:") || value.starts_with("postgres://") || value.starts_with("postgresql://")
            }
        }
    }

    /// What an acceptable value looks like, for error messages.
    pub fn expected(&self) -> String {
        match *self {
            Check::Text | Check::DirsOrNone => "any text".into(),
            Check::Port => "a port number from 0 to 65535".into(),
            Check::Host => "an IP address such as 127.0.0.1 or 0.0.0.0".into(),
            Check::Count { min, max } => format!("a whole number from {min} to {max}"),
            Check::OneOf(list) => match list {
                [a, b] => format!("{a} or {b}"),
                _ => format!("one of {}", list.join(", ")),
            },
            Check::Dirs => "a colon-separated list of directories".into(),
            Check::Prefix => "a path prefix such as \"/_\" (letters, digits, '-', '_', '.', separated by '/')".into(),
            Check::Seconds => "a duration such as 30 (seconds), \"10s\" or \"2m\"".into(),
            Check::Bool => "true or false".into(),
            Check::DatabaseUrl => "sqlite://PATH or postgres://USER@HOST/DB".into(),
            Check::JsRuntime => "bun, node, or the path of an executable Bun or Node".into(),
            Check::Origins => "* or a comma-separated list of origins such as https://app.example.com".into(),
            Check::Cidrs => {
                "a comma-separated list of IP ranges or addresses such as 10.0.0.0/8,fd00::/8,192.0.2.7".into()
            }
            Check::Basenames => "a comma-separated list of names made of letters, digits, '-' and '_'".into(),
        }
    }
}

/// One configuration variable.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The environment variable (Buntime's name where Buntime has one).
    pub var: &'static str,
    /// The long flag of `marina serve`, without `--`.
    pub flag: &'static str,
    /// The default, as documented (Markdown).
    pub default: &'static str,
    /// What it does (Markdown; backticks are dropped for `--help`).
    pub help: &'static str,
    /// How a given value is checked.
    pub check: Check,
}

/// Every variable `marina serve` reads, in the order of `--help` and the README.
pub static SETTINGS: &[Setting] = &[
    Setting {
        var: "PORT",
        flag: "port",
        default: "`8000`",
        help: "listen port (HTTP/1.1 and HTTP/2 cleartext on the same port)",
        check: Check::Port,
    },
    Setting {
        var: "RUNTIME_HOST",
        flag: "host",
        default: "`127.0.0.1`",
        help: "listen address; `0.0.0.0` in containers",
        check: Check::Host,
    },
    Setting {
        var: "RUNTIME_WORKER_DIRS",
        flag: "worker-dirs",
        default: "`./examples/apps` when run from the repository, else `./apps`",
        help: "colon-separated app dirs; the first dir wins for the same version",
        check: Check::Dirs,
    },
    Setting {
        var: "RUNTIME_PLUGIN_DIRS",
        flag: "plugin-dirs",
        default: "`./examples/plugins` when run from the repository, else `./plugins`",
        help: "colon-separated plugin dirs",
        check: Check::DirsOrNone,
    },
    Setting {
        var: "RUNTIME_API_PREFIX",
        flag: "api-prefix",
        default: "`\"\"`",
        help: "`/_` moves the internal API to `/_/api`",
        check: Check::Prefix,
    },
    Setting {
        var: "RUNTIME_POOL_SIZE",
        flag: "pool-size",
        default: "`100`",
        help: "most app versions with warm workers at once (LRU; `instances` multiplies processes)",
        check: Check::Count { min: 1, max: 100_000 },
    },
    Setting {
        var: "RUNTIME_THREADS",
        flag: "threads",
        default: "one per CPU marina may use (tokio's default)",
        help: "threads serving connections and requests (accepting them runs on the main thread; SQLite and file work run on a separate pool); on 2 CPUs `1` serves small static files and busy JS apps faster but bursts of requests slower ([BENCHMARKS.md](BENCHMARKS.md#one-async-thread-on-2-cpus))",
        check: Check::Count { min: 1, max: 1024 },
    },
    Setting {
        var: "RUNTIME_SCHEDULER",
        flag: "scheduler",
        default: "`shared`",
        help: "`shared`: connections are tasks of one work-stealing runtime; `per-thread`: each connection stays on one of `RUNTIME_THREADS` single-threaded runtimes, with its hops to workers (fewer hand-offs between threads, no stealing) ([BENCHMARKS.md](BENCHMARKS.md#per-thread-scheduling))",
        check: Check::OneOf(&["shared", "per-thread"]),
    },
    Setting {
        var: "RUNTIME_LOG_LEVEL",
        flag: "log-level",
        default: "`info`",
        help: "`trace`, `debug`, `info`, `warn`, `error` (`RUST_LOG` overrides)",
        check: Check::OneOf(&["trace", "debug", "info", "warn", "error"]),
    },
    Setting {
        var: "RUNTIME_LOG_FORMAT",
        flag: "log-format",
        default: "`json` in production, else `text`",
        help: "access and runtime log format",
        check: Check::OneOf(&["text", "json"]),
    },
    Setting {
        var: "RUNTIME_STATE_DIR",
        flag: "state-dir",
        default: "`./.marina`",
        help: "marina's database, worker sockets, app databases",
        check: Check::Text,
    },
    Setting {
        var: "NODE_ENV",
        flag: "node-env",
        default: "`development`",
        help: "`development`, `production`, `staging`, `test`; production shows clients only the code and request id of server-side errors, and logs JSON",
        check: Check::OneOf(&["development", "production", "staging", "test"]),
    },
    Setting {
        var: "RUNTIME_SHUTDOWN_TIMEOUT",
        flag: "shutdown-timeout",
        default: "`30s`",
        help: "the longest the exit after SIGTERM/SIGINT may take, the delay, in-flight requests (cut ones get 503 `SHUTTING_DOWN`), `onTerminate` and stopping workers included",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_SHUTDOWN_DELAY",
        flag: "shutdown-delay",
        default: "`0`",
        help: "after SIGTERM/SIGINT, how long marina keeps serving (readiness already 503) before it stops accepting; a few seconds behind a load balancer",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_EPHEMERAL_CONCURRENCY",
        flag: "ephemeral-concurrency",
        default: "`2`",
        help: "`ttl: 0` requests running at once",
        check: Check::Count { min: 1, max: 10_000 },
    },
    Setting {
        var: "RUNTIME_EPHEMERAL_QUEUE_LIMIT",
        flag: "ephemeral-queue-limit",
        default: "`100`",
        help: "`ttl: 0` requests waiting before 503",
        check: Check::Count { min: 0, max: 1_000_000 },
    },
    Setting {
        var: "RUNTIME_EPHEMERAL_SPARES",
        flag: "ephemeral-spares",
        default: "`1`",
        help: "never-used workers kept started ahead for each `ttl: 0` app that had a request in the last 10 s (at most 4 apps at a time, the most recently asked), each serving exactly one request (stopped after 10 s without requests and on reload); `0`: every `ttl: 0` request waits for its worker to start",
        check: Check::Count { min: 0, max: 64 },
    },
    Setting {
        var: "RUNTIME_MAX_CONNECTIONS",
        flag: "max-connections",
        default: "`10000`",
        help: "open client connections at most; one more is closed at once, unanswered, as nginx and Envoy do under overload (the open-file limit is raised to its hard limit at start)",
        check: Check::Count { min: 1, max: 10_000_000 },
    },
    Setting {
        var: "RUNTIME_HEADER_TIMEOUT",
        flag: "header-timeout",
        default: "`10s`",
        help: "how long a client may take to send a request's headers, counted from connecting or from its previous request; a silent connection is closed; `0` turns it off",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_BODY_TIMEOUT",
        flag: "body-timeout",
        default: "`60s`",
        help: "how long a worker (or marina itself, on the internal API and plugin routes) may wait, all waits together, for pieces of a request body the client has not sent: past it 408 `REQUEST_BODY_TIMEOUT`, and the worker is not blamed (its `timeout` counts its own time, not these waits); `0` turns it off",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_SEND_TIMEOUT",
        flag: "send-timeout",
        default: "`30s`",
        help: "how long a response may wait for the client to take more of it (per stall: a slow reader that keeps reading is served to the end); then the connection is closed, or on HTTP/2 only the stalled stream is reset, freeing the worker (and the `ttl: 0` slot) it held; `0` turns it off",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_JS",
        flag: "js-runtime",
        default: "`bun` when on PATH, else `node`",
        help: "runtime for JavaScript apps: `bun`, `node` or the path of an executable",
        check: Check::JsRuntime,
    },
    Setting {
        var: "DATABASE_URL",
        flag: "database-url",
        default: "`sqlite://{state dir}/marina.db`",
        help: "marina's database: `sqlite://…` or `postgres://…`",
        check: Check::DatabaseUrl,
    },
    Setting {
        var: "RUNTIME_WORKER_USER",
        flag: "worker-user",
        default: "`marina-worker`, else `nobody`",
        help: "when marina is root, the user workers run as ([docs/security.md](docs/security.md))",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_WORKER_UIDS",
        flag: "worker-uids",
        default: "none",
        help: "when marina is root, one uid per app from this range, e.g. `200000-265535`",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_CGROUP_PARENT",
        flag: "cgroup-parent",
        default: "`marina`",
        help: "parent of the workers' cgroups (relative to each hierarchy, or an absolute v2 path); `off` disables",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_WORKER_MAX_PROCS",
        flag: "worker-max-procs",
        default: "`512`",
        help: "processes and threads one worker may have (pids cgroup)",
        check: Check::Count { min: 8, max: 1_000_000 },
    },
    Setting {
        var: "RUNTIME_ROOT_KEY",
        flag: "root-key",
        default: "unset",
        help: "the root key: every permission on the internal API (prefer the variable to the flag: flags show in `ps`); see [docs/auth.md](docs/auth.md)",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_MASTER_KEY",
        flag: "master-key",
        default: "unset",
        help: "Buntime's older name of `RUNTIME_ROOT_KEY` (used when that is unset)",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_JWT_SECRET",
        flag: "jwt-secret",
        default: "unset",
        help: "HMAC secret (at least 32 bytes) for `HS256`/`HS384`/`HS512` bearer tokens on app routes",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_JWT_PUBLIC_KEY",
        flag: "jwt-public-key",
        default: "unset",
        help: "a PEM public key (RSA, EC P-256/P-384, Ed25519), inline or a file path, for bearer tokens on app routes",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_JWT_JWKS_URL",
        flag: "jwt-jwks-url",
        default: "unset",
        help: "an identity provider's JWKS URL for bearer tokens on app routes (cached; refetched on key rotation)",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_JWT_ISSUER",
        flag: "jwt-issuer",
        default: "unset",
        help: "accepted `iss` values, comma-separated (then required)",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_JWT_AUDIENCE",
        flag: "jwt-audience",
        default: "unset",
        help: "accepted `aud` values, comma-separated (then required)",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_JWT_ALGORITHMS",
        flag: "jwt-algorithms",
        default: "those of the configured keys",
        help: "accepted `alg` values, comma-separated (`none` never is)",
        check: Check::Text,
    },
    Setting {
        var: "RUNTIME_JWT_LEEWAY",
        flag: "jwt-leeway",
        default: "`60s`",
        help: "clock skew allowed on `exp` and `nbf`",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_JWT_JWKS_CACHE_TTL",
        flag: "jwt-jwks-cache-ttl",
        default: "`10m`",
        help: "how long fetched JWKS keys are used before a refetch",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_JWT_JWKS_COOLDOWN",
        flag: "jwt-jwks-cooldown",
        default: "`30s`",
        help: "least time between two JWKS fetches caused by unknown `kid`s",
        check: Check::Seconds,
    },
    Setting {
        var: "RUNTIME_PROXY_ALLOW",
        flag: "proxy-allow",
        default: "none",
        help: "proxy rules: IP ranges a rule's target may reach although refused by default (link-local and cloud metadata addresses, marina's own listener) or by `RUNTIME_PROXY_DENY`, comma-separated (`169.254.10.0/24`); see [docs/proxy.md](docs/proxy.md#ssrf-policy)",
        check: Check::Cidrs,
    },
    Setting {
        var: "RUNTIME_PROXY_DENY",
        flag: "proxy-deny",
        default: "none",
        help: "proxy rules: IP ranges a rule's target may not reach besides the built-in ones, comma-separated (`10.0.0.0/8,192.168.0.0/16` on a shared server); checked on every address a name resolves to",
        check: Check::Cidrs,
    },
    Setting {
        var: "RUNTIME_TRUSTED_PROXIES",
        flag: "trusted-proxies",
        default: "unset: none",
        help: "IP addresses and CIDR ranges of reverse proxies in front of marina, comma-separated; only from these peers is `X-Forwarded-For` believed when marina works out the client address (rate limits, logs, forwarded headers)",
        check: Check::Cidrs,
    },
    Setting {
        var: "GATEWAY_CORS_ORIGIN",
        flag: "gateway-cors-origin",
        default: "unset: no CORS headers",
        help: "gateway plugin: `*` or comma-separated origins allowed to call marina from a browser; an allowed `Origin` is echoed with `Vary: Origin`, preflights are answered with 204",
        check: Check::Origins,
    },
    Setting {
        var: "GATEWAY_CORS_CREDENTIALS",
        flag: "gateway-cors-credentials",
        default: "`false`",
        help: "gateway plugin: send `Access-Control-Allow-Credentials: true` (the origin is then always echoed, never `*`)",
        check: Check::Bool,
    },
    Setting {
        var: "GATEWAY_RATE_LIMIT_REQUESTS",
        flag: "gateway-rate-limit-requests",
        default: "unset: no rate limit",
        help: "gateway plugin: requests each client address may make per window (GCRA; 429 with `Retry-After` and `RateLimit-*` beyond it)",
        check: Check::Count { min: 1, max: 1_000_000_000 },
    },
    Setting {
        var: "GATEWAY_RATE_LIMIT_WINDOW",
        flag: "gateway-rate-limit-window",
        default: "`1m`",
        help: "gateway plugin: the rate-limit window; the allowance refills evenly over it (at least 1 ns per request)",
        check: Check::Seconds,
    },
    Setting {
        var: "GATEWAY_RATE_LIMIT_HEADERS",
        flag: "gateway-rate-limit-headers",
        default: "`limited`",
        help: "gateway plugin: which answers carry `RateLimit-Limit`/`-Remaining`/`-Reset`: `limited` (the 429s, as Buntime) or `always` (every answer a rule counted, with the tightest rule's numbers)",
        check: Check::OneOf(&["limited", "always"]),
    },
    Setting {
        var: "GATEWAY_SHELL_DIR",
        flag: "gateway-shell-dir",
        default: "unset: no app shell",
        help: "gateway plugin: the app (a dir with a manifest or `index.*`) that answers page loads no app or plugin claimed, at base `/` (`Sec-Fetch-Dest` rules in the README)",
        check: Check::Text,
    },
    Setting {
        var: "GATEWAY_SHELL_EXCLUDES",
        flag: "gateway-shell-excludes",
        default: "unset",
        help: "gateway plugin: first path segments the shell never answers, comma-separated",
        check: Check::Basenames,
    },
];

/// `scheme://host[:port]` with an http(s) scheme and nothing after the authority: what a
/// browser sends in `Origin`, so a configured origin can be compared to it as text.
pub fn is_origin(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else { return false };
    let host = rest.rsplit_once(':').map_or(rest, |(h, port)| if port.parse::<u16>().is_ok() { h } else { "" });
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        && !host.is_empty()
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'))
}

/// The row of a variable. Panics on a name that is not in the table: that is a typo in marina's
/// own code, caught by any test that reads it.
pub fn setting(var: &str) -> &'static Setting {
    SETTINGS.iter().find(|s| s.var == var).unwrap_or_else(|| panic!("{var} is not in marina_core::settings::SETTINGS"))
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

impl ConfigError {
    /// A value of `var` that its row's check accepted but a later, cross-field rule did not.
    pub fn new(var: &'static str, got: &str, expected: impl Into<String>) -> Self {
        Self { var, flag: setting(var).flag, got: got.to_string(), expected: expected.into() }
    }
}

/// Values as given on the command line or in the environment, keyed by variable, before any
/// check. Blank values count as unset.
#[derive(Debug, Clone, Default)]
pub struct RawSettings {
    values: BTreeMap<&'static str, String>,
}

impl RawSettings {
    /// An empty set (every variable at its default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a variable; `var` must be in [`SETTINGS`].
    pub fn set(&mut self, var: &str, value: impl Into<String>) -> &mut Self {
        self.values.insert(setting(var).var, value.into());
        self
    }

    /// Unset a variable.
    pub fn unset(&mut self, var: &str) -> &mut Self {
        self.values.remove(setting(var).var);
        self
    }

    /// The trimmed value, `None` when unset or blank.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.values.get(setting(var).var).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    /// Check every given value against its row, in table order; the first bad one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for s in SETTINGS {
            if let Some(v) = self.get(s.var)
                && !s.check.accepts(v)
            {
                return Err(self.bad(s.var, v));
            }
        }
        Ok(())
    }

    fn bad(&self, var: &str, got: &str) -> ConfigError {
        let s = setting(var);
        ConfigError { var: s.var, flag: s.flag, got: got.to_string(), expected: s.check.expected() }
    }

    /// A whole number (the row must be [`Check::Count`]).
    pub fn count(&self, var: &str, default: usize) -> Result<usize, ConfigError> {
        let Check::Count { min, max } = setting(var).check else { panic!("{var} is not a Count setting") };
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse_count(v, min, max).ok_or_else(|| self.bad(var, v)),
        }
    }

    /// A duration (the row must be [`Check::Seconds`]).
    pub fn seconds(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse_seconds(v).ok_or_else(|| self.bad(var, v)),
        }
    }

    /// A boolean (the row must be [`Check::Bool`]).
    pub fn flag(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| self.bad(var, v)),
        }
    }

    /// The value lower-cased, checked against its row ([`Check::OneOf`]), or `None` when unset.
    pub fn choice(&self, var: &str) -> Result<Option<String>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(v) if setting(var).check.accepts(v) => Ok(Some(v.to_ascii_lowercase())),
            Some(v) => Err(self.bad(var, v)),
        }
    }

    /// IP ranges (the row must be [`Check::Cidrs`]); empty when unset.
    pub fn cidrs(&self, var: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        match self.get(var) {
            None => Ok(Vec::new()),
            Some(v) => parse_cidrs(v).ok_or_else(|| self.bad(var, v)),
        }
    }

    /// Any value that passes its row's check, as given (trimmed).
    pub fn checked(&self, var: &str) -> Result<Option<&str>, ConfigError> {
        match self.get(var) {
            Some(v) if !setting(var).check.accepts(v) => Err(self.bad(var, v)),
            other => Ok(other),
        }
    }
}

fn parse_count(value: &str, min: usize, max: usize) -> Option<usize> {
    value.parse::<usize>().ok().filter(|n| (min..=max).contains(n))
}

/// A bare number is seconds (like every duration flag of marina), else `ms` syntax.
/// A duration as the table reads it: a bare number is seconds, else `ms` syntax (`"10s"`).
pub fn parse_seconds(value: &str) -> Option<Duration> {
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Some(Duration::from_secs_f64(secs)),
        Ok(_) => None,
        Err(_) => parse_duration(value).ok(),
    }
}

/// `10.0.0.0/8, 192.0.2.7, fd00::/8` → ranges (an address is a range of one); `None` when any
/// entry is neither. Blank entries are skipped, but at least one range is needed.
pub fn parse_cidrs(value: &str) -> Option<Vec<ipnet::IpNet>> {
    let nets: Option<Vec<ipnet::IpNet>> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<ipnet::IpNet>().ok().or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)))
        .collect();
    nets.filter(|n| !n.is_empty())
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Split a colon-separated directory list, dropping blanks.
pub fn dir_list(raw: &str) -> Vec<std::path::PathBuf> {
    raw.split(':').map(str::trim).filter(|s| !s.is_empty()).map(std::path::PathBuf::from).collect()
}

/// `"/_/"` → `"/_"`, `"_"` → `"/_"`, `"/"` → `""`; `None` for anything that is not a clean path.
pub fn normalize_prefix(s: &str) -> Option<String> {
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

/// `--help` text of a row: the help without Markdown backticks, then the default.
pub fn help_text(s: &Setting) -> String {
    format!("{} [default: {}]", s.help.replace('`', ""), s.default.replace('`', ""))
}

/// The README's configuration table, generated from [`SETTINGS`].
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | flag | default | meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!("| `{}` | `--{}` | {} | {} |\n", s.var, s.flag, s.default, s.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags_are_unique_and_documented() {
        let mut vars = std::collections::HashSet::new();
        let mut flags = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(vars.insert(s.var), "{} twice", s.var);
            assert!(flags.insert(s.flag), "--{} twice", s.flag);
            assert!(!s.help.is_empty() && !s.default.is_empty(), "{} lacks help or default", s.var);
            assert!(s.flag.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "--{}", s.flag);
        }
    }

    /// The README's table is pasted from `marina config --markdown`; this fails when it drifts.
    #[test]
    fn readme_table_is_the_generated_one() {
        let readme = include_str!("../../../README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's configuration table differs from the generated one; replace it with the output of \
             `marina config --markdown`:\n{table}"
        );
    }

    #[test]
    fn validation_names_the_first_bad_value() {
        let mut raw = RawSettings::new();
        raw.set("PORT", "80").set("RUNTIME_POOL_SIZE", "0").set("NODE_ENV", "nope");
        let err = raw.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid RUNTIME_POOL_SIZE (--pool-size) \"0\": expected a whole number from 1 to 100000"
        );
        raw.set("RUNTIME_POOL_SIZE", " 7 ").unset("NODE_ENV");
        raw.validate().unwrap();
        assert_eq!(raw.count("RUNTIME_POOL_SIZE", 100).unwrap(), 7);
        raw.set("RUNTIME_LOG_LEVEL", "WARN");
        assert_eq!(raw.choice("RUNTIME_LOG_LEVEL").unwrap().as_deref(), Some("warn"));
        assert_eq!(raw.seconds("RUNTIME_SHUTDOWN_TIMEOUT", Duration::ZERO).unwrap(), Duration::ZERO);
        raw.set("RUNTIME_SHUTDOWN_TIMEOUT", "1.5");
        assert_eq!(raw.seconds("RUNTIME_SHUTDOWN_TIMEOUT", Duration::ZERO).unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn ip_ranges_are_read_and_bad_ones_named() {
        let mut raw = RawSettings::new();
        assert_eq!(raw.cidrs("RUNTIME_PROXY_DENY").unwrap(), Vec::<ipnet::IpNet>::new());
        raw.set("RUNTIME_PROXY_DENY", " 10.0.0.0/8, 192.0.2.7 ,fd00::/8,");
        raw.validate().unwrap();
        let nets: Vec<String> = raw.cidrs("RUNTIME_PROXY_DENY").unwrap().iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/8;10.1.0.0/16", ",", "::1/129"] {
            raw.set("RUNTIME_PROXY_ALLOW", bad);
            let err = raw.validate().unwrap_err();
            assert_eq!(err.var, "RUNTIME_PROXY_ALLOW", "{bad}");
            assert!(err.to_string().contains("--proxy-allow") && err.to_string().contains("IP ranges"), "{err}");
            assert!(raw.cidrs("RUNTIME_PROXY_ALLOW").is_err());
        }
    }

    #[test]
    #[should_panic(expected = "NOPE is not in")]
    fn unknown_names_are_a_bug_in_marina() {
        RawSettings::new().set("NOPE", "1");
    }
}
