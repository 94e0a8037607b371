//! The gateway core plugin (`@buntime/plugin-gateway`, base `/gateway`, buntime.md §6.2):
//! CORS for browsers and per-client rate limits in front of every route, and its own
//! `/gateway/api/stats` and `/gateway/api/config`.
//!
//! Order inside `on_request`: a CORS preflight is answered first (204, never reaching a worker,
//! not counted against the limit, as in Buntime), then the rate limit. A valid API key or
//! identity does not skip the limit. `on_response` adds the CORS and `RateLimit-*` headers to
//! every answer, errors included, so a page can read a 429.

pub mod cors;
pub mod limit;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use marina_core::settings::RawSettings;
use marina_core::{Body, Error, body};
use serde_json::json;

use crate::context::RequestContext;
use crate::plugin::{Outcome, Plugin, PluginEnv, PluginSpec};
use crate::{api, async_trait};

/// The manifest name marina's gateway answers to (also `plugin-gateway` and `gateway`).
pub const NAME: &str = "@buntime/plugin-gateway";

/// The gateway's configuration, from its `GATEWAY_*` variables.
pub struct Config {
    /// `GATEWAY_CORS_ORIGIN` (with `GATEWAY_CORS_CREDENTIALS`); `None`: no CORS handling.
    pub cors: Option<cors::Policy>,
    /// `GATEWAY_RATE_LIMIT_REQUESTS` per `GATEWAY_RATE_LIMIT_WINDOW`; `None`: no limit.
    pub limiter: Option<limit::Limiter>,
}

impl Config {
    /// Read the variables (already validated by the server at start-up).
    ///
    /// # Errors
    /// A value that does not parse, or a window too short for the request count.
    pub fn from_settings(s: &RawSettings) -> Result<Self, Error> {
        let bad = |e: marina_core::settings::ConfigError| Error::internal(e.to_string());
        let cors = match s.checked("GATEWAY_CORS_ORIGIN").map_err(bad)? {
            Some(origin) => Some(cors::Policy::parse(origin, s.flag("GATEWAY_CORS_CREDENTIALS", false).map_err(bad)?)),
            None => None,
        };
        let window = s.seconds("GATEWAY_RATE_LIMIT_WINDOW", Duration::from_secs(60)).map_err(bad)?;
        let limiter = match s.get("GATEWAY_RATE_LIMIT_REQUESTS") {
            None => None,
            Some(_) => {
                let n = s.count("GATEWAY_RATE_LIMIT_REQUESTS", 0).map_err(bad)?;
                let n = u32::try_from(n).ok().and_then(NonZeroU32::new).ok_or_else(|| {
                    Error::internal(format!("invalid GATEWAY_RATE_LIMIT_REQUESTS {n}: expected 1 or more"))
                })?;
                Some(limit::Limiter::new(n, window).ok_or_else(|| {
                    Error::internal(format!(
                        "invalid GATEWAY_RATE_LIMIT_WINDOW {window:?}: too short for {n} requests (expected at least 1 ns per request)"
                    ))
                })?)
            }
        };
        Ok(Self { cors, limiter })
    }
}

/// Counters for `/gateway/api/stats`.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    allowed: AtomicU64,
    rate_limited: AtomicU64,
    preflights: AtomicU64,
}

/// Carried from `on_request` to `on_response` in the request context.
#[derive(Clone)]
struct Seen {
    origin: Option<String>,
    preflight: bool,
    verdict: Option<limit::Verdict>,
}

/// The gateway plugin.
pub struct Gateway {
    config: Config,
    stats: Stats,
}

impl Gateway {
    /// A gateway with this configuration.
    pub fn new(config: Config) -> Self {
        Self { config, stats: Stats::default() }
    }

    /// The catalog entry: builds a gateway from the `GATEWAY_*` variables.
    pub fn factory() -> crate::Factory {
        Arc::new(|_spec: &PluginSpec, env: &PluginEnv| {
            Ok(Arc::new(Gateway::new(Config::from_settings(&env.settings)?)) as Arc<dyn Plugin>)
        })
    }

