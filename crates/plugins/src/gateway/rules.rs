//! The gateway's rate-limit rules: a default rule for every request (Buntime's `rateLimit`) and
//! rules per route glob, each keyed by the client address or by the caller's identity.
//!
//! From the manifest's `rateLimit` option (Buntime's keys, plus marina's `routes`):
//!
//! ```yaml
//! rateLimit:
//!   requests: 1000        # GATEWAY_RATE_LIMIT_REQUESTS wins; absent everywhere: no default rule
//!   window: 1m            # GATEWAY_RATE_LIMIT_WINDOW wins; a bare number is seconds
//!   keyBy: ip             # ip | identity (Buntime's `user` is accepted for identity)
//!   headers: limited      # GATEWAY_RATE_LIMIT_HEADERS wins: limited (429s only) | always
//!   excludePaths: ["/health", "/api/health/**"]   # globs, exempt from the default rule only
//!   routes:               # each matching route rule counts the request as well
//!     - path: "/shop/login/**"
//!       methods: [POST]   # absent: every method
//!       requests: 5
//!       window: 1m
//!       keyBy: ip
//! ```
//!
//! Globs (the `globset` crate) match the path as received: `*` stays within a segment, `**`
//! crosses segments. Buntime's `excludePaths` were unanchored regular expressions; a Buntime
//! regex that is not also a glob simply matches nothing here, so the limit stays on.
//!
//! `keyBy: identity` counts authenticated requests per caller (`api-key:<id>`, `root-key:root`,
//! `jwt:<iss>:<sub>`) and everything else — anonymous and refused requests — per address.

use std::num::NonZeroU32;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use http::Method;
use marina_core::Error;
use marina_core::settings::{RawSettings, parse_seconds};
use serde::Deserialize;
use serde_json::{Value, json};

use super::keyed::BucketKey;
use super::limit::{Limiter, Verdict};
use crate::context::RequestContext;

/// How a rule tells callers apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBy {
    /// The real client address.
    Ip,
    /// The identity authentication established, else the address.
    Identity,
}

impl KeyBy {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ip" => Some(Self::Ip),
            "identity" | "user" => Some(Self::Identity),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Identity => "identity",
        }
    }
}

/// One rule.
pub struct Rule {
    /// The route glob (`None`: the default rule, every request).
    pub path: Option<String>,
    matcher: Option<GlobMatcher>,
    methods: Vec<Method>,
    /// How callers are told apart.
    pub key_by: KeyBy,
    /// Its limiter.
    pub limiter: Limiter,
}

impl Rule {
    /// The bucket key of the request under this rule.
    pub fn key(&self, ctx: &RequestContext) -> BucketKey {
        match (self.key_by, &ctx.identity) {
            (KeyBy::Identity, Some(identity)) => BucketKey::Identity(identity.key().into()),
            _ => BucketKey::Ip(ctx.client_ip),
        }
    }

    /// The rule's name in stats and the API: `default` or its glob.
    pub fn name(&self) -> &str {
        self.path.as_deref().unwrap_or("default")
    }

    fn describe(&self) -> Value {
        json!({
            "path": self.path,
            "methods": self.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
            "requests": self.limiter.limit(),
            "windowSeconds": self.limiter.window().as_secs_f64(),
            "keyBy": self.key_by.as_str(),
        })
    }
}

/// Which answers carry the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadersOn {
    /// Only the 429s (Buntime's `X-RateLimit-*` were only there too): an allowed answer goes
    /// out as the app made it.
    #[default]
    Limited,
    /// Every answer some rule counted, with the tightest rule's numbers (IETF
    /// draft-ietf-httpapi-ratelimit-headers), so a client can slow down before it is refused.
    /// Three more headers on every answer (~1.1k instructions to add and encode, of a ~28k
    /// static request: `bench/gateway.sh` measures both).
    Always,
}

impl HeadersOn {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "limited" => Some(Self::Limited),
            "always" => Some(Self::Always),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Limited => "limited",
            Self::Always => "always",
        }
    }
}

