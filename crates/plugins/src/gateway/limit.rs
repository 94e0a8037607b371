//! Keyed rate limits with `governor` (GCRA): `requests` per `window`, refilled evenly, a full
//! window's worth available as a burst — Buntime's token bucket, without its bugs (its key was
//! the spoofable first `X-Forwarded-For` entry and a master key skipped it).
//!
//! Keys are chosen by the rules ([`super::rules`]): the real client address (which the server
//! derives at accept, believing `X-Forwarded-For` only from `RUNTIME_TRUSTED_PROXIES`), the
//! caller's identity, per route. Keyed state is bounded: entries whose bucket is full again are
//! dropped at most every [`SWEEP_EVERY`]. Beside governor's state, each key keeps counters for
//! `/gateway/api/rate-limit/buckets` (governor cannot be read without spending a request).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;

use super::keyed::{BucketKey, KeyHasher};

/// One key's GCRA state: governor's direct (unkeyed) limiter, unchanged.
type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

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

/// One key's counters, as `/gateway/api/rate-limit/buckets` shows them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// The key (`ip:203.0.113.7`, `api-key:3`, ...).
    pub key: String,
    /// Requests left after its last request.
    pub remaining: u32,
    /// Requests counted since the bucket was created.
    pub requests: u64,
    /// Of those, refused.
    pub blocked: u64,
    /// Its last request, epoch milliseconds.
    pub last_seen: u64,
}

/// A key's state: its GCRA limiter and the counters `/buckets` shows, in one map entry, so a
/// request costs one look-up (hashing the key once). governor's keyed limiter keeps its state in
/// a map of its own, which meant a second map and a second hash per request for the counters
/// (and a `StateStore` adapter to forget a key); per-key direct limiters are governor's public
/// way to the same GCRA decision.
struct Entry {
    gcra: Gcra,
    remaining: AtomicU32,
    requests: AtomicU64,
    blocked: AtomicU64,
    /// Milliseconds since the limiter was made (`born`): a monotonic clock read the sweep needs
    /// anyway, instead of a second, wall-clock read per request; made epoch milliseconds when
    /// `/buckets` shows it.
    last_seen: AtomicU64,
}

/// The keyed limiter of one rule.
pub struct Limiter {
    quota: Quota,
    clock: DefaultClock,
    keys: DashMap<BucketKey, Entry, KeyHasher>,
    limit: u32,
    /// `RateLimit-Limit`, made once.
    limit_header: http::HeaderValue,
    period: Duration,
    window: Duration,
    /// When it was made, on governor's clock (quanta: cheaper to read than `Instant::now`).
    born: <DefaultClock as Clock>::Instant,
    last_sweep_ms: AtomicU64,
}

