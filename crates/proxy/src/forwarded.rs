//! Forwarding headers: the one policy for every request marina passes on, to a local worker or
//! to a remote upstream.
//!
//! marina is the edge: the client address comes from the socket, never from what the client
//! claims, so apps and upstreams can trust `X-Forwarded-For` and `Forwarded` for rate limits and
//! audit logs. Values a client sent in these headers are replaced, not appended to.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{FORWARDED, HOST, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client side of a request, as marina saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The socket's peer address.
    pub ip: IpAddr,
    /// `http` or `https`: the scheme the client used to reach marina.
    pub proto: &'static str,
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` (RFC 7239)
/// from `client` and the request's `Host`. Call it before anything rewrites `Host`
/// (`changeOrigin`), so the forwarded host is the one the client asked for.
pub fn set_forwarding_headers(headers: &mut HeaderMap, client: ClientInfo) {
    // Every request passes here: one buffer for both values, no intermediate strings.
    let ip = client.ip.to_canonical();
    let host = headers.get(HOST).cloned();
    let mut value = String::with_capacity(96);
    let _ = write!(value, "{ip}");
    headers.insert(X_FORWARDED_FOR, HeaderValue::from_str(&value).expect("an IP is a header value"));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    value.clear();
    // RFC 7239 §6: IPv6 node names are bracketed and quoted.
    let _ = match ip {
        IpAddr::V4(v4) => write!(value, "for={v4};proto={}", client.proto),
        IpAddr::V6(v6) => write!(value, "for=\"[{v6}]\";proto={}", client.proto),
    };
    match host {
        Some(host) => {
            if let Ok(h) = host.to_str() {
                value.push_str(";host=\"");
                for c in h.chars() {
                    if c == '\\' || c == '"' {
                        value.push('\\');
                    }
                    value.push(c);
                }
                value.push('"');
            }
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(FORWARDED, v);
        }
        Err(_) => {
            headers.remove(FORWARDED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_client_claims_and_describes_the_hop() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert(HOST, HeaderValue::from_static("app.example:8080"));
        set_forwarding_headers(&mut h, ClientInfo { ip: "10.1.2.3".parse().unwrap(), proto: "http" });
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example:8080");
        assert_eq!(h["forwarded"], "for=10.1.2.3;proto=http;host=\"app.example:8080\"");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn quotes_and_backslashes_in_the_host_are_escaped() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("a\"b\\c"));
        set_forwarding_headers(&mut h, ClientInfo { ip: "10.1.2.3".parse().unwrap(), proto: "http" });
        assert_eq!(h["forwarded"], "for=10.1.2.3;proto=http;host=\"a\\\"b\\\\c\"");
    }

    #[test]
    fn ipv6_is_quoted_and_a_missing_host_clears_the_claim() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        set_forwarding_headers(&mut h, ClientInfo { ip: "::1".parse().unwrap(), proto: "https" });
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https");
        assert!(h.get("x-forwarded-host").is_none());
        let mut h = HeaderMap::new();
        set_forwarding_headers(&mut h, ClientInfo { ip: "::ffff:10.0.0.1".parse().unwrap(), proto: "http" });
        assert_eq!(h["x-forwarded-for"], "10.0.0.1", "IPv4-mapped addresses are written as IPv4");
    }
}
