//! The CORS decision, kept apart from HTTP plumbing so the whole matrix (origin list or `*`,
//! with or without credentials, preflight or not) is unit-tested as plain data.
//!
//! Buntime sent `Access-Control-Allow-Origin` only when its origin was `*`, so specific origins
//! never worked; this follows the Fetch standard instead: an allowed origin is echoed with
//! `Vary: Origin`, `*` is never combined with credentials, a disallowed origin gets no
//! `Access-Control-*` header at all.
//!
//! Configured by the gateway manifest's `cors` option (Buntime's keys) and the
//! `GATEWAY_CORS_ORIGIN` / `GATEWAY_CORS_CREDENTIALS` variables, which win over it:
//!
//! ```yaml
//! cors:
//!   origin: ["https://app.example.com"]   # "*", one origin, a comma list or a list; default "*"
//!   methods: [GET, POST]                  # what a preflight allows; default Buntime's six
//!   allowedHeaders: [content-type]        # default: what the preflight asks for is reflected
//!   exposedHeaders: [x-total-count]       # default: the RateLimit-* headers and X-Request-Id
//!   credentials: false
//!   maxAge: 86400                         # seconds a browser may cache a preflight answer
//!   preflight: true                       # false: preflights go on to the apps
//! ```

use http::{HeaderMap, HeaderValue, header};
use marina_core::Error;
use marina_core::settings::{RawSettings, is_origin};
use serde::Deserialize;
use serde_json::{Value, json};

/// Methods a preflight allows (Buntime's default list).
pub const METHODS: &str = "GET, HEAD, PUT, PATCH, POST, DELETE";
/// How long a browser may cache a preflight answer, in seconds (Buntime's default).
pub const MAX_AGE: u64 = 86400;
/// Response headers a page may read besides the CORS-safelisted ones.
pub const EXPOSE: &str = "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-Request-Id";

/// Which origins may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Any origin.
    Any,
    /// Exactly these (lower-cased, no trailing slash).
    List(Vec<String>),
}

/// The gateway's CORS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Allowed origins.
    pub origins: Origins,
    /// Whether cookies and `Authorization` may be sent (`Access-Control-Allow-Credentials`).
    pub credentials: bool,
    /// `Access-Control-Allow-Methods` of a preflight answer.
    pub methods: String,
    /// `Access-Control-Allow-Headers` of a preflight answer; `None` reflects what was asked.
    pub allowed_headers: Option<String>,
    /// `Access-Control-Expose-Headers` of an ordinary answer (empty: none sent).
    pub exposed_headers: String,
    /// `Access-Control-Max-Age` of a preflight answer, in seconds.
    pub max_age: u64,
    /// Whether the gateway answers preflights itself (else they reach the apps).
    pub preflight: bool,
    /// `exposed_headers` as a header value, once made ([`Policy::exposed_value`]).
    exposed_cache: std::sync::OnceLock<Option<HeaderValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Options {
    origin: Option<Value>,
    methods: Option<Value>,
    allowed_headers: Option<Value>,
    exposed_headers: Option<Value>,
    credentials: Option<bool>,
    max_age: Option<u64>,
    preflight: Option<bool>,
}

fn bad(at: &str, message: impl std::fmt::Display) -> Error {
    Error::internal(format!("cors{at}: {message}"))
        .with_data(json!({ "key": format!("cors{at}"), "expected": message.to_string() }))
}

