//! The request context: created once when a request is accepted and passed `&mut` to every
//! phase (Pingora's `CTX`), so phases share state through it instead of through arguments.

use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use marina_apps::App;

/// Who made the request, as established by authentication or a forward-auth hook: marina's one
/// identity type ([`marina_auth::Identity`]), shared. Workers receive it as the `x-identity`
/// header (JSON); an incoming `x-identity` is always dropped, so a worker can trust the header.
pub use marina_auth::Identity;

/// Per-request state, from accept to completion.
#[derive(Debug)]
pub struct RequestContext {
    /// `X-Request-Id`: the caller's when sane, else a UUIDv7. Shared (`Arc`), like `path`: the
    /// gateway's request log keeps both, at the cost of a reference count instead of a copy.
    pub request_id: Arc<str>,
    /// When the request was accepted.
    pub started: Instant,
    /// The socket peer.
    pub peer: SocketAddr,
    /// marina's side of the connection, when known (the internal API asks who the peer is
    /// while it is open without a key).
    pub local: Option<SocketAddr>,
    /// The real client address: the peer, unless a trusted proxy in front of marina says
    /// otherwise (the gateway decides that; nothing else may).
    pub client_ip: IpAddr,
    /// The method as received.
    pub method: Method,
    /// The path as received (before any plugin rewrote it or a base was stripped).
    pub path: Arc<str>,
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
    /// The request's `Origin` as received, when an admission hook kept it for the response
    /// phases (the gateway does, for CORS). A field rather than a slot in `extensions`: it is
    /// kept for every request a CORS policy sees, and a slot costs a box per request.
    pub origin: Option<http::HeaderValue>,
    /// Typed state that plugins share with later phases (a matched rule, a rate-limit verdict).
    pub extensions: Slots,
    /// When the answer is due, if anything set a bound.
    pub deadline: Option<Instant>,
}

impl RequestContext {
    /// The request's connection, when marina's side of it is known.
    pub fn connection(&self) -> Option<marina_auth::Connection> {
        self.local.map(|local| marina_auth::Connection { peer: self.peer, local })
    }

    /// A context for a request just accepted.
    pub fn new(request_id: impl Into<Arc<str>>, peer: SocketAddr, method: Method, path: impl Into<Arc<str>>) -> Self {
        Self {
            request_id: request_id.into(),
            started: Instant::now(),
            peer,
            local: None,
            client_ip: peer.ip(),
            method,
            path: path.into(),
            app: None,
            plugin: None,
            identity: None,
            refusal: None,
            origin: None,
            extensions: Slots::default(),
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
        let mut ctx = RequestContext::new("r", "127.0.0.1:1".parse().unwrap(), Method::GET, "/");
        assert_eq!(ctx.remaining(), None);
        ctx.bound(Duration::from_secs(60));
        ctx.bound(Duration::from_secs(3600));
        assert!(ctx.remaining().unwrap() <= Duration::from_secs(60));
        assert_eq!(ctx.client_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}

/// Typed state that plugins hand from one phase to a later one (a matched rule, a rate-limit
/// verdict), one value per type. Not `http::Extensions`: a request carries one or two values,
/// and its hash map cost three allocations per request where this costs one (the value's box;
/// the first value needs no list).
#[derive(Default)]
pub struct Slots {
    first: Option<Box<dyn Any + Send + Sync>>,
    rest: Vec<Box<dyn Any + Send + Sync>>,
}

impl Slots {
    /// Stores `value`, returning the value of its type that was there.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        if let Some(slot) = self.get_mut::<T>() {
            return Some(std::mem::replace(slot, value));
        }
        match self.first {
            None => self.first = Some(Box::new(value)),
            Some(_) => self.rest.push(Box::new(value)),
        }
        None
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.first.iter().chain(&self.rest).find_map(|b| b.downcast_ref::<T>())
    }

    /// The value of type `T`, mutably.
    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.first.iter_mut().chain(&mut self.rest).find_map(|b| b.downcast_mut::<T>())
    }

    /// Takes the value of type `T` out.
    pub fn remove<T: Any>(&mut self) -> Option<T> {
        let boxed = if self.first.as_ref().is_some_and(|b| b.is::<T>()) {
            let taken = self.first.take();
            if !self.rest.is_empty() {
                self.first = Some(self.rest.swap_remove(0));
            }
            taken?
        } else {
            let i = self.rest.iter().position(|b| b.is::<T>())?;
            self.rest.swap_remove(i)
        };
        boxed.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({} values)", usize::from(self.first.is_some()) + self.rest.len())
    }
}

#[cfg(test)]
mod slots_tests {
    use super::Slots;

    #[test]
    fn one_value_per_type_in_and_out() {
        let mut s = Slots::default();
        assert_eq!(s.insert(1u8), None);
        assert_eq!(s.insert("a"), None);
        assert_eq!(s.insert(2u16), None);
        assert_eq!(s.insert(3u8), Some(1));
        assert_eq!(s.get::<u8>(), Some(&3));
        *s.get_mut::<u16>().unwrap() += 1;
        assert_eq!(s.remove::<u8>(), Some(3));
        assert_eq!(s.remove::<u8>(), None);
        assert_eq!(s.get::<&str>(), Some(&"a"));
        assert_eq!(s.remove::<u16>(), Some(3));
        assert_eq!(s.remove::<&str>(), Some("a"));
        assert_eq!(s.get::<u32>(), None);
        assert_eq!(format!("{s:?}"), "Slots(0 values)");
    }
}
