//! Forwarding headers: the one policy for every request marina passes on, to a local worker or
//! to a remote upstream.
//!
//! marina is the edge: the client address comes from the socket, never from what the client
//! claims, so apps and upstreams can trust `X-Forwarded-For` and `Forwarded` for rate limits and
//! audit logs. Values a client sent in these headers are replaced, not appended to.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};

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
    // Every proxied request and worker hop passes here. The values are written as bytes into
    // one buffer: `write!` of an address through `core::fmt` (padding support, a `String` per
    // value) was ~2,500 of this function's ~4,400 instructions a call (callgrind,
    // `bench/proxy.sh`).
    let ip = client.ip.to_canonical();
    let host = headers.get(HOST).cloned();
    let mut value = Vec::with_capacity(96);
    // RFC 7239 §6: IPv6 node names are bracketed and quoted.
    let address = match ip {
        IpAddr::V4(v4) => {
            value.extend_from_slice(b"for=");
            push_ipv4(&mut value, v4);
            4..value.len()
        }
        IpAddr::V6(v6) => {
            value.extend_from_slice(b"for=\"[");
            let _ = write!(value, "{v6}");
            let end = value.len();
            value.extend_from_slice(b"]\"");
            6..end
        }
    };
    headers.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(&value[address]).expect("an IP is a header value"));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    value.extend_from_slice(b";proto=");
    value.extend_from_slice(client.proto.as_bytes());
    match host {
        Some(host) => {
            if let Ok(h) = host.to_str() {
                value.extend_from_slice(b";host=\"");
                for b in h.bytes() {
                    if b == b'\\' || b == b'"' {
                        value.push(b'\\');
                    }
                    value.push(b);
                }
                value.push(b'"');
            }
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    match HeaderValue::from_bytes(&value) {
        Ok(v) => {
            headers.insert(FORWARDED, v);
        }
        Err(_) => {
            headers.remove(FORWARDED);
        }
    }
}

/// Writes `ip` in dotted decimal, as its `Display` does.
fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
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
    fn ipv4_is_written_as_display_writes_it() {
        for ip in ["0.0.0.0", "1.2.3.4", "10.0.99.100", "127.0.0.1", "192.168.10.9", "255.255.255.255"] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ipv4(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn every_ipv4_is_written_as_display_writes_it(octets in proptest::array::uniform4(0u8..)) {
            let ip = Ipv4Addr::from(octets);
            let mut out = Vec::new();
            push_ipv4(&mut out, ip);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
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
        assert_eq!(h["x-forwarded-for"], "::1");
        assert!(h.get("x-forwarded-host").is_none());
        let mut h = HeaderMap::new();
        set_forwarding_headers(&mut h, ClientInfo { ip: "::ffff:10.0.0.1".parse().unwrap(), proto: "http" });
        assert_eq!(h["x-forwarded-for"], "10.0.0.1", "IPv4-mapped addresses are written as IPv4");
    }
}
