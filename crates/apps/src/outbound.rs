//! `allowedOutboundHosts`: the destinations an app may send HTTP requests to.
//!
//! The syntax is Spin's: `scheme://host[:port]`, where the scheme is `http`, `https` or `*`; the
//! host is a name, an IPv4 address, a bracketed IPv6 address, `*` (any host) or `*.example.com`
//! (any subdomain, not the domain itself); the port is a number or `*`, and defaults to the
//! scheme's (80, 443). A path is not allowed (the grant is per destination, not per URL).
//! Validated when the manifest is read, so a typo is a manifest error with its key path, not a
//! request that is silently denied.

/// One parsed `allowedOutboundHosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Option<String>,
    host: Host,
    port: Port,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Any,
    /// None given: the request's scheme's default (80, 443).
    SchemeDefault,
    Is(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    /// `*.example.com`: stored as `.example.com`.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    /// Parses one entry, with an error message that says what was expected.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let expected = "expected `scheme://host[:port]` such as \"https://api.example.com\", \"http://127.0.0.1:8080\" or \"*://*.example.com:*\"";
        let Some((scheme, rest)) = pattern.split_once("://") else {
            return Err(format!("{pattern:?} has no scheme: {expected}"));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => None,
            s @ ("http" | "https") => Some(s.to_string()),
            _ => return Err(format!("{pattern:?} has the scheme {scheme:?}; the scheme must be http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') || rest.contains('@') {
            return Err(format!("{pattern:?} has a path or user part: {expected}"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return Err(format!("{pattern:?} has an unclosed `[`: {expected}"));
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{pattern:?}: {addr:?} is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| format!("{pattern:?}: {expected}"))?),
            };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        let port = match port {
            None => Port::SchemeDefault,
            Some("*") => Port::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Port::Is(n),
                _ => return Err(format!("{pattern:?} has the port {p:?}; expected a number from 1 to 65535 or *")),
            },
        };
        let host = if host == "*" {
            Host::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            valid_name(domain).map_err(|e| format!("{pattern:?}: {e}"))?;
            Host::Suffix(format!(".{domain}"))
        } else {
            if !host.starts_with('[') {
                valid_name(&host).map_err(|e| format!("{pattern:?}: {e}"))?;
            }
            Host::Exact(host)
        };
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry. `host` is compared
    /// case-insensitively; an IPv6 host comes bracketed, as in a URL.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme = scheme.to_ascii_lowercase();
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let port_ok = match self.port {
            Port::Any => true,
            Port::SchemeDefault => port == if scheme == "https" { 443 } else { 80 },
            Port::Is(p) => p == port,
        };
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            Host::Any => true,
            Host::Suffix(s) => host.ends_with(s.as_str()),
            Host::Exact(h) => *h == host,
        };
        port_ok && host_ok
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-'));
    if ok { Ok(()) } else { Err(format!("{name:?} is not a host name or IPv4 address")) }
}

/// Whether any of `patterns` allows `scheme://host:port`. Patterns that do not parse allow
/// nothing (the manifest reader has already reported them).
pub fn allowed(patterns: &[String], scheme: &str, host: &str, port: u16) -> bool {
    patterns.iter().filter_map(|p| HostPattern::parse(p).ok()).any(|p| p.allows(scheme, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(p: &str, scheme: &str, host: &str, port: u16) -> bool {
        HostPattern::parse(p).unwrap().allows(scheme, host, port)
    }

    #[test]
    fn exact_hosts_and_default_ports() {
        assert!(allows("https://api.example.com", "https", "API.example.com", 443));
        assert!(!allows("https://api.example.com", "https", "api.example.com", 8443));
        assert!(!allows("https://api.example.com", "http", "api.example.com", 80));
        assert!(allows("http://127.0.0.1:8080", "http", "127.0.0.1", 8080));
        assert!(!allows("http://127.0.0.1:8080", "http", "127.0.0.2", 8080));
        assert!(allows("http://[::1]:80", "http", "[::1]", 80));
        assert!(allows("*://example.com", "http", "example.com", 80));
        assert!(allows("*://example.com", "https", "example.com", 443));
        assert!(!allows("*://example.com", "https", "example.com", 80));
    }

    #[test]
    fn wildcards() {
        assert!(allows("*://*:*", "http", "anything", 1));
        assert!(allows("https://*.example.com", "https", "a.b.example.com", 443));
        assert!(!allows("https://*.example.com", "https", "example.com", 443));
        assert!(!allows("https://*.example.com", "https", "evilexample.com", 443));
        assert!(allows("http://localhost:*", "http", "localhost", 3000));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (p, needle) in [
            ("example.com", "no scheme"),
            ("ftp://example.com", "scheme must be http, https or *"),
            ("https://example.com/path", "path"),
            ("https://example.com:0", "port"),
            ("https://example.com:http", "port"),
            ("https://exa mple.com", "not a host name"),
            ("https://", "not a host name"),
            ("https://[::1", "unclosed"),
            ("https://user@example.com", "user"),
        ] {
            let e = HostPattern::parse(p).unwrap_err();
            assert!(e.contains(needle), "{p}: {e}");
        }
        assert!(!allowed(&["nonsense".into()], "http", "nonsense", 80));
    }
}
