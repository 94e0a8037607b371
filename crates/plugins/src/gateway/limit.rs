//! Per-client rate limits with `governor` (GCRA): `requests` per `window`, refilled evenly, a
//! full window's worth available as a burst — Buntime's token bucket, without its bugs (its key
//! was the spoofable first `X-Forwarded-For` entry and a master key skipped it).
//!
//! The key is [`RequestContext::client_ip`](crate::RequestContext::client_ip): the socket peer
//! (marina has no trusted-proxy setting yet, so `X-Forwarded-For` is never believed). Keyed state
//! is bounded: entries whose bucket is full again are dropped at most every [`SWEEP_EVERY`].

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

type Keyed = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// How often keyed state is swept of buckets that are full again.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether it may go on.
    pub allowed: bool,
    /// The limit per window (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Whole seconds until the allowance is full again, or (when refused) until the next request
    /// is allowed (`RateLimit-Reset`, `Retry-After`).
    pub reset_secs: u64,
}

/// The keyed limiter.
pub struct Limiter {
    limiter: Keyed,
    limit: u32,
    period: Duration,
    window: Duration,
    born: Instant,
    last_sweep_ms: AtomicU64,
}

impl Limiter {
    /// `requests` per `window`; `None` when the window is zero (no sane quota).
    pub fn new(requests: NonZeroU32, window: Duration) -> Option<Self> {
        let period = window.checked_div(requests.get()).filter(|p| !p.is_zero())?;
        let quota = Quota::with_period(period)?.allow_burst(requests);
        Some(Self {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            limit: requests.get(),
            period,
            window,
            born: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The configured window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Client addresses with state (for stats).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    /// Count one request from `key`.
    pub fn check(&self, key: IpAddr) -> Verdict {
        self.sweep();
        let clock = self.limiter.clock();
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.limit.saturating_sub(remaining);
                let reset = self.period.saturating_mul(used);
                Verdict { allowed: true, limit: self.limit, remaining, reset_secs: ceil_secs(reset) }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                Verdict { allowed: false, limit: self.limit, remaining: 0, reset_secs: ceil_secs(wait).max(1) }
            }
        }
    }

    /// Drop full buckets, at most once per [`SWEEP_EVERY`] (whichever request comes first does it).
    fn sweep(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64 {
            return;
        }
        if self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_of_the_limit_then_refusals_with_a_retry_time() {
        let l = Limiter::new(NonZeroU32::new(3).unwrap(), Duration::from_secs(3600)).unwrap();
        let got: Vec<_> = (0..5).map(|_| l.check(ip("10.0.0.1"))).collect();
        assert_eq!(got.iter().filter(|v| v.allowed).count(), 3);
        assert_eq!(got.iter().map(|v| v.remaining).collect::<Vec<_>>(), [2, 1, 0, 0, 0]);
        assert!(!got[3].allowed);
        // One request comes back every 20 minutes.
        assert!((1190..=1200).contains(&got[3].reset_secs), "{:?}", got[3]);
        // Another address has its own allowance.
        assert!(l.check(ip("10.0.0.2")).allowed);
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn a_zero_window_is_refused() {
        assert!(Limiter::new(NonZeroU32::new(3).unwrap(), Duration::ZERO).is_none());
    }
}
