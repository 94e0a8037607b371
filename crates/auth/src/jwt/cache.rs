//! Tokens that verified, remembered so that a client's next request with the same token skips
//! the decoding and the signature check.
//!
//! What keeps this safe:
//! - only a token that passed every check is remembered, with the identity its claims made
//!   (shared: a hit costs a reference count, not a copy of the claims);
//! - a remembered token is used only while its `exp` (plus the leeway) has not passed, and at
//!   most [`MAX_AGE`] after it was checked — never longer than the JWKS keys are cached
//!   (`RUNTIME_JWT_JWKS_CACHE_TTL`), so a refetch happens when it would without this map —:
//!   then it is checked again in full, so an expired token still gets its own `TOKEN_EXPIRED`
//!   answer;
//! - it is tied to the JWKS fetch count it was checked at, so new keys (a rotation, a key
//!   withdrawn by the provider) take effect at once;
//! - the map is bounded ([`CAPACITY`] tokens of at most [`MAX_TOKEN`] bytes, least recently
//!   used first out), so a flood of distinct valid tokens cannot grow marina's memory.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use serde_json::Value;

use crate::identity::Identity;

/// Tokens remembered at most.
const CAPACITY: usize = 4096;
/// Longer tokens are always checked in full (and never held in memory).
const MAX_TOKEN: usize = 4096;
/// How long a remembered token is trusted before it is checked again, at most.
pub(super) const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Entry {
    identity: Arc<Identity>,
    exp: u64,
    /// When it was checked, since the epoch: the same clock reading as `exp` is compared with,
    /// so a hit costs one clock read (a monotonic `Instant` beside it was a second).
    checked: Duration,
    generation: u64,
}

impl Entry {
    /// Whether it may still be used (see [`Verified::get`]).
    fn fresh(&self, generation: u64, now: Duration, leeway: u64, max_age: Duration) -> bool {
        self.generation == generation
            && now.as_secs() < self.exp.saturating_add(leeway)
            && now.checked_sub(self.checked).is_some_and(|age| age < max_age)
    }
}

/// The remembered tokens.
pub(super) struct Verified {
    /// Tells this map's entries in a thread's [`RECENT`] from another verifier's.
    id: u64,
    map: Mutex<LruCache<String, Entry>>,
    max_age: Duration,
}

/// A thread's last hit, in front of the shared map: a client sends the same token request after
/// request, and its requests run on a few threads. Looking here takes no lock and hashes
/// nothing (one comparison of the token); the shared map's `get` takes its one lock (it moves
/// the entry up the LRU order) and hashes the token. callgrind, the `bench/gateway.sh` set-up:
/// ~180 instructions per request less on a hit (the map's look-up ~270, this slot ~90). A miss costs a length-and-bytes comparison and,
/// once the shared map hit, copying the token into this slot's buffer (no allocation once the
/// buffer is long enough). The entry obeys the same rules as the map's (key generation, `exp`,
/// max age), so it is never trusted longer than the map would trust it.
struct Recent {
    owner: u64,
    token: String,
    entry: Entry,
}

thread_local! {
    static RECENT: RefCell<Option<Recent>> = const { RefCell::new(None) };
}

