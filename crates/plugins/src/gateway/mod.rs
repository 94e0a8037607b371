//! The gateway core plugin (`@buntime/plugin-gateway`, base `/gateway`, buntime.md §6.2):
//! CORS for browsers, rate limits in front of every route, the app shell, and its own API at
//! `/gateway/api` ([`api`]).
//!
//! Its admission hook (`early_request`) runs after authentication's and before any plugin's
//! `on_request`, whatever the load order: a CORS preflight is answered first (204, never
//! reaching a worker, not counted, as in Buntime; never for the internal API, which approves no
//! cross-site call), then every rate-limit rule that applies counts the request — requests
//! authentication refused included, so a flood of bad keys meets 429 like any flood. A valid
//! API key, root key or token skips nothing. A 429 carries `Retry-After` and `RateLimit-*`;
//! `on_response` adds the CORS headers to every answer, errors included (a page can read a
//! 429), `RateLimit-*` to allowed ones too when configured (`GATEWAY_RATE_LIMIT_HEADERS=always`),
//! and logs the request.
//!
//! Background work: `init` reads the shell excludes and the metrics history stored in marina's
//! database and starts the history sampler ([`history`]), which `shutdown` (or marina closing
//! its listener) stops, together with every `/gateway/api/sse` stream; `shutdown` stores the
//! history's last snapshots.

pub mod api;
pub mod cors;
pub mod excludes;
pub mod history;
pub mod history_db;
pub mod keyed;
pub mod limit;
pub mod log;
mod manage;
pub mod rules;
pub mod shell;
pub mod sse;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use marina_core::settings::RawSettings;
use marina_core::{Body, Error, body};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::async_trait;
use crate::context::RequestContext;
use crate::plugin::{Admission, Outcome, Phases, Plugin, PluginEnv, PluginSpec};

/// The manifest name marina's gateway answers to (also `plugin-gateway` and `gateway`).
pub const NAME: &str = "@buntime/plugin-gateway";

/// Counters for `/gateway/api/stats`. The allowed requests are the rest
/// ([`Stats::allowed`]): one shared counter fewer to move on every request.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    preflights: AtomicU64,
}

impl Stats {
    /// Requests neither refused nor answered as preflights (read one counter at a time, so a
    /// request counted between the reads is not yet in the others: never below zero).
    fn allowed(&self) -> u64 {
        let requests = self.requests.load(Ordering::SeqCst);
        requests
            .saturating_sub(self.rate_limited.load(Ordering::Relaxed))
            .saturating_sub(self.preflights.load(Ordering::Relaxed))
    }
}

/// Carried from `early_request` to `on_response` in the request context for a request that is
/// not ordinary: a preflight, one a rule refused, or one whose answer carries `RateLimit-*`.
/// An ordinary request carries nothing (a boxed slot per request cost ~200 instructions);
/// its `Origin` is in [`RequestContext::origin`].
#[derive(Clone, Default)]
struct Seen {
    preflight: bool,
    /// Whether a rule refused it (the log says so).
    rate_limited: bool,
    /// The tightest rule's allowing verdict and its `RateLimit-Limit` value, kept only when
    /// allowed answers carry `RateLimit-*` ([`rules::HeadersOn::Always`]).
    headers: Option<(limit::Verdict, HeaderValue)>,
}

/// What the gateway holds (shared with its API router).
pub struct State {
    cors: Option<cors::Policy>,
    limits: rules::RateLimits,
    shell: Option<shell::Shell>,
    auth: Arc<marina_auth::Auth>,
    api_base: String,
    trusted_proxies: Vec<String>,
    stats: Stats,
    log: log::RequestLog,
    history: history::History,
    store: marina_store::Store,
    state_dir: std::path::PathBuf,
    /// Cancelled by `shutdown` or when marina stops accepting: ends the sampler and SSE streams.
    closing: CancellationToken,
}

