//! The internal API's rules, as Buntime applies them (buntime.md §4.1): which paths need no key,
//! which permission each route needs, and the Origin check that stops cross-site requests when
//! the API is open.

use http::{HeaderMap, Method, header};
use marina_core::Error;

/// What a request to the internal API needs from a generated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// No key at all (health probes, plugin discovery, API docs).
    Public,
    /// This permission (admin keys and the root key hold all).
    Permission(&'static str),
    /// Any valid key may read routes Buntime does not map.
    AnyKey,
    /// State-changing routes Buntime does not map: admin keys and the root key only, so a new
    /// route is never writable by every key by accident.
    Admin,
}

/// The requirement of `method` on `path`, relative to the API base (`/keys/3`).
pub fn requirement(method: &Method, path: &str) -> Requirement {
    let path = path.trim_end_matches('/');
    // `/admin/session` checks the key it is given itself (X-API-Key only, as in Buntime).
    if matches!(path, "/health" | "/plugins/loaded" | "/openapi.json" | "/docs" | "/admin/session")
        || path.starts_with("/health/")
    {
        return Requirement::Public;
    }
    let under = |base: &str| path == base || path.starts_with(&format!("{base}/"));
    let read = matches!(*method, Method::GET | Method::HEAD);
    let p = if under("/apps") {
        match *method {
            _ if read => "apps:read",
            Method::DELETE => "apps:remove",
            _ => "apps:install",
        }
    } else if under("/plugins") {
        match *method {
            _ if read => "plugins:read",
            Method::DELETE => "plugins:remove",
            _ => "plugins:install",
        }
    } else if under("/keys") {
        match *method {
            _ if read => "keys:read",
            Method::DELETE => "keys:revoke",
            _ => "keys:create",
        }
    } else if under("/workers") {
        if read { "workers:read" } else { "workers:restart" }
    } else if read {
        return Requirement::AnyKey;
    } else {
        return Requirement::Admin;
    };
    Requirement::Permission(p)
}

/// Whether `method` changes state (and so needs the Origin check when no key is given).
pub fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// Buntime's CSRF rule for state-changing calls made without a key: `X-Buntime-Internal: true`
/// (a custom header, which a cross-site page cannot send without a CORS preflight the internal
/// API never approves), or an `Origin` that parses, has no userinfo, is http(s), and names the
/// same host (and port) as the request.
///
/// # Errors
/// 403 `ORIGIN_REQUIRED` or `ORIGIN_MISMATCH`.
pub fn check_origin(headers: &HeaderMap, authority: Option<&str>) -> Result<(), Error> {
    let flag = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "true");
    if flag("x-buntime-internal") || flag("x-marina-internal") {
        return Ok(());
    }
    let forbidden = |code: &'static str, msg: String| Error::new(http::StatusCode::FORBIDDEN, code, msg);
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Err(forbidden(
            "ORIGIN_REQUIRED",
            "a state-changing request without an API key needs an Origin header (or X-Buntime-Internal: true)".into(),
        ));
    };
    let origin = origin.to_str().unwrap_or("");
    let mismatch = |why: &str| forbidden("ORIGIN_MISMATCH", format!("Origin {origin:?} is not accepted: {why}"));
    // An origin is scheme://host[:port] and nothing else (RFC 6454).
    let uri = origin.parse::<http::Uri>().map_err(|_| mismatch("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(mismatch("not http or https"));
    }
    let Some(origin_authority) = uri.authority().map(|a| a.as_str()) else { return Err(mismatch("no host")) };
    if origin_authority.contains('@') {
        return Err(mismatch("it carries credentials"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(mismatch("an origin has no path"));
    }
    let Some(authority) = authority else { return Err(mismatch("the request has no Host")) };
    if !origin_authority.eq_ignore_ascii_case(authority) {
        return Err(mismatch("it is not the host this request was sent to"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn buntimes_permission_map() {
        use Requirement::*;
        assert_eq!(requirement(&Method::GET, "/health"), Public);
        assert_eq!(requirement(&Method::GET, "/health/ready"), Public);
        assert_eq!(requirement(&Method::GET, "/plugins/loaded"), Public);
        assert_eq!(requirement(&Method::GET, "/apps"), Permission("apps:read"));
        assert_eq!(requirement(&Method::POST, "/apps/upload"), Permission("apps:install"));
        assert_eq!(requirement(&Method::DELETE, "/apps/x/y"), Permission("apps:remove"));
        assert_eq!(requirement(&Method::POST, "/plugins/reload"), Permission("plugins:install"));
        assert_eq!(requirement(&Method::DELETE, "/plugins/x"), Permission("plugins:remove"));
        assert_eq!(requirement(&Method::GET, "/keys/meta"), Permission("keys:read"));
        assert_eq!(requirement(&Method::POST, "/keys"), Permission("keys:create"));
        assert_eq!(requirement(&Method::DELETE, "/keys/3"), Permission("keys:revoke"));
        assert_eq!(requirement(&Method::GET, "/workers"), Permission("workers:read"));
        assert_eq!(requirement(&Method::POST, "/workers/x/restart"), Permission("workers:restart"));
        assert_eq!(requirement(&Method::GET, "/other"), AnyKey);
        assert_eq!(requirement(&Method::POST, "/other"), Admin);
        assert_eq!(requirement(&Method::GET, "/appsx"), AnyKey, "a prefix is not a path segment");
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn origin_rules() {
        let host = Some("127.0.0.1:8000");
        assert!(check_origin(&h(&[("origin", "http://127.0.0.1:8000")]), host).is_ok());
        assert!(check_origin(&h(&[("x-buntime-internal", "true")]), host).is_ok());
        let code = |hs: &[(&'static str, &'static str)]| check_origin(&h(hs), host).unwrap_err().code().to_string();
        assert_eq!(code(&[]), "ORIGIN_REQUIRED");
        assert_eq!(code(&[("origin", "null")]), "ORIGIN_MISMATCH");
        assert_eq!(code(&[("origin", "http://evil.example")]), "ORIGIN_MISMATCH");
        assert_eq!(code(&[("origin", "http://127.0.0.1:9999")]), "ORIGIN_MISMATCH");
        assert_eq!(code(&[("origin", "http://u:p@127.0.0.1:8000")]), "ORIGIN_MISMATCH");
        assert_eq!(code(&[("origin", "file://127.0.0.1:8000")]), "ORIGIN_MISMATCH");
        assert_eq!(code(&[("x-buntime-internal", "yes")]), "ORIGIN_REQUIRED");
        assert_eq!(
            check_origin(&h(&[("origin", "http://127.0.0.1:8000")]), None).unwrap_err().code(),
            "ORIGIN_MISMATCH"
        );
    }
}
