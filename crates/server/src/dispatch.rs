//! Route a request to an app: `/:app[@range]/*` → resolve the version → hand the app-relative
//! request to the worker pool, which answers it for every kind.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, Uri};
use marina_apps::{App, WorkerKind};
use marina_core::{Body, Error};
use marina_plugins::{RequestContext, app_request};
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
    if app.kind == WorkerKind::Static {
        // Served in-process by marina itself, which reads only `x-base`: the forwarding
        // headers, the request id and the identity are for workers.
        if let Ok(v) = HeaderValue::from_str(&base) {
            req.headers_mut().insert(marina_core::headers::X_BASE, v);
        }
    } else {
        app_request::set_app_headers(req.headers_mut(), &base, ctx);
    }
    let resp = rt.pool.dispatch(app.clone(), req).await?;
    if app_request::is_worker_error(&resp) {
        return Err(app_request::worker_error(app.key(), resp.into_body()).await);
    }
    Ok(resp)
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
}