impl Drop for State {
    fn drop(&mut self) {
        // A gateway dropped without `shutdown` (a failed load) still stops its sampler.
        self.closing.cancel();
    }
}

/// The gateway plugin.
pub struct Gateway {
    state: Arc<State>,
    router: axum::Router,
}

impl Gateway {
    /// A gateway for `spec` (its options: `cors`, `rateLimit`, `shellDir`, `shellExcludes`) and the
    /// `GATEWAY_*` variables, which win over the options.
    ///
    /// # Errors
    /// A bad option or variable, naming it: the loader then stops start-up (or the reload)
    /// instead of serving without the protection that was configured.
    pub fn configure(spec: &PluginSpec, env: &PluginEnv) -> Result<Self, Error> {
        let s: &RawSettings = &env.settings;
        let cors = cors::Policy::configure(spec.options.get("cors"), s)?;
        let limits = rules::RateLimits::from_options(spec.options.get("rateLimit"), s)?;
        let shell = shell::Shell::configure(&spec.options, s, env.registry.clone(), &env.api_base)?;
        let trusted_proxies = s
            .get("RUNTIME_TRUSTED_PROXIES")
            .map(|v| v.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
            .unwrap_or_default();
        let state = Arc::new(State {
            cors,
            limits,
            shell,
            auth: env.auth.clone(),
            api_base: env.api_base.clone(),
            trusted_proxies,
            stats: Stats::default(),
            log: log::RequestLog::default(),
            history: history::History::default(),
            store: env.store.clone(),
            state_dir: env.state_dir.clone(),
            closing: env.closing.child_token(),
        });
        Ok(Self { router: api::router(state.clone()), state })
    }

    /// The catalog entry.
    pub fn factory() -> crate::Factory {
        Arc::new(|spec: &PluginSpec, env: &PluginEnv| Ok(Arc::new(Gateway::configure(spec, env)?) as Arc<dyn Plugin>))
    }
}

impl State {
    fn internal(&self, path: &str) -> bool {
        path == self.api_base || path.strip_prefix(self.api_base.as_str()).is_some_and(|r| r.starts_with('/'))
    }

    fn stats_json(&self) -> Value {
        let s = &self.stats;
        json!({
            "totalRequests": s.requests.load(Ordering::Relaxed),
            "allowedRequests": s.allowed(),
            "blockedRequests": s.rate_limited.load(Ordering::Relaxed),
            "preflights": s.preflights.load(Ordering::Relaxed),
            "activeBuckets": self.limits.rules.iter().map(|r| r.limiter.tracked()).sum::<usize>(),
        })
    }

    /// `/rate-limit/metrics` (Buntime's `getMetrics`).
    fn metrics_json(&self) -> Value {
        let mut stats = self.stats_json();
        if let Some(o) = stats.as_object_mut() {
            o.remove("preflights");
        }
        stats
    }

    fn snapshot(&self) -> history::Snapshot {
        let s = &self.stats;
        history::Snapshot {
            timestamp: limit::epoch_ms(),
            total_requests: s.requests.load(Ordering::SeqCst),
            blocked_requests: s.rate_limited.load(Ordering::Relaxed),
            allowed_requests: s.allowed(),
            active_buckets: self.limits.rules.iter().map(|r| r.limiter.tracked() as u64).sum(),
        }
    }

