//! The completion phase: the last thing every request passes through, whatever answered it
//! (an app, a plugin, the API, an error). It alone writes the access log line and stamps
//! `X-Request-Id`, so no path can skip them. (Per-app counters are kept by the worker pool,
//! which answers for every app kind.)

use http::{HeaderValue, Response};
use marina_core::Body;
use marina_plugins::RequestContext;

/// Finish a request: `X-Request-Id`, the access log line.
pub fn finish(ctx: &RequestContext, resp: &mut Response<Body>) {
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = ctx.started.elapsed();
    let status = resp.status().as_u16();
    let app = ctx.app.as_ref().map(|a| a.key());
    tracing::info!(
        target: "marina::access",
        method = %ctx.method,
        path = %ctx.path,
        status,
        duration_ms = elapsed.as_micros() as f64 / 1000.0,
        request_id = %ctx.request_id,
        app = app.as_deref().unwrap_or("-"),
        plugin = ctx.plugin.as_deref().unwrap_or("-"),
        "request"
    );
}
