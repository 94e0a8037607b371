//! The one edge where errors become responses. Every layer — static files, HTML injection,
//! workers, plugins, the internal API — returns `marina_core::Error`; only [`render`] decides
//! how it looks on the wire, logs it under the request id, and applies the production policy
//! (NODE_ENV=production or staging: upstream and internal errors show only their code and the
//! request id, never paths, stderr, stacks or thrown text).

use http::{HeaderValue, Method, Response, StatusCode, header};
use marina_core::{Body, Error, Source, body};
use marina_plugins::RequestContext;

/// The error's JSON response for this request. HEAD gets the same headers without the body.
pub fn render(err: &Error, ctx: &RequestContext, hide_detail: bool) -> Response<Body> {
    log(err, ctx);
    let json = if hide_detail { err.to_public_json(&ctx.request_id) } else { err.to_json() };
    let bytes = serde_json::to_vec(&json).unwrap_or_default();
    let len = bytes.len();
    let mut resp = Response::new(if ctx.method == Method::HEAD { body::empty() } else { body::full(bytes) });
    *resp.status_mut() = err.status();
    if let Some(extra) = err.headers() {
        for (name, value) in extra {
            resp.headers_mut().append(name, value.clone());
        }
    }
    // A 503 that knows when to come back says so in the header clients and proxies read.
    if err.status() == StatusCode::SERVICE_UNAVAILABLE
        && !resp.headers().contains_key(header::RETRY_AFTER)
        && let Some(ms) = err.data().and_then(|d| d.get("retryAfterMs")).and_then(|v| v.as_u64())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
    }
    // Every 401 says how to authenticate (RFC 9110); credential errors say what was wrong.
    if !resp.headers().contains_key(header::WWW_AUTHENTICATE)
        && let Some(challenge) = marina_auth::challenge::challenge(err.status(), err.code(), err.message())
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// Server-side failures are logged with their full detail (cause chain, data), which is what
/// the request id in a production error body points at; client errors only at debug level.
fn log(err: &Error, ctx: &RequestContext) {
    let app = ctx.app.as_ref().map(|a| a.key()).unwrap_or_default();
    match err.kind() {
        Source::Client => tracing::debug!(
            request_id = %ctx.request_id,
            status = err.status().as_u16(),
            code = err.code(),
            error = %err,
            "request refused"
        ),
        kind => tracing::warn!(
            request_id = %ctx.request_id,
            status = err.status().as_u16(),
            code = err.code(),
            source = kind.as_str(),
            app = %app,
            error = %err,
            data = %err.data().map(|d| d.to_string()).unwrap_or_default(),
            "request failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext {
        RequestContext::new("r1", ([127, 0, 0, 1], 9).into(), Method::GET, "/a/")
    }

    #[test]
    fn a_503_with_a_retry_time_sends_retry_after() {
        let err =
            Error::unavailable("WORKER_CRASHLOOP", "backing off").with_data(serde_json::json!({"retryAfterMs": 1500}));
        let resp = render(&err, &ctx(), false);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let resp = render(&Error::shutting_down("stopping"), &ctx(), true);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        // Without a retry time, none is made up.
        let resp = render(&Error::unavailable("DATABASE_BUSY", "busy"), &ctx(), false);
        assert!(!resp.headers().contains_key(header::RETRY_AFTER));
    }
}
