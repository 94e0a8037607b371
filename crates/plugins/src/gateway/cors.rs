//! The CORS decision, kept apart from HTTP plumbing so the whole matrix (origin list or `*`,
//! with or without credentials, preflight or not) is unit-tested as plain data.
//!
//! Buntime sent `Access-Control-Allow-Origin` only when its origin was `*`, so specific origins
//! never worked; this follows the Fetch standard instead: an allowed origin is echoed with
//! `Vary: Origin`, `*` is never combined with credentials, a disallowed origin gets no
//! `Access-Control-*` header at all.

/// Methods a preflight allows (Buntime's default list).
pub const METHODS: &str = "GET, HEAD, PUT, PATCH, POST, DELETE";
/// How long a browser may cache a preflight answer, in seconds (Buntime's default).
pub const MAX_AGE: &str = "86400";
/// Response headers a page may read besides the CORS-safelisted ones.
pub const EXPOSE: &str = "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-Request-Id";

/// Which origins may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Any origin.
    Any,
    /// Exactly these (lower-cased, no trailing slash).
    List(Vec<String>),
}

/// The gateway's CORS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Allowed origins.
    pub origins: Origins,
    /// Whether cookies and `Authorization` may be sent (`Access-Control-Allow-Credentials`).
    pub credentials: bool,
}

impl Policy {
    /// From `GATEWAY_CORS_ORIGIN` (`*` or a comma list, already validated) and
    /// `GATEWAY_CORS_CREDENTIALS`.
    pub fn parse(origin: &str, credentials: bool) -> Self {
        let origin = origin.trim();
        let origins = if origin == "*" {
            Origins::Any
        } else {
            Origins::List(origin.split(',').map(normalize).filter(|o| !o.is_empty()).collect())
        };
        Self { origins, credentials }
    }

    /// Whether the answer depends on the request's `Origin` (so caches must key on it).
    pub fn varies(&self) -> bool {
        self.credentials || matches!(self.origins, Origins::List(_))
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, or `None` when the
    /// origin is absent or not allowed (then no CORS header is sent).
    pub fn allow_origin(&self, origin: Option<&str>) -> Option<String> {
        let origin = origin?.trim();
        if origin.is_empty() {
            return None;
        }
        match &self.origins {
            // `*` with credentials is refused by browsers: echo the caller instead.
            Origins::Any if self.credentials => Some(origin.to_string()),
            Origins::Any => Some("*".to_string()),
            Origins::List(list) if list.iter().any(|o| *o == normalize(origin)) => Some(origin.to_string()),
            Origins::List(_) => None,
        }
    }

    /// Headers for an ordinary (non-preflight) response.
    pub fn response_headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(allow) = self.allow_origin(origin) {
            out.push(("access-control-allow-origin", allow));
            if self.credentials {
                out.push(("access-control-allow-credentials", "true".into()));
            }
            out.push(("access-control-expose-headers", EXPOSE.into()));
        }
        if self.varies() {
            out.push(("vary", "Origin".into()));
        }
        out
    }

    /// Headers for the 204 answer to a preflight; `request_headers` is the preflight's
    /// `Access-Control-Request-Headers`, reflected when the origin is allowed.
    pub fn preflight_headers(
        &self,
        origin: Option<&str>,
        request_headers: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(allow) = self.allow_origin(origin) {
            out.push(("access-control-allow-origin", allow));
            if self.credentials {
                out.push(("access-control-allow-credentials", "true".into()));
            }
            out.push(("access-control-allow-methods", METHODS.into()));
            if let Some(h) = request_headers.map(str::trim).filter(|h| !h.is_empty()) {
                out.push(("access-control-allow-headers", h.to_string()));
            }
            out.push(("access-control-max-age", MAX_AGE.into()));
        }
        if self.varies() {
            out.push(("vary", "Origin".into()));
        }
        out.push(("vary", "Access-Control-Request-Method, Access-Control-Request-Headers".into()));
        out
    }
}

/// Origins compare case-insensitively and without a trailing slash.
fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_listed_origin_is_echoed_with_vary() {
        let p = Policy::parse("https://a.example, http://localhost:3000", false);
        let h = p.response_headers(Some("https://a.example"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://a.example"));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
        // Case and a trailing slash in the configuration do not matter.
        let p = Policy::parse("HTTPS://A.example/", false);
        assert_eq!(p.allow_origin(Some("https://a.example")).as_deref(), Some("https://a.example"));
        assert_eq!(
            Policy::parse("http://localhost:3000", false).allow_origin(Some("http://localhost:3000")).as_deref(),
            Some("http://localhost:3000")
        );
    }

    #[test]
    fn other_origins_get_no_cors_header() {
        let p = Policy::parse("https://a.example", true);
        for origin in [Some("https://evil.example"), Some("https://a.example.evil"), Some("null"), Some(""), None] {
            let h = p.response_headers(origin);
            assert!(h.iter().all(|(n, _)| !n.starts_with("access-control-")), "{origin:?}: {h:?}");
            assert_eq!(get(&h, "vary"), Some("Origin"), "caches must still key on Origin");
            let h = p.preflight_headers(origin, Some("content-type"));
            assert!(h.iter().all(|(n, _)| !n.starts_with("access-control-")), "{origin:?}: {h:?}");
        }
        // A different port or scheme is a different origin.
        assert_eq!(p.allow_origin(Some("http://a.example")), None);
        assert_eq!(p.allow_origin(Some("https://a.example:8443")), None);
    }

    #[test]
    fn star_without_credentials_is_star_and_does_not_vary() {
        let p = Policy::parse("*", false);
        let h = p.response_headers(Some("https://any.example"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&h, "vary"), None);
        assert!(p.response_headers(None).is_empty(), "no Origin, not a CORS request");
    }

    #[test]
    fn star_is_never_sent_with_credentials() {
        let p = Policy::parse("*", true);
        let h = p.response_headers(Some("https://any.example"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://any.example"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        let h = p.preflight_headers(Some("https://any.example"), None);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://any.example"));
    }

    #[test]
    fn preflight_reflects_headers_and_lists_methods() {
        let p = Policy::parse("https://a.example", true);
        let h = p.preflight_headers(Some("https://a.example"), Some(" content-type, x-api-key "));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://a.example"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some(METHODS));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("content-type, x-api-key"));
        assert_eq!(get(&h, "access-control-max-age"), Some(MAX_AGE));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        let h = p.preflight_headers(Some("https://a.example"), None);
        assert_eq!(get(&h, "access-control-allow-headers"), None);
    }
}