    fn config_json(&self) -> Value {
        let cors = self.cors.as_ref().map(cors::Policy::describe);
        json!({
            "rateLimit": self.limits.describe(),
            "cors": cors,
            "cache": null,
            "shell": self.shell.as_ref().map(shell::Shell::describe),
            "trustedProxies": self.trusted_proxies,
        })
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

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The `RateLimit-*` headers of a verdict (IETF draft-ietf-httpapi-ratelimit-headers); `limit`
/// is the rule's `RateLimit-Limit`, made once ([`limit::Limiter::limit_header`]).
fn rate_headers(v: &limit::Verdict, limit: &HeaderValue) -> [(HeaderName, HeaderValue); 3] {
    [
        (RATELIMIT_LIMIT, limit.clone()),
        (RATELIMIT_REMAINING, number(u64::from(v.remaining))),
        (RATELIMIT_RESET, number(v.reset_secs)),
    ]
}

/// Numbers below this are header values made once: seconds to a reset and what remains of a
/// usual limit are small, and formatting plus allocating a value per answer cost ~180
/// instructions each (callgrind).
const SMALL_NUMBERS: u64 = 1024;

/// `n` as a header value.
fn number(n: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..SMALL_NUMBERS).map(HeaderValue::from).collect());
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

impl Gateway {
    /// Admission: a CORS preflight answered, then every rate-limit rule that applies counted.
    fn admit(&self, req: &Request<Body>, ctx: &mut RequestContext) -> Result<Outcome, Error> {
        let st = &self.state;
        // SeqCst: pairs with the history sampler's check before it parks (see `History::touch`).
        st.stats.requests.fetch_add(1, Ordering::SeqCst);
        st.history.touch();
        ctx.origin = req.headers().get(header::ORIGIN).cloned();
        if let Some(policy) = st.cors.as_ref().filter(|p| p.preflight)
            && req.method() == Method::OPTIONS
            && ctx.refusal.is_none()
            && let Some(origin_text) = ctx.origin.as_ref().map(|o| o.to_str().unwrap_or(""))
            && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            && !st.internal(&ctx.path)
        {
            st.stats.preflights.fetch_add(1, Ordering::Relaxed);
            let asked = header_str(req, header::ACCESS_CONTROL_REQUEST_HEADERS);
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            put(resp.headers_mut(), policy.preflight_headers(Some(origin_text), asked));
            ctx.extensions.insert(Seen { preflight: true, ..Seen::default() });
            return Ok(Outcome::Respond(resp));
        }
        let checked = st.limits.check(ctx);
        let rate_limited = checked.as_ref().is_some_and(|(v, _)| !v.allowed);
        let headers = checked
            .as_ref()
            .filter(|(v, _)| v.allowed && st.limits.headers == rules::HeadersOn::Always)
            .map(|(v, rule)| (*v, rule.limiter.limit_header().clone()));
        if rate_limited || headers.is_some() {
            ctx.extensions.insert(Seen { preflight: false, rate_limited, headers });
        }
        match checked {
            Some((v, rule)) if !v.allowed => {
                st.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                let mut err = Error::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    format!("too many requests: retry in {} s", v.reset_secs),
                )
                .with_data(json!({ "limit": v.limit, "retryAfter": v.reset_secs, "rule": rule.name() }))
                .with_header(header::RETRY_AFTER, HeaderValue::from(v.reset_secs));
                for (name, value) in rate_headers(&v, rule.limiter.limit_header()) {
                    err = err.with_header(name, value);
                }
                // Buntime's names too, so its clients keep reading them: the reset there is an
                // epoch time in milliseconds, not seconds from now.
                let reset_at = limit::epoch_ms().saturating_add(v.reset_secs.saturating_mul(1000));
                err = err
                    .with_header(X_RATELIMIT_LIMIT, rule.limiter.limit_header().clone())
                    .with_header(X_RATELIMIT_REMAINING, number(0))
                    .with_header(X_RATELIMIT_RESET, HeaderValue::from(reset_at));
                Err(err)
            }
            _ => Ok(Outcome::Continue),
        }
    }
}

#[async_trait]
impl Plugin for Gateway {
    fn phases(&self) -> Phases {
        Phases { early_request: true, on_request: false, on_response: true }
    }

