//! One host per request, the same for every part of marina and for the worker.
//!
//! HTTP/1.1 lets a client name the host twice — the `Host` header and an absolute-form target
//! (`GET http://a.example/ HTTP/1.1`) — and send `Host` more than once; HTTP/2 names it in
//! `:authority`, which hyper puts in the URI, not in `Host`. Parts that read different ones
//! (the CSRF same-host check, `X-Forwarded-Host`, the app's `new URL(req.url)`) would disagree
//! about which host a request is for. So before anything else looks at a request:
//!
//! - more than one `Host`, an HTTP/1.1 request without one, or a value that is not a valid
//!   `host[:port]` is 400 `HOST_INVALID` (RFC 9112 §3.2 says a server MUST answer 400);
//! - a target with an authority (absolute-form, or HTTP/2's `:authority`) sets `Host` to that
//!   authority, as RFC 9112 §3.2.2 and RFC 9113 §8.3.1 ask of a server and of a gateway.

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, Version};
use marina_core::Error;

/// Check and settle the request's host (see the module docs).
///
/// # Errors
/// 400 `HOST_INVALID` naming what is wrong.
pub fn settle<B>(req: &mut Request<B>) -> Result<(), Error> {
    let hosts = req.headers().get_all(HOST).iter().count();
    if hosts > 1 {
        return Err(invalid(format!("the request has {hosts} Host headers; exactly one is allowed")));
    }
    if let Some(authority) = req.uri().authority() {
        // Never a `user@` part: only the host and port name where the request goes.
        let host = match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_string(),
        };
        let value = HeaderValue::from_str(&host).map_err(|_| invalid("the request target's host is not valid"))?;
        req.headers_mut().insert(HOST, value);
        return Ok(());
    }
    match req.headers().get(HOST) {
        None if req.version() == Version::HTTP_11 => Err(invalid("an HTTP/1.1 request needs a Host header")),
        None => Ok(()),
        Some(value) if value.is_empty() || is_host(value.as_bytes()) => Ok(()),
        Some(_) => Err(invalid("the Host header is not a valid host[:port]")),
    }
}

/// Whether `value` is a `host[:port]` (no user part, no path).
fn is_host(value: &[u8]) -> bool {
    !value.contains(&b'@') && Authority::try_from(value).is_ok()
}

fn invalid(message: impl Into<String>) -> Error {
    Error::bad_request("HOST_INVALID", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(target).version(version);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    fn host(r: &Request<()>) -> Option<&str> {
        r.headers().get(HOST).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn one_valid_host_passes_as_it_is() {
        for h in ["a.example", "a.example:8080", "127.0.0.1:80", "[::1]:8000", ""] {
            let mut r = req(Version::HTTP_11, "/x", &[h]);
            assert!(settle(&mut r).is_ok(), "{h:?}");
            assert_eq!(host(&r), Some(h));
        }
        // HTTP/1.0 did not require it.
        assert!(settle(&mut req(Version::HTTP_10, "/x", &[])).is_ok());
    }

    #[test]
    fn missing_repeated_and_malformed_hosts_are_400() {
        for (version, hosts) in [
            (Version::HTTP_11, &[][..]),
            (Version::HTTP_11, &["a", "b"][..]),
            (Version::HTTP_11, &["a", "a"][..]),
            (Version::HTTP_11, &["a b"][..]),
            (Version::HTTP_11, &["user@a.example"][..]),
            (Version::HTTP_11, &["a.example/path"][..]),
            (Version::HTTP_10, &["a", "b"][..]),
        ] {
            let err = settle(&mut req(version, "/x", hosts)).unwrap_err();
            assert_eq!((err.status().as_u16(), err.code()), (400, "HOST_INVALID"), "{hosts:?}");
        }
    }

    #[test]
    fn the_targets_authority_wins_over_host() {
        let mut r = req(Version::HTTP_11, "http://user@evil.example:81/echo/", &["good.example"]);
        settle(&mut r).unwrap();
        assert_eq!(host(&r), Some("evil.example:81"));
        // HTTP/2: `:authority` (in the URI) becomes Host.
        let mut r = req(Version::HTTP_2, "http://app.example/x", &[]);
        settle(&mut r).unwrap();
        assert_eq!(host(&r), Some("app.example"));
    }
}
