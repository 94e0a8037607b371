//! What marina adds to a request it hands to an app's workers, in one place: the server's
//! dispatch to apps and plugin apps, and an external plugin's hook request, send the same
//! headers, so a worker reads them the same way whoever asked.

use http::{HeaderMap, HeaderName, HeaderValue};
use marina_core::{Body, Error, Source};

use crate::context::RequestContext;

/// The header workers read the caller's identity from. marina drops it from every incoming
/// request; only marina sets it (from [`RequestContext::identity`]).
pub const IDENTITY_HEADER: HeaderName = marina_auth::IDENTITY_HEADER;

/// The header with which the JS host shim marks the 500 it answers for an error the app threw.
pub const WORKER_ERROR_HEADER: HeaderName = HeaderName::from_static("x-marina-error");

/// Sets `x-base` (the app's prefix), `x-request-id`, the forwarding headers (the client address
/// is the socket's, or a trusted proxy's as the gateway decided, never the client's claim) and
/// `x-identity` (JSON of the established identity, when there is one).
pub fn set_app_headers(headers: &mut HeaderMap, base: &str, ctx: &RequestContext) {
    set(headers, marina_core::headers::X_BASE, base);
    set(headers, marina_core::headers::X_REQUEST_ID, &ctx.request_id);
    marina_proxy::set_forwarding_headers(headers, marina_proxy::ClientInfo { ip: ctx.client_ip, proto: "http" });
    if let Some(identity) = &ctx.identity
        && let Ok(json) = serde_json::to_string(identity.as_ref())
    {
        set(headers, IDENTITY_HEADER, &ascii_json(&json));
    }
}

/// Whether `resp` is the host shim's answer for an error the app threw (a 500 it marks).
pub fn is_worker_error(resp: &http::Response<Body>) -> bool {
    resp.status() == http::StatusCode::INTERNAL_SERVER_ERROR && resp.headers().contains_key(WORKER_ERROR_HEADER)
}

/// The app threw: its message becomes a marina error, so the one edge decides what the client
/// sees (the thrown text in development, only the code and request id in production) and the
/// text is logged under the request id. The body read is bounded.
pub async fn worker_error(app: &str, mut body: Body) -> Error {
    use http_body_util::BodyExt as _;
    let mut text = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
            if text.len() > 64 * 1024 {
                break;
            }
        }
    }
    let message = serde_json::from_slice::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| "the app threw an error".to_string());
    Error::new(http::StatusCode::INTERNAL_SERVER_ERROR, "WORKER_ERROR", message)
        .with_kind(Source::Upstream)
        .with_data(serde_json::json!({ "app": app }))
}

/// JSON with every non-ASCII character escaped (`\u00e9`), so it fits in a header value.
/// Outside strings JSON is ASCII already, so escaping everywhere is safe.
pub fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_json_fits_a_header() {
        let json = serde_json::to_string(&serde_json::json!({"name": "José 😀"})).unwrap();
        let ascii = ascii_json(&json);
        assert!(HeaderValue::from_str(&ascii).is_ok());
        let back: serde_json::Value = serde_json::from_str(&ascii).unwrap();
        assert_eq!(back["name"], "José 😀");
    }
}
