//! The real client address, worked out once at accept (DESIGN.md's pipeline, phase 1) so that
//! every later phase — rate limits, the gateway's log, the forwarding headers workers and
//! upstreams get — agrees on it.
//!
//! `X-Forwarded-For` is believed only when the socket peer is one of `RUNTIME_TRUSTED_PROXIES`,
//! and then only as far as the chain of trusted proxies goes: the list is read right to left
//! (each proxy appends the address it saw), skipping trusted addresses; the first untrusted one
//! is the client. A client cannot pick its address by sending the header itself, because its
//! own entry is the leftmost and a trusted proxy appends the real one after it. A malformed
//! entry stops the walk at the last address that was vouched for. Buntime took the first entry
//! from anyone (its rate limit could be dodged with a header).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The client address of a request that arrived from `peer`.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443`, `203.0.113.7:5000`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    e.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack socket reports) as plain IPv4, so a
/// configured `10.0.0.0/8` matches it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &str) -> Vec<IpNet> {
        marina_core::settings::parse_cidrs(s).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 4000)
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted = nets("10.0.0.0/8, ::1");
        let h = xff(&["198.51.100.9, 203.0.113.7"]);
        // Untrusted peer: its claim is ignored.
        assert_eq!(client_ip(peer("192.0.2.1"), &h, &trusted), "192.0.2.1".parse::<IpAddr>().unwrap());
        // No trusted proxies configured: never believed.
        assert_eq!(client_ip(peer("10.0.0.5"), &h, &[]), "10.0.0.5".parse::<IpAddr>().unwrap());
        // Trusted peer: the rightmost entry it appended (the client may have sent the left one).
        assert_eq!(client_ip(peer("10.0.0.5"), &h, &trusted), "203.0.113.7".parse::<IpAddr>().unwrap());
        // A chain of trusted proxies is walked past.
        let chain = xff(&["198.51.100.9", "203.0.113.7, 10.1.2.3"]);
        assert_eq!(client_ip(peer("::1"), &chain, &trusted), "203.0.113.7".parse::<IpAddr>().unwrap());
        // Everyone trusted: the leftmost address.
        assert_eq!(client_ip(peer("10.0.0.5"), &xff(&["10.9.9.9"]), &trusted), "10.9.9.9".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last vouched-for address.
        assert_eq!(
            client_ip(peer("10.0.0.5"), &xff(&["1.2.3.4, nonsense"]), &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        // Ports and brackets, IPv4-mapped peers.
        assert_eq!(
            client_ip(peer("10.0.0.5"), &xff(&["[2001:db8::1]:443"]), &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer("::ffff:10.0.0.5"), &xff(&["203.0.113.7:80"]), &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // No header from a trusted peer: the peer.
        assert_eq!(client_ip(peer("10.0.0.5"), &HeaderMap::new(), &trusted), "10.0.0.5".parse::<IpAddr>().unwrap());
    }
}
