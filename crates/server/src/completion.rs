//! The completion phase: the last thing every request passes through, whatever answered it
//! (an app, a plugin, the API, an error) — or when nothing did because the client went away
//! first (an HTTP/2 reset, a closed connection): the request is then recorded with status 499,
//! nginx's "client closed request", so no request escapes the log or the counters. It alone
//! writes the access log line, stamps `X-Request-Id` and counts the request; per-worker counters
//! are kept by the worker pool, which answers for every app kind.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderValue, Response};
use marina_core::Body;
use marina_plugins::RequestContext;
use serde::Serialize;

/// The status logged for a request the client abandoned before its response began.
pub const CLIENT_CLOSED: u16 = 499;

/// Requests seen since start, by how they ended (`GET /api/workers` shows them as `requests`).
#[derive(Debug, Default)]
pub struct Stats {
    total: AtomicU64,
    /// 1xx, 2xx, 3xx, 4xx (499 included), 5xx.
    by_class: [AtomicU64; 5],
    client_closed: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// Every request that got an access log line.
    pub total: u64,
    /// Those the client abandoned before the response began (logged as 499).
    pub client_closed: u64,
    /// Answered 2xx.
    #[serde(rename = "2xx")]
    pub ok: u64,
    /// Answered 3xx.
    #[serde(rename = "3xx")]
    pub redirect: u64,
    /// Answered 4xx, and the 499s.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// Answered 5xx.
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl Stats {
    fn count(&self, status: u16) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(class) = (status / 100).checked_sub(1).and_then(|i| self.by_class.get(i as usize)) {
            class.fetch_add(1, Ordering::Relaxed);
        }
        if status == CLIENT_CLOSED {
            self.client_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn view(&self) -> StatsView {
        let n = |i: usize| self.by_class[i].load(Ordering::Relaxed);
        StatsView {
            total: self.total.load(Ordering::Relaxed),
            client_closed: self.client_closed.load(Ordering::Relaxed),
            ok: n(1),
            redirect: n(2),
            client_error: n(3),
            server_error: n(4),
        }
    }
}

/// A request in progress: owns its context, and records the request when dropped without a
/// response (the client went away and hyper dropped the handler).
pub struct Record<'s> {
    /// The request's context; the pipeline borrows it.
    pub ctx: RequestContext,
    stats: &'s Stats,
    done: bool,
}

impl<'s> Record<'s> {
    /// Starts recording the request `ctx` describes.
    pub fn new(ctx: RequestContext, stats: &'s Stats) -> Self {
        Self { ctx, stats, done: false }
    }

    /// Finish a request: `X-Request-Id`, the access log line, the counters.
    pub fn finish(mut self, resp: &mut Response<Body>) {
        if let Ok(v) = HeaderValue::from_str(&self.ctx.request_id) {
            resp.headers_mut().insert(marina_core::headers::X_REQUEST_ID, v);
        }
        self.done = true;
        log(&self.ctx, resp.status().as_u16());
        self.stats.count(resp.status().as_u16());
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if !self.done {
            log(&self.ctx, CLIENT_CLOSED);
            self.stats.count(CLIENT_CLOSED);
        }
    }
}

/// One access line's fields, as the completion phase hands them to the access log.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// The method as received.
    pub method: &'a str,
    /// The path as received.
    pub path: &'a str,
    /// The status answered, or 499.
    pub status: u16,
    /// From acceptance to now.
    pub micros: u64,
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// The app's name and version, when routing found one.
    pub app: Option<(&'a str, &'a str)>,
    /// The plugin that answered, or `-`.
    pub plugin: &'a str,
}

/// Where access lines go instead of a `tracing` event, once `marina serve` said (`None` inside:
/// the log filter leaves the access log off).
static ACCESS_SINK: OnceLock<Option<fn(&AccessLine<'_>)>> = OnceLock::new();

/// Send access lines to `sink` rather than through `tracing`, or with `None` write none (once per
/// process; later calls are ignored). `marina serve` writes them itself, without `tracing`'s
/// per-event machinery, in the same bytes, and asks `tracing`'s filter once at start whether
/// `marina::access` is logged at all (`RUNTIME_LOG_LEVEL`, `RUST_LOG=marina::access=off`): its
/// filter is fixed for the process and marina opens no spans, so the answer cannot change.
pub fn set_access_sink(sink: Option<fn(&AccessLine<'_>)>) {
    let _ = ACCESS_SINK.set(sink);
}

fn log(ctx: &RequestContext, status: u16) {
    match ACCESS_SINK.get() {
        Some(Some(sink)) => sink(&line(ctx, status)),
        Some(None) => {}
        None => {
            if tracing::enabled!(target: "marina::access", tracing::Level::INFO) {
                log_via_tracing(&line(ctx, status));
            }
        }
    }
}

/// The line's fields; the clock is read here, only for a line that is logged.
fn line(ctx: &RequestContext, status: u16) -> AccessLine<'_> {
    AccessLine {
        method: ctx.method.as_str(),
        path: &ctx.path,
        status,
        micros: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        request_id: &ctx.request_id,
        app: ctx.app.as_deref().map(|app| (app.name.as_str(), app.version.as_str())),
        plugin: ctx.plugin.as_deref().unwrap_or("-"),
    }
}

/// The access line as a `tracing` event (target `marina::access`, message `request`): what
/// library users and a terminal see; `marina serve` writes the same bytes by its own sink.
pub fn log_via_tracing(line: &AccessLine<'_>) {
    // The app key is formatted in place: nothing is allocated for the line itself.
    tracing::info!(
        target: "marina::access",
        method = %line.method,
        path = %line.path,
        status = line.status,
        duration_ms = line.micros as f64 / 1000.0,
        request_id = %line.request_id,
        app = %AppKey(line.app),
        plugin = line.plugin,
        "request"
    );
}

/// `name@version`, or `-`.
struct AppKey<'a>(Option<(&'a str, &'a str)>);

impl std::fmt::Display for AppKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((name, version)) => write!(f, "{name}@{version}"),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_counted_by_class_and_499_apart() {
        let s = Stats::default();
        for status in [200, 204, 301, 404, 499, 503, 99, 700] {
            s.count(status);
        }
        let v = s.view();
        assert_eq!((v.total, v.ok, v.redirect, v.client_error, v.server_error, v.client_closed), (8, 2, 1, 2, 1, 1));
    }
}