/// Ids of [`Verified`] maps.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Verified {
    /// Tokens are trusted for `max_age` after their check (at most [`MAX_AGE`]).
    pub fn new(max_age: Duration) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            map: Mutex::new(LruCache::new(NonZeroUsize::new(CAPACITY).expect("non-zero"))),
            max_age: max_age.min(MAX_AGE),
        }
    }

    /// The identity of `token` if it verified within the max age at this key `generation` and
    /// its `exp` (with `leeway`, in seconds) has not passed at `now` (since the epoch). A clock
    /// that went back since the check (`now` before it) trusts nothing: the token is checked again.
    ///
    /// The token as bytes (the `Authorization` header's): a thread's last hit is compared
    /// without first checking the bytes are text, which only the shared map needs.
    pub fn get(&self, token: &[u8], generation: u64, now: Duration, leeway: u64) -> Option<Arc<Identity>> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let recent = RECENT.with_borrow(|recent| match recent {
            Some(r) if r.owner == self.id && r.token.as_bytes() == token => {
                Some(r.entry.fresh(generation, now, leeway, self.max_age).then(|| Arc::clone(&r.entry.identity)))
            }
            _ => None,
        });
        match recent {
            Some(Some(identity)) => return Some(identity),
            // Stale: the shared map decides (and forgets it) below.
            Some(None) => RECENT.with_borrow_mut(|recent| *recent = None),
            None => {}
        }
        let token = std::str::from_utf8(token).ok()?;
        let mut map = self.map.lock();
        let entry = map.get(token)?;
        if entry.fresh(generation, now, leeway, self.max_age) {
            let entry = entry.clone();
            drop(map);
            let identity = Arc::clone(&entry.identity);
            RECENT.with_borrow_mut(|recent| match recent {
                Some(r) => {
                    r.owner = self.id;
                    r.token.clear();
                    r.token.push_str(token);
                    r.entry = entry;
                }
                None => *recent = Some(Recent { owner: self.id, token: token.to_owned(), entry }),
            });
            return Some(identity);
        }
        map.pop(token);
        None
    }

    /// Remembers `token`, which just verified as `identity` (made from its claims) at `now`
    /// (since the epoch).
    pub fn put(&self, token: &str, identity: &Arc<Identity>, generation: u64, now: Duration) {
        let Some(exp) = identity.claims.as_ref().and_then(|c| c.get("exp")).and_then(Value::as_u64) else {
            return;
        };
        if token.len() > MAX_TOKEN || self.max_age.is_zero() {
            return;
        }
        let entry = Entry { identity: Arc::clone(identity), exp, checked: now, generation };
        self.map.lock().put(token.to_string(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn id(claims: Value) -> Arc<Identity> {
        Arc::new(Identity::from_claims(claims))
    }

    #[test]
    fn a_remembered_token_is_used_until_exp_or_new_keys() {
        let v = Verified::new(MAX_AGE);
        let claims = id(json!({ "sub": "a", "exp": 1_000 }));
        assert_eq!(v.get(b"t", 0, secs(900), 0), None);
        v.put("t", &claims, 0, secs(900));
        assert_eq!(v.get(b"t", 0, secs(901), 0), Some(claims.clone()));
        assert!(Arc::ptr_eq(&v.get(b"t", 0, secs(901), 0).unwrap(), &claims), "a hit shares the identity");
        // past exp (no leeway), or within the leeway
        assert_eq!(v.get(b"t", 0, secs(1_000), 0), None);
        v.put("t", &claims, 0, secs(1_000));
        assert_eq!(v.get(b"t", 0, secs(1_005), 10), Some(claims.clone()));
        assert_eq!(v.get(b"t", 0, secs(1_010), 10), None);
        // other keys since
        v.put("k", &claims, 3, secs(900));
        assert_eq!(v.get(b"k", 4, secs(901), 0), None);
        assert_eq!(v.get(b"k", 3, secs(901), 0), None, "a miss forgets the entry");
    }

    #[test]
    fn a_threads_last_hit_is_one_verifiers_and_follows_its_rules() {
        let claims = id(json!({ "sub": "a", "exp": 1_000 }));
        let (v, other) = (Verified::new(MAX_AGE), Verified::new(MAX_AGE));
        v.put("t", &claims, 0, secs(900));
        assert_eq!(v.get(b"t", 0, secs(901), 0), Some(claims.clone()), "from the map, now this thread's last hit");
        assert_eq!(other.get(b"t", 0, secs(901), 0), None, "another verifier never sees it");
        assert_eq!(v.get(b"t", 0, secs(902), 0), Some(claims.clone()));
        assert_eq!(v.get(b"t", 1, secs(902), 0), None, "new keys: checked again");
        assert_eq!(v.get(b"t", 0, secs(902), 0), None, "and forgotten");
        v.put("t", &claims, 0, secs(900));
        assert!(v.get(b"t", 0, secs(901), 0).is_some());
        assert_eq!(v.get(b"t", 0, secs(961), 0), None, "past the max age");
        v.put("t", &claims, 0, secs(990));
        assert!(v.get(b"t", 0, secs(991), 0).is_some());
        assert_eq!(v.get(b"t", 0, secs(1_000), 0), None, "past exp");
        // On another thread the map answers.
        v.put("u", &claims, 0, secs(900));
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(v.get(b"u", 0, secs(901), 0), Some(claims.clone())));
        });
    }

    #[test]
    fn the_max_age_bounds_the_trust() {
        let claims = id(json!({ "exp": 100_000 }));
        let never = Verified::new(Duration::ZERO);
        never.put("t", &claims, 0, secs(0));
        assert_eq!(never.get(b"t", 0, secs(1), 0), None);
        let short = Verified::new(Duration::from_millis(30));
        let at = |ms: u64| Duration::from_millis(1_000 + ms);
        short.put("t", &claims, 0, at(0));
        assert_eq!(short.get(b"t", 0, at(29), 0), Some(claims.clone()));
        assert_eq!(short.get(b"t", 0, at(30), 0), None, "30 ms after the check");
        short.put("t", &claims, 0, at(0));
        assert_eq!(short.get(b"t", 0, Duration::from_millis(999), 0), None, "the clock went back: check again");
        assert_eq!(Verified::new(Duration::from_secs(3600)).max_age, MAX_AGE);
    }

    #[test]
    fn tokens_without_exp_or_too_long_are_not_remembered_and_the_map_is_bounded() {
        let v = Verified::new(MAX_AGE);
        v.put("n", &id(json!({ "sub": "a" })), 0, secs(0));
        assert_eq!(v.get(b"n", 0, secs(2), 0), None);
        let long = "x".repeat(MAX_TOKEN + 1);
        v.put(&long, &id(json!({ "exp": 10 })), 0, secs(0));
        assert_eq!(v.get(long.as_bytes(), 0, secs(2), 0), None);
        for i in 0..CAPACITY + 10 {
            v.put(&format!("t{i}"), &id(json!({ "exp": 10 })), 0, secs(0));
        }
        assert_eq!(v.map.lock().len(), CAPACITY);
        assert_eq!(v.get(b"t0", 0, secs(2), 0), None, "the least recently used went first");
        assert!(v.get(format!("t{}", CAPACITY + 9).as_bytes(), 0, secs(2), 0).is_some());
    }
}