impl Limiter {
    /// `requests` per `window`; `None` when the window is too short for that many requests
    /// (less than 1 ns each): no quota means it.
    pub fn new(requests: NonZeroU32, window: Duration) -> Option<Self> {
        let period = window.checked_div(requests.get()).filter(|p| !p.is_zero())?;
        let quota = Quota::with_period(period)?.allow_burst(requests);
        let clock = DefaultClock::default();
        let born = clock.now();
        Some(Self {
            quota,
            clock,
            keys: DashMap::default(),
            limit: requests.get(),
            limit_header: http::HeaderValue::from(requests.get()),
            period,
            window,
            born,
            last_sweep_ms: AtomicU64::new(0),
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The configured limit as a `RateLimit-Limit` value (shared, not rebuilt per answer).
    pub fn limit_header(&self) -> &http::HeaderValue {
        &self.limit_header
    }

    /// The configured window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Keys with state (for stats).
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    /// Count one request from `key`.
    pub fn check(&self, key: BucketKey) -> Verdict {
        let now_ms = self.sweep();
        let entry = match self.keys.get(&key) {
            Some(entry) => entry,
            None => self.keys.entry(key).or_insert_with(|| self.entry()).downgrade(),
        };
        let verdict = match entry.gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.limit.saturating_sub(remaining);
                let reset = self.period.saturating_mul(used);
                Verdict { allowed: true, limit: self.limit, remaining, reset_secs: ceil_secs(reset) }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Verdict { allowed: false, limit: self.limit, remaining: 0, reset_secs: ceil_secs(wait).max(1) }
            }
        };
        entry.requests.fetch_add(1, Ordering::Relaxed);
        if !verdict.allowed {
            entry.blocked.fetch_add(1, Ordering::Relaxed);
        }
        entry.remaining.store(verdict.remaining, Ordering::Relaxed);
        entry.last_seen.store(now_ms, Ordering::Relaxed);
        verdict
    }

    /// A new key's state: a full allowance.
    fn entry(&self) -> Entry {
        Entry {
            gcra: RateLimiter::direct_with_clock(self.quota, self.clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            remaining: AtomicU32::new(self.limit),
            requests: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            last_seen: AtomicU64::new(0),
        }
    }

    /// Forget `key` (written as `/buckets` shows it): its next request meets a full allowance.
    /// True when the key was known.
    pub fn remove(&self, key: &str) -> bool {
        self.keys.remove(&BucketKey::parse(key)).is_some()
    }

    /// Forget every key; how many were known.
    pub fn clear(&self) -> usize {
        let known = self.keys.len();
        self.keys.clear();
        known
    }

    /// The keys seen, most recent first, at most `limit`.
    pub fn buckets(&self, limit: usize) -> Vec<Bucket> {
        let (epoch_now, born_now) = (epoch_ms(), self.born_ms());
        let mut all: Vec<Bucket> = self
            .keys
            .iter()
            .map(|e| Bucket {
                key: e.key().to_string(),
                remaining: e.remaining.load(Ordering::Relaxed),
                requests: e.requests.load(Ordering::Relaxed),
                blocked: e.blocked.load(Ordering::Relaxed),
                last_seen: epoch_now.saturating_sub(born_now.saturating_sub(e.last_seen.load(Ordering::Relaxed))),
            })
            .collect();
        all.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.key.cmp(&b.key)));
        all.truncate(limit);
        all
    }

    /// Milliseconds since the limiter was made.
    fn born_ms(&self) -> u64 {
        self.clock.now().duration_since(self.born).as_u64() / 1_000_000
    }

    /// Drop the keys idle for a whole window (their allowance is full again, so forgetting them
    /// changes no decision), at most once per [`SWEEP_EVERY`] (whichever request comes first
    /// does it). Returns [`Self::born_ms`] now.
    fn sweep(&self) -> u64 {
        let now = self.born_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64 {
            return now;
        }
        if self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let cutoff = now.saturating_sub(self.window.as_millis() as u64);
            self.keys.retain(|_, e| e.last_seen.load(Ordering::Relaxed) >= cutoff);
            self.keys.shrink_to_fit();
        }
        now
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Now, in epoch milliseconds.
pub fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: &str) -> BucketKey {
        BucketKey::Ip(a.parse().unwrap())
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
        // Another key has its own allowance.
        assert!(l.check(ip("10.0.0.2")).allowed);
        assert_eq!(l.tracked(), 2);
        let buckets = l.buckets(10);
        assert_eq!(buckets.len(), 2);
        let first = buckets.iter().find(|b| b.key == "ip:10.0.0.1").unwrap();
        assert_eq!((first.requests, first.blocked, first.remaining), (5, 2, 0));
        assert_eq!(l.buckets(1).len(), 1);
        assert!(l.remove("ip:10.0.0.1") && !l.remove("ip:10.0.0.1"));
        assert!(l.check(ip("10.0.0.1")).allowed, "a removed key starts over");
        assert_eq!(l.clear(), 2);
        assert_eq!((l.tracked(), l.buckets(10).len()), (0, 0));
    }

    #[test]
    fn a_window_too_short_for_the_count_is_refused() {
        assert!(Limiter::new(NonZeroU32::new(3).unwrap(), Duration::ZERO).is_none());
        assert!(Limiter::new(NonZeroU32::new(10).unwrap(), Duration::from_nanos(5)).is_none());
    }
}
