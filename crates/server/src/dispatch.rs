//! Route a request to an app: `/:app[@range]/*` → resolve the version → hand the app-relative
//! request to the worker pool, which answers it for every kind.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response, Uri};
use marina_apps::App;
use marina_core::{Body, Error};
use marina_plugins::RequestContext;
use percent_encoding::percent_decode_str;

use crate::Runtime;

/// The first path segment and the rest, as they appear on the wire.
pub struct AppPath<'a> {
    /// The first segment, percent-decoded (`todo@^1.0`).
    pub segment: String,
    /// The raw path after the segment, always starting with `/`.
    pub rest: &'a str,
}

/// Split `/todo%40%5E1/api/x` into `todo@^1` and `/api/x`. `None` when the path has no first
/// segment, or the segment does not decode to UTF-8.
pub fn split_app_path(path: &str) -> Option<AppPath<'_>> {
    let trimmed = path.strip_prefix('/')?;
    let (raw_segment, rest) = match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, "/"),
    };
    if raw_segment.is_empty() {
        return None;
    }
    let segment = percent_decode_str(raw_segment).decode_utf8().ok()?.into_owned();
    if segment.contains('/') || segment.contains('\0') {
        return None;
    }
    Some(AppPath { segment, rest })
}

/// `uri` with its path replaced by `path` (the query kept).
pub fn with_path(uri: &Uri, path: &str) -> Result<Uri, Error> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    Uri::try_from(path_and_query)
        .map_err(|e| Error::bad_request("BAD_PATH", format!("the request path cannot be forwarded: {e}")))
}

/// Send the request to the app. `segment` is the decoded first path segment, used as `x-base`.
pub async fn to_app(
    rt: &Runtime,
    app: Arc<App>,
    segment: &str,
    rest: &str,
    mut req: Request<Body>,
    ctx: &RequestContext,
) -> Result<Response<Body>, Error> {
    let base = format!("/{segment}");
    *req.uri_mut() = with_path(req.uri(), rest)?;
    let headers = req.headers_mut();
    set(headers, "x-base", &base);
    set(headers, "x-request-id", &ctx.request_id);
    // The same forwarding-header policy as proxy rules' remote upstreams; the client address is
    // the socket's (or a trusted proxy's, as the gateway decided), never the client's claim.
    marina_proxy::set_forwarding_headers(headers, marina_proxy::ClientInfo { ip: ctx.client_ip, proto: "http" });
    if let Some(identity) = &ctx.identity
        && let Ok(json) = serde_json::to_string(identity)
    {
        set(headers, crate::IDENTITY_HEADER, &ascii_json(&json));
    }
    let resp = rt.pool.dispatch(app.clone(), req).await?;
    if resp.status() == http::StatusCode::INTERNAL_SERVER_ERROR && resp.headers().contains_key(WORKER_ERROR_HEADER) {
        return Err(worker_error(app.key(), resp.into_body()).await);
    }
    Ok(resp)
}

/// The header with which the JS host shim marks the 500 it answers for an error the app threw.
const WORKER_ERROR_HEADER: &str = "x-marina-error";

/// The app threw: its message becomes a marina error, so the one edge decides what the client
/// sees (the thrown text in development, only the code and request id in production) and the
/// text is logged under the request id. The body read is bounded.
async fn worker_error(app: String, mut body: Body) -> Error {
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
        .with_kind(marina_core::Source::Upstream)
        .with_data(serde_json::json!({ "app": app }))
}

/// Send the request along one of the app's `proxy` rules. `rest` is the path below the app,
/// which the rule matched. The app's `maxBodySize` holds for proxied bodies too.
pub async fn to_upstream(
    rt: &Runtime,
    app: &App,
    rule: &marina_proxy::Rule,
    rest: &str,
    req: Request<Body>,
    ctx: &RequestContext,
) -> Result<Response<Body>, Error> {
    let limit = app.config.max_body_size;
    let req = req.map(|b| marina_core::body::boxed(marina_proxy::LimitedBody::new(b, limit).0));
    rt.remote.forward(rule, rest, req, marina_proxy::ClientInfo { ip: ctx.client_ip, proto: "http" }).await
}

/// JSON with every non-ASCII character escaped (`\u00e9`), so it fits in a header value.
/// Outside strings JSON is ASCII already, so escaping everywhere is safe.
fn ascii_json(json: &str) -> String {
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

fn set(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_decodes_the_first_segment() {
        let p = split_app_path("/todo%40%5E1.0/api/x").unwrap();
        assert_eq!(p.segment, "todo@^1.0");
        assert_eq!(p.rest, "/api/x");
        let p = split_app_path("/todo").unwrap();
        assert_eq!((p.segment.as_str(), p.rest), ("todo", "/"));
        let p = split_app_path("/todo/").unwrap();
        assert_eq!((p.segment.as_str(), p.rest), ("todo", "/"));
        assert!(split_app_path("/").is_none());
        assert!(split_app_path("//x").is_none());
        assert!(split_app_path("/a%2Fb/x").is_none());
        assert!(split_app_path("/%ff/x").is_none());
    }

    #[test]
    fn identity_json_fits_a_header() {
        let json = serde_json::to_string(&serde_json::json!({"name": "José 😀"})).unwrap();
        let ascii = ascii_json(&json);
        assert!(HeaderValue::from_str(&ascii).is_ok());
        let back: serde_json::Value = serde_json::from_str(&ascii).unwrap();
        assert_eq!(back["name"], "José 😀");
    }
}