    fn stats_json(&self) -> serde_json::Value {
        let s = &self.stats;
        json!({
            "totalRequests": s.requests.load(Ordering::Relaxed),
            "allowedRequests": s.allowed.load(Ordering::Relaxed),
            "blockedRequests": s.rate_limited.load(Ordering::Relaxed),
            "preflights": s.preflights.load(Ordering::Relaxed),
            "activeBuckets": self.config.limiter.as_ref().map_or(0, limit::Limiter::tracked),
        })
    }

    fn config_json(&self) -> serde_json::Value {
        let cors = self.config.cors.as_ref().map(|p| {
            json!({
                "origin": match &p.origins { cors::Origins::Any => json!("*"), cors::Origins::List(l) => json!(l) },
                "credentials": p.credentials,
                "methods": cors::METHODS,
                "maxAge": cors::MAX_AGE.parse::<u64>().unwrap_or_default(),
            })
        });
        let rate = self.config.limiter.as_ref().map(|l| {
            json!({
                "requests": l.limit(),
                "windowSeconds": l.window().as_secs_f64(),
                "keyBy": "ip",
                "algorithm": "gcra",
                "trustedProxies": [],
            })
        });
        json!({ "cors": cors, "rateLimit": rate })
    }
}

fn header_str(req: &Request<Body>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn put(headers: &mut http::HeaderMap, list: Vec<(&'static str, String)>) {
    for (name, value) in list {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
}

fn rate_headers(v: &limit::Verdict) -> Vec<(&'static str, String)> {
    vec![
        ("ratelimit-limit", v.limit.to_string()),
        ("ratelimit-remaining", v.remaining.to_string()),
        ("ratelimit-reset", v.reset_secs.to_string()),
    ]
}

#[async_trait]
impl Plugin for Gateway {
    async fn on_request(&self, req: &mut Request<Body>, ctx: &mut RequestContext) -> Result<Outcome, Error> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let origin = header_str(req, header::ORIGIN).map(str::to_string);
        if let Some(policy) = &self.config.cors
            && req.method() == Method::OPTIONS
            && origin.is_some()
            && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            self.stats.preflights.fetch_add(1, Ordering::Relaxed);
            let asked = header_str(req, header::ACCESS_CONTROL_REQUEST_HEADERS);
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            put(resp.headers_mut(), policy.preflight_headers(origin.as_deref(), asked));
            ctx.extensions.insert(Seen { origin, preflight: true, verdict: None });
            return Ok(Outcome::Respond(resp));
        }
        let verdict = self.config.limiter.as_ref().map(|l| l.check(ctx.client_ip));
        ctx.extensions.insert(Seen { origin, preflight: false, verdict });
        match verdict {
            Some(v) if !v.allowed => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                let mut err = Error::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    format!("too many requests from {}: retry in {} s", ctx.client_ip, v.reset_secs),
                )
                .with_data(json!({ "limit": v.limit, "retryAfter": v.reset_secs }))
                .with_header(header::RETRY_AFTER, HeaderValue::from(v.reset_secs));
                for (name, value) in rate_headers(&v) {
                    err =
                        err.with_header(HeaderName::from_static(name), HeaderValue::from_str(&value).expect("digits"));
                }
                Err(err)
            }
            _ => {
                self.stats.allowed.fetch_add(1, Ordering::Relaxed);
                Ok(Outcome::Continue)
            }
        }
    }

    fn has_routes(&self) -> bool {
        true
    }

    async fn handle(&self, req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        let body = match req.uri().path() {
            "/api/stats" => self.stats_json(),
            "/api/config" => self.config_json(),
            _ => return Err(Error::not_found(format!("nothing is served at '{}'", ctx.path))),
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("{} only answers GET", ctx.path),
            )
            .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        }
        api::json(&body)
    }

    async fn on_response(&self, resp: &mut Response<Body>, ctx: &mut RequestContext) -> Result<(), Error> {
        let Some(seen) = ctx.extensions.get::<Seen>().cloned() else { return Ok(()) };
        if seen.preflight {
            return Ok(());
        }
        if let Some(v) = seen.verdict.filter(|v| v.allowed) {
            put(resp.headers_mut(), rate_headers(&v));
        }
        if let Some(policy) = &self.config.cors {
            // The app's own CORS headers are replaced, so the answer follows one policy.
            for name in [
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
            ] {
                resp.headers_mut().remove(name);
            }
            put(resp.headers_mut(), policy.response_headers(seen.origin.as_deref()));
        }
        Ok(())
    }
}