/// Every rule of the gateway.
#[derive(Default)]
pub struct RateLimits {
    /// The default rule, first, then the route rules in manifest order.
    pub rules: Vec<Rule>,
    /// Which answers carry `RateLimit-*`.
    pub headers: HeadersOn,
    excludes: Option<GlobSet>,
    exclude_text: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Options {
    requests: Option<u32>,
    window: Option<Value>,
    key_by: Option<String>,
    headers: Option<String>,
    #[serde(default)]
    exclude_paths: Vec<String>,
    #[serde(default)]
    routes: Vec<RouteOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteOptions {
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    requests: u32,
    window: Option<Value>,
    key_by: Option<String>,
}

fn bad(path: &str, message: impl std::fmt::Display) -> Error {
    Error::internal(format!("rateLimit{path}: {message}"))
        .with_data(json!({ "key": format!("rateLimit{path}"), "expected": message.to_string() }))
}

fn window(v: Option<&Value>, at: &str) -> Result<Duration, Error> {
    let text = match v {
        None => return Ok(Duration::from_secs(60)),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(bad(at, format!("expected a duration such as \"1m\" or 60, found {other}"))),
    };
    parse_seconds(&text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| bad(at, format!("expected a duration such as \"1m\" or 60 (seconds), found {text:?}")))
}

fn key_by(v: Option<&str>, at: &str) -> Result<KeyBy, Error> {
    match v {
        None => Ok(KeyBy::Ip),
        Some(s) => KeyBy::parse(s).ok_or_else(|| bad(at, format!("expected ip or identity, found {s:?}"))),
    }
}

fn glob(pattern: &str, at: &str) -> Result<globset::Glob, Error> {
    if !pattern.starts_with('/') {
        return Err(bad(at, format!("expected a path glob starting with '/', found {pattern:?}")));
    }
    GlobBuilder::new(pattern).literal_separator(true).build().map_err(|e| bad(at, format!("not a glob: {e}")))
}

fn limiter(requests: u32, window: Duration, at: &str, window_at: &str) -> Result<Limiter, Error> {
    let n = NonZeroU32::new(requests).ok_or_else(|| bad(at, "expected 1 or more requests, found 0"))?;
    Limiter::new(n, window).ok_or_else(|| {
        bad(window_at, format!("{window:?} is too short for {requests} requests (at least 1 ns per request)"))
    })
}

impl RateLimits {
    /// The rules from the manifest's `rateLimit` option and the `GATEWAY_RATE_LIMIT_*`
    /// variables (which win over the manifest's `requests` and `window`).
    ///
    /// # Errors
    /// A bad option, naming its key (`rateLimit.routes[1].window`) and what was expected; a
    /// bad variable, naming the variable.
    pub fn from_options(option: Option<&Value>, settings: &RawSettings) -> Result<Self, Error> {
        let opts: Options = match option {
            None | Some(Value::Null) => Options::default(),
            Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." { String::new() } else { format!(".{path}") };
                bad(&at, e.inner())
            })?,
        };
        let var = |e: marina_core::settings::ConfigError| {
            Error::internal(e.to_string()).with_data(json!({ "variable": e.var, "expected": e.expected }))
        };
        let requests = match settings.get("GATEWAY_RATE_LIMIT_REQUESTS") {
            Some(_) => Some(settings.count("GATEWAY_RATE_LIMIT_REQUESTS", 0).map_err(var)? as u64),
            None => opts.requests.map(u64::from),
        };
        let mut rules = Vec::new();
        if let Some(n) = requests {
            let (window, at) = match settings.get("GATEWAY_RATE_LIMIT_WINDOW") {
                Some(_) => (settings.seconds("GATEWAY_RATE_LIMIT_WINDOW", Duration::ZERO).map_err(var)?, None),
                None => (window(opts.window.as_ref(), ".window")?, Some(".window")),
            };
            let n = u32::try_from(n).map_err(|_| bad(".requests", "expected at most 4294967295"))?;
            let limiter = match at {
                Some(at) => limiter(n, window, ".requests", at)?,
                // Already checked at start-up by the server (`RuntimeConfig::from_raw`); kept for
                // embedders that build settings by hand.
                None => NonZeroU32::new(n).and_then(|n| Limiter::new(n, window)).ok_or_else(|| {
                    Error::internal(format!(
                        "invalid GATEWAY_RATE_LIMIT_WINDOW {window:?}: too short for {n} requests (at least 1 ns per request)"
                    ))
                    .with_data(json!({ "variable": "GATEWAY_RATE_LIMIT_WINDOW" }))
                })?,
            };
            rules.push(Rule {
                path: None,
                matcher: None,
                methods: Vec::new(),
                key_by: key_by(opts.key_by.as_deref(), ".keyBy")?,
                limiter,
            });
        }
        for (i, r) in opts.routes.iter().enumerate() {
            let at = format!(".routes[{i}]");
            let methods = r
                .methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| bad(&format!("{at}.methods"), format!("not an HTTP method: {m:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let window = window(r.window.as_ref(), &format!("{at}.window"))?;
            rules.push(Rule {
                path: Some(r.path.clone()),
                matcher: Some(glob(&r.path, &format!("{at}.path"))?.compile_matcher()),
                methods,
                key_by: key_by(r.key_by.as_deref(), &format!("{at}.keyBy"))?,
                limiter: limiter(r.requests, window, &format!("{at}.requests"), &format!("{at}.window"))?,
            });
        }
        let excludes = if opts.exclude_paths.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for (i, p) in opts.exclude_paths.iter().enumerate() {
                set.add(glob(p, &format!(".excludePaths[{i}]"))?);
            }
            Some(set.build().map_err(|e| bad(".excludePaths", e))?)
        };
        // The variable wins; its table row has already refused anything but the two words.
        let headers = match settings.choice("GATEWAY_RATE_LIMIT_HEADERS").map_err(var)? {
            Some(v) => HeadersOn::parse(&v).unwrap_or_default(),
            None => match opts.headers.as_deref() {
                None => HeadersOn::default(),
                Some(v) => HeadersOn::parse(v)
                    .ok_or_else(|| bad(".headers", format!("expected limited or always, found {v:?}")))?,
            },
        };
        Ok(Self { rules, headers, excludes, exclude_text: opts.exclude_paths })
    }

    /// True when no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Count the request under every rule that applies, stopping at the first refusal. The
    /// verdict returned is that refusal, or the allowing verdict with the fewest requests left
    /// (what the `RateLimit-*` headers show); `None` when no rule applies.
    pub fn check(&self, ctx: &RequestContext) -> Option<(Verdict, &Rule)> {
        let mut tightest: Option<(Verdict, &Rule)> = None;
        for rule in &self.rules {
            let applies = match &rule.matcher {
                None => !self.excludes.as_ref().is_some_and(|x| x.is_match(&*ctx.path)),
                Some(m) => (rule.methods.is_empty() || rule.methods.contains(&ctx.method)) && m.is_match(&*ctx.path),
            };
            if !applies {
                continue;
            }
            let v = rule.limiter.check(rule.key(ctx));
            if !v.allowed {
                return Some((v, rule));
            }
            if tightest.is_none_or(|(t, _)| v.remaining < t.remaining) {
                tightest = Some((v, rule));
            }
        }
        tightest
    }

    /// The configuration as `/gateway/api/config` shows it (Buntime's `rateLimit` keys first).
    pub fn describe(&self) -> Value {
        let default = self.rules.iter().find(|r| r.path.is_none());
        if default.is_none() && self.rules.is_empty() {
            return Value::Null;
        }
        json!({
            "requests": default.map(|r| r.limiter.limit()),
            "window": default.map(|r| format!("{}s", r.limiter.window().as_secs_f64())),
            "keyBy": default.map(|r| r.key_by.as_str()),
            "excludePaths": self.exclude_text,
            "algorithm": "gcra",
            "headers": self.headers.as_str(),
            "routes": self.rules.iter().filter(|r| r.path.is_some()).map(Rule::describe).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::context::Identity;

    fn ctx(method: Method, path: &str, ip: &str) -> RequestContext {
        let mut c = RequestContext::new("r", format!("{ip}:1").parse().unwrap(), method, path);
        c.client_ip = ip.parse().unwrap();
        c
    }

    fn limits(v: Value) -> Result<RateLimits, Error> {
        RateLimits::from_options(Some(&v), &RawSettings::new())
    }

    #[test]
    fn routes_methods_and_excludes() {
        let l = limits(json!({
            "requests": 100, "window": "1h", "excludePaths": ["/health", "/static/**"],
            "routes": [{ "path": "/shop/login/**", "methods": ["post"], "requests": 2, "window": 3600 }]
        }))
        .unwrap();
        assert_eq!(l.rules.len(), 2);
        let login = |ip| ctx(Method::POST, "/shop/login/form", ip);
        assert!(l.check(&login("10.0.0.1")).unwrap().0.allowed);
        let (v, rule) = l.check(&login("10.0.0.1")).unwrap();
        assert!(v.allowed && v.remaining == 0);
        assert_eq!(rule.name(), "/shop/login/**");
        let (v, rule) = l.check(&login("10.0.0.1")).unwrap();
        assert!(!v.allowed);
        assert_eq!(rule.name(), "/shop/login/**");
        // GET is not limited by the route rule, another address has its own allowance.
        assert!(l.check(&ctx(Method::GET, "/shop/login/form", "10.0.0.1")).unwrap().0.allowed);
        assert!(l.check(&login("10.0.0.2")).unwrap().0.allowed);
        // `*` stays within a segment; excluded paths meet no rule at all.
        assert!(l.check(&ctx(Method::GET, "/health", "10.0.0.1")).is_none());
        assert!(l.check(&ctx(Method::GET, "/static/a/b.css", "10.0.0.1")).is_none());
        assert_eq!(l.check(&ctx(Method::GET, "/healthz", "10.0.0.1")).unwrap().1.name(), "default");
    }

    #[test]
    fn identity_keys_fall_back_to_the_address() {
        let l = limits(json!({ "requests": 1, "window": "1h", "keyBy": "user" })).unwrap();
        let mut a = ctx(Method::GET, "/x", "10.0.0.1");
        a.identity = Some(std::sync::Arc::new(Identity {
            id: "3".into(),
            name: None,
            roles: vec![],
            kind: marina_auth::IdentityKind::Apikey,
            permissions: vec![],
            claims: None,
            key_id: Some(3),
        }));
        assert_eq!(l.rules[0].key(&a).to_string(), "api-key:3");
        assert!(l.check(&a).unwrap().0.allowed);
        assert!(!l.check(&a).unwrap().0.allowed);
        // The same address without the identity has its own bucket.
        let anon = ctx(Method::GET, "/x", "10.0.0.1");
        assert_eq!(l.rules[0].key(&anon).to_string(), "ip:10.0.0.1");
        assert!(l.check(&anon).unwrap().0.allowed);
    }

    #[test]
    fn bad_options_name_their_key() {
        let msg = |v: Value| limits(v).err().unwrap().message().to_string();
        assert!(msg(json!({ "requests": 5, "window": "soon" })).starts_with("rateLimit.window: "));
        assert!(msg(json!({ "requests": 5, "window": 0 })).starts_with("rateLimit.window: "));
        assert!(msg(json!({ "requests": 0 })).starts_with("rateLimit.requests: "));
        assert!(msg(json!({ "requests": 5, "keyBy": "cookie" })).starts_with("rateLimit.keyBy: "));
        assert_eq!(
            msg(json!({ "requests": 5, "headers": "sometimes" })),
            "rateLimit.headers: expected limited or always, found \"sometimes\""
        );
        assert!(
            msg(json!({ "routes": [{ "path": "/a", "requests": 1 }, { "path": "nope", "requests": 1 }] }))
                .starts_with("rateLimit.routes[1].path: ")
        );
        assert!(
            msg(json!({ "routes": [{ "path": "/a", "requests": "x" }] })).starts_with("rateLimit.routes[0].requests: ")
        );
        assert!(
            msg(json!({ "routes": [{ "path": "/a", "requests": 1, "methods": ["GE T"] }] }))
                .starts_with("rateLimit.routes[0].methods: ")
        );
        assert!(msg(json!({ "requestz": 5 })).starts_with("rateLimit.requestz: unknown field"));
        assert!(msg(json!({ "excludePaths": ["/a/[b"] })).starts_with("rateLimit.excludePaths[0]: "));
        assert!(
            msg(json!({ "routes": [{ "path": "/a", "requests": 10, "window": "5ns" }] }))
                .starts_with("rateLimit.routes[0].window: ")
        );
    }

    #[test]
    fn variables_win_over_the_manifest() {
        let mut s = RawSettings::new();
        s.set("GATEWAY_RATE_LIMIT_REQUESTS", "7").set("GATEWAY_RATE_LIMIT_WINDOW", "2m");
        let l = RateLimits::from_options(Some(&json!({ "requests": 1000, "window": "1m" })), &s).unwrap();
        assert_eq!(l.rules[0].limiter.limit(), 7);
        assert_eq!(l.rules[0].limiter.window(), Duration::from_secs(120));
        assert!(RateLimits::from_options(None, &RawSettings::new()).unwrap().is_empty());
        // RateLimit-* on allowed answers: off unless asked for; the variable wins.
        assert_eq!(l.headers, HeadersOn::Limited);
        let always = json!({ "requests": 1, "headers": "Always" });
        assert_eq!(RateLimits::from_options(Some(&always), &RawSettings::new()).unwrap().headers, HeadersOn::Always);
        s.set("GATEWAY_RATE_LIMIT_HEADERS", "limited");
        assert_eq!(RateLimits::from_options(Some(&always), &s).unwrap().headers, HeadersOn::Limited);
        s.set("GATEWAY_RATE_LIMIT_HEADERS", "often");
        let err = RateLimits::from_options(Some(&always), &s).err().unwrap();
        assert!(err.message().contains("GATEWAY_RATE_LIMIT_HEADERS"), "{}", err.message());
        assert_eq!(RateLimits::from_options(None, &RawSettings::new()).unwrap().describe(), Value::Null);
    }
}