/// A string (comma-separated) or a list of strings, each trimmed, empty ones dropped.
fn list(v: &Value, at: &str) -> Result<Vec<String>, Error> {
    let items: Vec<&str> = match v {
        Value::String(s) => s.split(',').collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().ok_or_else(|| bad(&format!("{at}[{i}]"), format!("expected a string, found {v}"))))
            .collect::<Result<_, _>>()?,
        other => return Err(bad(at, format!("expected a string or a list of strings, found {other}"))),
    };
    Ok(items.into_iter().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

fn header_names(v: &Value, at: &str) -> Result<String, Error> {
    let names = list(v, at)?;
    if let Some(n) = names.iter().find(|n| http::HeaderName::from_bytes(n.as_bytes()).is_err()) {
        return Err(bad(at, format!("expected header names, found {n:?}")));
    }
    Ok(names.join(", "))
}

fn origins(items: Vec<String>, at: &str) -> Result<Origins, Error> {
    if items.iter().any(|o| o == "*") {
        return if items.len() == 1 {
            Ok(Origins::Any)
        } else {
            Err(bad(at, "expected \"*\" alone or a list of origins, found \"*\" among origins"))
        };
    }
    if let Some(o) = items.iter().find(|o| !is_origin(o.trim_end_matches('/'))) {
        return Err(bad(at, format!("expected an origin such as https://app.example.com, found {o:?}")));
    }
    if items.is_empty() {
        return Err(bad(at, "expected \"*\" or at least one origin, found none"));
    }
    Ok(Origins::List(items.iter().map(|o| normalize(o)).collect()))
}

impl Policy {
    /// From `GATEWAY_CORS_ORIGIN` (`*` or a comma list, already validated) and
    /// `GATEWAY_CORS_CREDENTIALS`, everything else at its default.
    pub fn parse(origin: &str, credentials: bool) -> Self {
        let origin = origin.trim();
        let origins = if origin == "*" {
            Origins::Any
        } else {
            Origins::List(origin.split(',').map(normalize).filter(|o| !o.is_empty()).collect())
        };
        Self {
            origins,
            credentials,
            methods: METHODS.into(),
            allowed_headers: None,
            exposed_headers: EXPOSE.into(),
            max_age: MAX_AGE,
            preflight: true,
            exposed_cache: std::sync::OnceLock::new(),
        }
    }

    /// The policy from the manifest's `cors` option and the `GATEWAY_CORS_*` variables (which
    /// win over `origin` and `credentials`); `None` when neither configures CORS.
    ///
    /// # Errors
    /// A bad option, naming its key (`cors.methods[1]`) and what was expected; a bad variable,
    /// naming the variable.
    pub fn configure(option: Option<&Value>, settings: &RawSettings) -> Result<Option<Self>, Error> {
        let opts: Option<Options> = match option {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_path_to_error::deserialize(v.clone()).map_err(|e| {
                let path = e.path().to_string();
                bad(&if path == "." { String::new() } else { format!(".{path}") }, e.inner())
            })?),
        };
        let var = |e: marina_core::settings::ConfigError| {
            Error::internal(e.to_string()).with_data(json!({ "variable": e.var, "expected": e.expected }))
        };
        let from_env = settings.checked("GATEWAY_CORS_ORIGIN").map_err(var)?;
        let opts = match (from_env, opts) {
            (None, None) => return Ok(None),
            (_, o) => o.unwrap_or_default(),
        };
        let mut policy = Self::parse(from_env.unwrap_or("*"), false);
        if from_env.is_none()
            && let Some(v) = &opts.origin
        {
            policy.origins = origins(list(v, ".origin")?, ".origin")?;
        }
        policy.credentials = match settings.get("GATEWAY_CORS_CREDENTIALS") {
            Some(_) => settings.flag("GATEWAY_CORS_CREDENTIALS", false).map_err(var)?,
            None => opts.credentials.unwrap_or(false),
        };
        if let Some(v) = &opts.methods {
            let methods = list(v, ".methods")?;
            if let Some(m) = methods.iter().find(|m| http::Method::from_bytes(m.as_bytes()).is_err()) {
                return Err(bad(".methods", format!("expected HTTP methods such as GET, found {m:?}")));
            }
            if methods.is_empty() {
                return Err(bad(".methods", "expected at least one method, found none"));
            }
            policy.methods = methods.iter().map(|m| m.to_ascii_uppercase()).collect::<Vec<_>>().join(", ");
        }
        if let Some(v) = &opts.allowed_headers {
            policy.allowed_headers = Some(header_names(v, ".allowedHeaders")?);
        }
        if let Some(v) = &opts.exposed_headers {
            policy.exposed_headers = header_names(v, ".exposedHeaders")?;
        }
        if let Some(age) = opts.max_age {
            // Browsers cap it far lower (Chromium: 2 h); a day is Buntime's default.
            if age > 7 * 86400 {
                return Err(bad(".maxAge", format!("expected at most 604800 seconds (7 days), found {age}")));
            }
            policy.max_age = age;
        }
        policy.preflight = opts.preflight.unwrap_or(true);
        Ok(Some(policy))
    }

    /// What `/gateway/api/config` shows.
    pub fn describe(&self) -> Value {
        let split = |s: &str| s.split(", ").filter(|h| !h.is_empty()).map(str::to_string).collect::<Vec<_>>();
        json!({
            "origin": match &self.origins { Origins::Any => json!("*"), Origins::List(l) => json!(l) },
            "credentials": self.credentials,
            "methods": split(&self.methods),
            "allowedHeaders": self.allowed_headers.as_deref().map(split),
            "exposedHeaders": split(&self.exposed_headers),
            "maxAge": self.max_age,
            "preflight": self.preflight,
        })
    }

    /// Whether the answer depends on the request's `Origin` (so caches must key on it).
    pub fn varies(&self) -> bool {
        self.credentials || matches!(self.origins, Origins::List(_))
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, or `None` when the
    /// origin is absent or not allowed (then no CORS header is sent).
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        self.allowed(origin?).map(|a| match a {
            Allowed::Star => "*".to_string(),
            Allowed::Echo(origin) => origin.to_string(),
        })
    }

    /// Whether `origin` (a request's `Origin`) may read the answer, and how to say so.
    fn allowed<'o>(&self, origin: &'o str) -> Option<Allowed<'o>> {
        let origin = origin.trim_ascii();
        if origin.is_empty() {
            return None;
        }
        match &self.origins {
            // `*` with credentials is refused by browsers: echo the caller instead.
            Origins::Any if self.credentials => Some(Allowed::Echo(origin)),
            Origins::Any => Some(Allowed::Star),
            Origins::List(list) if list.iter().any(|o| same_origin(o, origin)) => Some(Allowed::Echo(origin)),
            Origins::List(_) => None,
        }
    }

    /// Adds the CORS headers of an ordinary (non-preflight) response to `headers`; `origin` is
    /// the request's `Origin`. Runs on every answer, so it builds no strings: the allowed
    /// origin is the request's own header value, the rest are constants or made once.
    pub fn add_response_headers(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if let Some(value) = origin
            && let Ok(text) = value.to_str()
            && let Some(allow) = self.allowed(text)
        {
            let allow = match allow {
                Allowed::Star => HeaderValue::from_static("*"),
                Allowed::Echo(o) if o.len() == text.len() => value.clone(),
                Allowed::Echo(o) => HeaderValue::from_str(o).unwrap_or_else(|_| value.clone()),
            };
            headers.append(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            if self.credentials {
                headers.append(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            if let Some(exposed) = self.exposed_value() {
                headers.append(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
            }
        }
        if self.varies() {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    /// `Access-Control-Expose-Headers` as a header value, made on first use (the field can be
    /// set after construction) and then shared by every answer.
    fn exposed_value(&self) -> Option<&HeaderValue> {
        self.exposed_cache
            .get_or_init(|| {
                Some(&self.exposed_headers).filter(|h| !h.is_empty()).and_then(|h| HeaderValue::from_str(h).ok())
            })
            .as_ref()
    }

    /// Headers for the 204 answer to a preflight; `request_headers` is the preflight's
    /// `Access-Control-Request-Headers`, reflected when the origin is allowed and no
    /// `allowedHeaders` are configured.
    pub fn preflight_headers(
        &self,
        origin: Option<&str>,
        request_headers: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(allow) = self.allow_origin(origin) {
            out.push(("access-control-allow-origin", allow));
            if self.credentials {
                out.push(("access-control-allow-credentials", "true".into()));
            }
            out.push(("access-control-allow-methods", self.methods.clone()));
            let allowed = match &self.allowed_headers {
                Some(list) => Some(list.as_str()),
                None => request_headers.map(str::trim),
            };
            if let Some(h) = allowed.filter(|h| !h.is_empty()) {
                out.push(("access-control-allow-headers", h.to_string()));
            }
            out.push(("access-control-max-age", self.max_age.to_string()));
        }
        if self.varies() {
            out.push(("vary", "Origin".into()));
        }
        out.push(("vary", "Access-Control-Request-Method, Access-Control-Request-Headers".into()));
        out
    }
}

/// Origins compare case-insensitively and without a trailing slash.
fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether a request's `origin` is the configured `normalized` one (as [`normalize`] makes it),
/// without allocating: compared case-insensitively, a trailing slash ignored.
fn same_origin(normalized: &str, origin: &str) -> bool {
    // Browsers send the origin as serialized (lower case, no slash): one comparison of bytes.
    if origin == normalized {
        return true;
    }
    // ASCII trims: an `Origin` that reached here is header text, and this runs per answer
    // (`str::trim`'s Unicode tables and the pattern searcher cost ~100 instructions).
    let mut origin = origin.trim_ascii();
    while let Some(rest) = origin.strip_suffix('/') {
        origin = rest;
    }
    origin.eq_ignore_ascii_case(normalized)
}

/// How an allowed origin is answered.
enum Allowed<'o> {
    /// `Access-Control-Allow-Origin: *`.
    Star,
    /// The request's origin, echoed.
    Echo(&'o str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a, N: AsRef<str>>(h: &'a [(N, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| n.as_ref() == name).map(|(_, v)| v.as_str())
    }

    /// The headers [`Policy::add_response_headers`] adds for a request from `origin`.
    fn response_headers(p: &Policy, origin: Option<&str>) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        p.add_response_headers(origin.map(|o| HeaderValue::from_str(o).unwrap()).as_ref(), &mut h);
        h.iter().map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string())).collect()
    }

    #[test]
    fn a_listed_origin_is_echoed_with_vary() {
        let p = Policy::parse("https://a.example, http://localhost:3000", false);
        let h = response_headers(&p, Some("https://a.example"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://a.example"));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
        // Case and a trailing slash in the configuration do not matter.
        let p = Policy::parse("HTTPS://A.example/", false);
        assert_eq!(p.allow_origin(Some("https://a.example")).as_deref(), Some("https://a.example"));
        assert_eq!(
            Policy::parse("http://localhost:3000", false).allow_origin(Some("http://localhost:3000")).as_deref(),
            Some("http://localhost:3000")
        );
    }

    #[test]
    fn other_origins_get_no_cors_header() {
        let p = Policy::parse("https://a.example", true);
        for origin in [Some("https://evil.example"), Some("https://a.example.evil"), Some("null"), Some(""), None] {
            let h = response_headers(&p, origin);
            assert!(h.iter().all(|(n, _)| !n.starts_with("access-control-")), "{origin:?}: {h:?}");
            assert_eq!(get(&h, "vary"), Some("Origin"), "caches must still key on Origin");
            let h = p.preflight_headers(origin, Some("content-type"));
            assert!(h.iter().all(|(n, _)| !n.starts_with("access-control-")), "{origin:?}: {h:?}");
        }
        // A different port or scheme is a different origin.
        assert_eq!(p.allow_origin(Some("http://a.example")), None);
        assert_eq!(p.allow_origin(Some("https://a.example:8443")), None);
    }

    #[test]
    fn star_without_credentials_is_star_and_does_not_vary() {
        let p = Policy::parse("*", false);
        let h = response_headers(&p, Some("https://any.example"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&h, "vary"), None);
        assert!(response_headers(&p, None).is_empty(), "no Origin, not a CORS request");
    }

    #[test]
    fn star_is_never_sent_with_credentials() {
        let p = Policy::parse("*", true);
        let h = response_headers(&p, Some("https://any.example"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://any.example"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        let h = p.preflight_headers(Some("https://any.example"), None);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://any.example"));
    }

    #[test]
    fn preflight_reflects_headers_and_lists_methods() {
        let p = Policy::parse("https://a.example", true);
        let h = p.preflight_headers(Some("https://a.example"), Some(" content-type, x-api-key "));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://a.example"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some(METHODS));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("content-type, x-api-key"));
        assert_eq!(get(&h, "access-control-max-age"), Some("86400"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        let h = p.preflight_headers(Some("https://a.example"), None);
        assert_eq!(get(&h, "access-control-allow-headers"), None);
    }

    fn configured(option: Value, env: &[(&str, &str)]) -> Result<Option<Policy>, String> {
        let mut raw = RawSettings::default();
        for (k, v) in env {
            raw.set(k, *v);
        }
        Policy::configure(Some(&option), &raw).map_err(|e| e.message().to_string())
    }

    #[test]
    fn manifest_options_shape_the_answers() {
        let p = configured(
            json!({
                "origin": ["https://a.example", "https://b.example/"],
                "methods": "get, post",
                "allowedHeaders": ["content-type", "authorization"],
                "exposedHeaders": [],
                "credentials": true,
                "maxAge": 600,
            }),
            &[],
        )
        .unwrap()
        .unwrap();
        let h = p.preflight_headers(Some("https://b.example"), Some("x-evil"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://b.example"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("content-type, authorization"), "not reflected");
        assert_eq!(get(&h, "access-control-max-age"), Some("600"));
        let h = response_headers(&p, Some("https://a.example"));
        assert_eq!(get(&h, "access-control-expose-headers"), None, "an empty list exposes nothing");
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(p.describe()["methods"], json!(["GET", "POST"]));
        // `cors: {}` is CORS for every origin, as Buntime's (Hono's) default.
        let p = configured(json!({}), &[]).unwrap().unwrap();
        assert_eq!(p.origins, Origins::Any);
        assert!(p.preflight);
        assert_eq!(Policy::configure(None, &RawSettings::default()).unwrap(), None);
    }

    #[test]
    fn the_variables_win_over_the_manifest() {
        let p = configured(
            json!({ "origin": "https://a.example", "credentials": true, "maxAge": 5 }),
            &[("GATEWAY_CORS_ORIGIN", "https://b.example"), ("GATEWAY_CORS_CREDENTIALS", "false")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.origins, Origins::List(vec!["https://b.example".into()]));
        assert!(!p.credentials);
        assert_eq!(p.max_age, 5, "options the variables do not cover still apply");
        let p = configured(Value::Null, &[("GATEWAY_CORS_ORIGIN", "*")]).unwrap().unwrap();
        assert_eq!(p.origins, Origins::Any);
    }

    #[test]
    fn bad_options_name_their_key() {
        for (option, key) in [
            (json!({ "origin": "app.example.com" }), "cors.origin: "),
            (json!({ "origin": ["*", "https://a.example"] }), "cors.origin: "),
            (json!({ "origin": [] }), "cors.origin: "),
            (json!({ "origin": ["https://a.example", 5] }), "cors.origin[1]: "),
            (json!({ "origin": 5 }), "cors.origin: "),
            (json!({ "methods": ["GET", "NOT A METHOD"] }), "cors.methods: "),
            (json!({ "allowedHeaders": ["bad header"] }), "cors.allowedHeaders: "),
            (json!({ "maxAge": -1 }), "cors.maxAge: "),
            (json!({ "maxAge": 10_000_000 }), "cors.maxAge: "),
            (json!({ "credentials": "yes" }), "cors.credentials: "),
            (json!({ "origins": "*" }), "cors.origins: "),
            (json!("*"), "cors: "),
        ] {
            let msg = configured(option.clone(), &[]).expect_err("refused");
            assert!(msg.starts_with(key), "{option}: {msg}");
        }
    }
}
