//! Which upstream addresses a proxy rule may reach (SSRF policy).
//!
//! Proxy rules can be written through an API, so a rule is a request forgery waiting to happen:
//! a target at the cloud metadata service (`169.254.169.254`) hands out credentials, and a target
//! at marina's own listener loops. Both are refused unless the configuration allows the range.
//! The check runs twice: on the target when a rule is validated (IP literals and `localhost`),
//! and on every address a host name resolves to when connecting, so a name that later resolves
//! to a forbidden address (DNS rebinding) is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Ranges refused by default: link-local (where the AWS, GCP and Azure metadata services
/// live), the metadata addresses outside it, and "this host" addresses.
const BLOCKED: &[(&str, &str)] = &[
    ("169.254.0.0/16", "a link-local address (cloud metadata services live here)"),
    ("fe80::/10", "a link-local address"),
    ("fd00:ec2::254/128", "the AWS IPv6 metadata service"),
    ("100.100.100.200/32", "the Alibaba Cloud metadata service"),
    ("168.63.129.16/32", "the Azure host service"),
    ("0.0.0.0/8", "a 'this host' address"),
    ("::/128", "the unspecified address"),
];

/// [`BLOCKED`], parsed once: every proxied request to an IP-literal target checks them.
fn blocked() -> &'static [(IpNet, &'static str)] {
    static PARSED: std::sync::LazyLock<Vec<(IpNet, &'static str)>> = std::sync::LazyLock::new(|| {
        BLOCKED.iter().map(|(net, why)| (net.parse().expect("built-in ranges parse"), *why)).collect()
    });
    &PARSED
}

/// The SSRF policy: what marina's own listeners are, and which ranges the operator allows.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    own: Vec<SocketAddr>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl TargetPolicy {
    /// A policy that refuses the built-in ranges and `own` (marina's listen addresses), except
    /// addresses inside `allow`.
    pub fn new(own: Vec<SocketAddr>, allow: Vec<IpNet>) -> Self {
        Self { own, allow, deny: Vec::new() }
    }

    /// Refuses `deny` ranges too (an operator's private networks, say), unless `allow` has them.
    pub fn with_deny(mut self, deny: Vec<IpNet>) -> Self {
        self.deny = deny;
        self
    }

    /// Adds one of marina's listen addresses (known only once the listener is bound).
    pub fn add_own(&mut self, addr: SocketAddr) {
        self.own.push(addr);
    }

    /// Why `ip` may not be connected to at all (`None`: it may). The port-independent half of
    /// the policy, used when a host name resolves.
    pub fn refuse_ip(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        if let Some(net) = self.deny.iter().find(|n| n.contains(&ip)) {
            return Some(format!("{ip} is in {net}, which the proxy configuration denies"));
        }
        for (net, why) in blocked() {
            if net.contains(&ip) {
                return Some(format!("{ip} is {why}; allow it in the proxy configuration if this is intended"));
            }
        }
        None
    }

    /// Why `ip:port` may not be a target (`None`: it may): [`refuse_ip`](Self::refuse_ip), or
    /// marina's own listener.
    pub fn refuse(&self, ip: IpAddr, port: u16) -> Option<String> {
        if let Some(why) = self.refuse_ip(ip) {
            return Some(why);
        }
        self.refuse_loop(SocketAddr::new(ip, port), false)
    }

    /// Why a connection just made to `peer`, whose local end is `local`, must not be used: it
    /// reached marina's own listener. This is the check that catches every spelling of marina's
    /// address — a host name resolving to it, `127.1`, an address of one of this host's
    /// interfaces while marina listens on `0.0.0.0` — because it looks at where the connection
    /// actually went. A connection to this host has the same address at both ends.
    pub fn refuse_connected(&self, peer: SocketAddr, local: IpAddr) -> Option<String> {
        let same_host = peer.ip().to_canonical() == local.to_canonical();
        self.refuse_loop(peer, same_host)
    }

    fn refuse_loop(&self, peer: SocketAddr, same_host: bool) -> Option<String> {
        let (ip, port) = (peer.ip().to_canonical(), peer.port());
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        let itself = self.own.iter().any(|own| {
            let own_ip = own.ip().to_canonical();
            own.port() == port
                && (own_ip == ip
                    || (own_ip.is_unspecified() && (ip.is_loopback() || same_host))
                    || (ip.is_loopback() && own_ip.is_loopback()))
        });
        itself.then(|| format!("{ip}:{port} is marina's own listener; a rule pointing there would loop"))
    }

    /// The check for a target host as written in a rule: IP literals and `localhost` are
    /// checked now; other names are checked on every connection.
    pub fn refuse_host(&self, host: &str, port: u16) -> Option<String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.refuse(ip, port);
        }
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return self
                .refuse(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
                .or_else(|| self.refuse(IpAddr::V6(Ipv6Addr::LOCALHOST), port));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_metadata_link_local_and_itself() {
        let p = TargetPolicy::new(vec!["0.0.0.0:8000".parse().unwrap()], vec![]);
        assert!(p.refuse(ip("169.254.169.254"), 80).unwrap().contains("metadata"));
        assert!(p.refuse(ip("::ffff:169.254.169.254"), 80).is_some(), "IPv4-mapped IPv6 is the same address");
        assert!(p.refuse(ip("fe80::1"), 80).is_some());
        assert!(p.refuse(ip("fd00:ec2::254"), 80).is_some());
        assert!(p.refuse(ip("0.0.0.0"), 9000).is_some());
        assert!(p.refuse(ip("127.0.0.1"), 8000).unwrap().contains("loop"));
        assert!(p.refuse_host("localhost", 8000).is_some());
        assert!(p.refuse_host("[::1]", 8000).is_some());
        assert!(p.refuse(ip("127.0.0.1"), 8001).is_none(), "another local port is a normal upstream");
        assert!(p.refuse(ip("93.184.216.34"), 443).is_none());
        assert!(p.refuse_host("example.com", 443).is_none(), "names are checked when they resolve");
    }

    #[test]
    fn a_connection_that_reached_marina_itself_is_a_loop() {
        let p = TargetPolicy::new(vec!["127.0.0.1:8000".parse().unwrap()], vec![]);
        let lo = ip("127.0.0.1");
        assert!(p.refuse_connected("127.0.0.1:8000".parse().unwrap(), lo).unwrap().contains("loop"));
        assert!(p.refuse_connected("127.0.0.2:8000".parse().unwrap(), lo).is_some(), "any loopback address");
        assert!(p.refuse_connected("127.0.0.1:8001".parse().unwrap(), lo).is_none());
        let any = TargetPolicy::new(vec!["0.0.0.0:8000".parse().unwrap()], vec![]);
        let me = ip("10.1.2.3");
        assert!(any.refuse_connected("10.1.2.3:8000".parse().unwrap(), me).is_some(), "this host's own address");
        assert!(any.refuse_connected("10.1.2.4:8000".parse().unwrap(), me).is_none(), "another host");
        let allowed = TargetPolicy::new(vec!["127.0.0.1:8000".parse().unwrap()], vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(allowed.refuse_connected("127.0.0.1:8000".parse().unwrap(), lo).is_none(), "allowed on purpose");
    }

    #[test]
    fn configuration_can_allow_a_range() {
        let p = TargetPolicy::new(vec![], vec!["169.254.0.0/16".parse().unwrap()]);
        assert!(p.refuse(ip("169.254.169.254"), 80).is_none());
        assert!(p.refuse(ip("fe80::1"), 80).is_some());
    }
}
