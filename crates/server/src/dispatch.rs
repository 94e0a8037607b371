//! Route a request to an app: `/:app[@range]/*` → resolve the version → hand the app-relative
//! request to the app's worker kind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response, Uri};
use marina_core::{Body, Error};
use marina_pool::html::Injection;
use marina_pool::static_files::StaticSite;
use marina_pool::{App, WorkerKind};
use parking_lot::Mutex;
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

/// Static sites built once per app version and rebuilt when the registry hands out a new `App`
/// (a changed manifest or new files on disk).
#[derive(Default)]
pub struct StaticSites {
    sites: Mutex<HashMap<String, SiteEntry>>,
}

/// The app a site was built for, and the site.
type SiteEntry = (Arc<App>, Arc<StaticSite>);

impl StaticSites {
    fn get(&self, app: &Arc<App>) -> Arc<StaticSite> {
        let key = app.key();
        let mut sites = self.sites.lock();
        // The registry hands out a new `Arc<App>` only when the app really changed.
        if let Some((known, site)) = sites.get(&key)
            && Arc::ptr_eq(known, app)
        {
            return site.clone();
        }
        // The injection is a template: its `<base>` href is replaced per request.
        let template = Injection::from_config(&app.config, "");
        let site = Arc::new(StaticSite::new(app.dir.clone(), app.entrypoint.clone(), template));
        sites.insert(key, (app.clone(), site.clone()));
        site
    }
}

/// Send the request to the app. `segment` is the decoded first path segment, used as `x-base`.
pub async fn to_app(
    rt: &Runtime,
    app: Arc<App>,
    segment: &str,
    rest: &str,
    mut req: Request<Body>,
    peer: SocketAddr,
    request_id: &str,
) -> Result<Response<Body>, Error> {
    let base = format!("/{segment}");
    match app.kind {
        WorkerKind::Static => {
            let site = rt.static_sites.get(&app);
            Ok(site.serve_with_base(req.method(), rest, req.headers(), &base).await)
        }
        WorkerKind::Js | WorkerKind::Process => {
            let path_and_query = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            *req.uri_mut() = Uri::try_from(path_and_query)
                .map_err(|e| Error::bad_request("BAD_PATH", format!("the request path cannot be forwarded: {e}")))?;
            let host = req.headers().get(http::header::HOST).cloned();
            let headers = req.headers_mut();
            set(headers, "x-base", &base);
            set(headers, "x-request-id", request_id);
            // marina is the edge: the client address comes from the socket, never from what the
            // client claims, so apps can trust x-forwarded-for for rate limits and audit logs.
            set(headers, "x-forwarded-for", &peer.ip().to_string());
            set(headers, "x-forwarded-proto", "http");
            if let Some(host) = host {
                headers.insert(HeaderName::from_static("x-forwarded-host"), host);
            }
            let resp = rt.pool.dispatch(app.clone(), req).await?;
            Ok(match Injection::from_config(&app.config, &base) {
                Some(inj) => marina_pool::html::inject_response(resp, &inj).await,
                None => resp,
            })
        }
    }
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
}