    async fn init(&self, _env: &PluginEnv) -> Result<(), Error> {
        let st = &self.state;
        // Neither failure fails `init`: the loader would skip the whole gateway (its CORS and
        // rate limits) over what is bookkeeping. Both are logged; the API says what is missing.
        if let Some(shell) = &st.shell {
            match excludes::Stored::load(st.store.clone()).await {
                Ok(stored) => shell.set_stored(stored),
                Err(e) => {
                    tracing::error!(error = %e, "the gateway's stored shell excludes could not be read; only the configured ones apply")
                }
            }
        }
        // The instance file (an fsync in a new state dir) is made on the blocking pool. On a
        // marina.db this start created there is no stored history to wait for, so both happen
        // off the start's path (snapshots taken before the history is attached are kept).
        let attach = {
            let st = Arc::clone(st);
            async move {
                let dir = st.state_dir.clone();
                match tokio::task::spawn_blocking(move || history_db::instance_id(&dir)).await {
                    Ok(Ok(id)) => {
                        if let Err(e) = st.history.attach(history_db::HistoryDb::new(st.store.clone(), id)).await {
                            tracing::error!(error = %e, "the gateway's stored metrics history could not be read; it is kept in memory only");
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "the gateway's metrics history has no instance id; it is kept in memory only")
                    }
                    Err(e) => tracing::error!("reading the gateway's instance id stopped: {e}"),
                }
            }
        };
        if st.store.is_new() {
            tokio::spawn(attach);
        } else {
            attach.await;
        }
        let sampler =
            history::History::run(Arc::downgrade(st), |s: &State| &s.history, State::snapshot, st.closing.clone());
        tokio::spawn(sampler);
        Ok(())
    }

    async fn shutdown(&self) {
        self.state.closing.cancel();
        self.state.history.flush().await;
    }

    fn early_request<'a>(&'a self, req: &'a mut Request<Body>, ctx: &'a mut RequestContext) -> Admission<'a> {
        Admission::Decided(self.admit(req, ctx))
    }

    fn has_routes(&self) -> bool {
        true
    }

    async fn handle(&self, req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        if !req.uri().path().starts_with("/api/") {
            return Err(Error::not_found(format!("nothing is served at '{}'", ctx.path)));
        }
        crate::api::guard(&self.state.auth, req.method(), req.headers(), &ctx.path, ctx.connection()).await?;
        crate::api::call(&self.router, req).await
    }

    fn shell(&self, path: &str, headers: &http::HeaderMap) -> Option<Arc<marina_apps::App>> {
        self.state.shell.as_ref()?.serve(path, headers)
    }

    fn on_response(&self, resp: &mut Response<Body>, ctx: &mut RequestContext) -> Result<(), Error> {
        // No `Seen`: an ordinary request (or one answered before admission, an unusable Host:
        // logged, and given CORS headers so that a page can read the error, all the same).
        let seen = ctx.extensions.remove::<Seen>().unwrap_or_default();
        let st = &self.state;
        st.log.push(log::Entry {
            started: ctx.started,
            finished: std::time::Instant::now(),
            ip: ctx.client_ip,
            method: ctx.method.clone(),
            path: ctx.path.clone(),
            status: resp.status().as_u16(),
            rate_limited: seen.rate_limited,
            request_id: ctx.request_id.clone(),
        });
        if seen.preflight {
            return Ok(());
        }
        if let Some((v, limit)) = &seen.headers {
            for (name, value) in rate_headers(v, limit) {
                resp.headers_mut().append(name, value);
            }
        }
        if let Some(policy) = &st.cors
            && !st.internal(&ctx.path)
        {
            // The app's own CORS headers are replaced, so the answer follows one policy. One
            // pass over the names first (standard names compare as numbers): most answers have
            // none, and each `remove` hashes.
            const OWN: [HeaderName; 3] = [
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
            ];
            if resp.headers().keys().any(|k| OWN.contains(k)) {
                for name in OWN {
                    resp.headers_mut().remove(name);
                }
            }
            policy.add_response_headers(ctx.origin.as_ref(), resp.headers_mut());
        }
        Ok(())
    }
}
