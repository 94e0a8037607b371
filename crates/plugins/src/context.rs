//! The request context: created once when a request is accepted and passed `&mut` to every
//! phase (Pingora's `CTX`), so phases share state through it instead of through arguments.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Extensions, Method};
use marina_apps::App;

/// Who made the request, as established by authentication or a forward-auth hook: marina's one
/// identity type ([`marina_auth::Identity`]), shared. Workers receive it as the `x-identity`
/// header (JSON); an incoming `x-identity` is always dropped, so a worker can trust the header.
pub use marina_auth::Identity;

/// Per-request state, from accept to completion.
#[derive(Debug)]
pub struct RequestContext {
    /// `X-Request-Id`: the caller's when sane, else a UUIDv7.
    pub request_id: String,
    /// When the request was accepted.
    pub started: Instant,
    /// The socket peer.
    pub peer: SocketAddr,
    /// The real client address: the peer, unless a trusted proxy in front of marina says
    /// otherwise (the gateway decides that; nothing else may).
    pub client_ip: IpAddr,
    /// The method as received.
    pub method: Method,
    /// The path as received (before any plugin rewrote it or a base was stripped).
    pub path: String,
    /// The app the request resolved to, once routing found one.
    pub app: Option<Arc<App>>,
    /// The plugin whose base answered the request, once routing found one.
    pub plugin: Option<Arc<str>>,
    /// Who is calling, once an authentication plugin established it.
    pub identity: Option<Arc<Identity>>,
    /// Authentication's answer when it refused the request (401/403), held until the
    /// `early_request` phase ends so that admission hooks (the gateway's rate limit) count
    /// refused requests too: a flood of bad keys is limited like any other flood.
    pub refusal: Option<marina_core::Error>,
    /// Typed state that plugins share with later phases (a matched rule, a rate-limit verdict).
    pub extensions: Extensions,
    /// When the answer is due, if anything set a bound.
    pub deadline: Option<Instant>,
}

impl RequestContext {
    /// A context for a request just accepted.
    pub fn new(request_id: String, peer: SocketAddr, method: Method, path: String) -> Self {
        Self {
            request_id,
            started: Instant::now(),
            peer,
            client_ip: peer.ip(),
            method,
            path,
            app: None,
            plugin: None,
            identity: None,
            refusal: None,
            extensions: Extensions::new(),
            deadline: None,
        }
    }

    /// Time left before the deadline (`None` = unbounded; zero once passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Tighten the deadline to `within` from now (an earlier deadline is kept).
    pub fn bound(&mut self, within: Duration) {
        let candidate = Instant::now() + within;
        self.deadline = Some(self.deadline.map_or(candidate, |d| d.min(candidate)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_deadline_wins() {
        let mut ctx = RequestContext::new("r".into(), "127.0.0.1:1".parse().unwrap(), Method::GET, "/".into());
        assert_eq!(ctx.remaining(), None);
        ctx.bound(Duration::from_secs(60));
        ctx.bound(Duration::from_secs(3600));
        assert!(ctx.remaining().unwrap() <= Duration::from_secs(60));
        assert_eq!(ctx.client_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
