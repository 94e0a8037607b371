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

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

struct Entry {
    identity: Arc<Identity>,
    exp: u64,
    checked: Instant,
    generation: u64,
}

/// The remembered tokens.
pub(super) struct Verified {
    map: Mutex<LruCache<String, Entry>>,
    max_age: Duration,
}

impl Verified {
    /// Tokens are trusted for `max_age` after their check (at most [`MAX_AGE`]).
    pub fn new(max_age: Duration) -> Self {
        Self {
            map: Mutex::new(LruCache::new(NonZeroUsize::new(CAPACITY).expect("non-zero"))),
            max_age: max_age.min(MAX_AGE),
        }
    }

    /// The identity of `token` if it verified within the max age at this key `generation` and
    /// its `exp` (with `leeway`) has not passed at `now` (seconds since the epoch).
    pub fn get(&self, token: &str, generation: u64, now: u64, leeway: u64) -> Option<Arc<Identity>> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let mut map = self.map.lock();
        let entry = map.get(token)?;
        if entry.generation == generation
            && now < entry.exp.saturating_add(leeway)
            && entry.checked.elapsed() < self.max_age
        {
            return Some(Arc::clone(&entry.identity));
        }
        map.pop(token);
        None
    }

    /// Remembers `token`, which just verified as `identity` (made from its claims).
    pub fn put(&self, token: &str, identity: &Arc<Identity>, generation: u64) {
        let Some(exp) = identity.claims.as_ref().and_then(|c| c.get("exp")).and_then(Value::as_u64) else {
            return;
        };
        if token.len() > MAX_TOKEN || self.max_age.is_zero() {
            return;
        }
        let entry = Entry { identity: Arc::clone(identity), exp, checked: Instant::now(), generation };
        self.map.lock().put(token.to_string(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(claims: Value) -> Arc<Identity> {
        Arc::new(Identity::from_claims(claims))
    }

    #[test]
    fn a_remembered_token_is_used_until_exp_or_new_keys() {
        let v = Verified::new(MAX_AGE);
        let claims = id(json!({ "sub": "a", "exp": 1_000 }));
        assert_eq!(v.get("t", 0, 900, 0), None);
        v.put("t", &claims, 0);
        assert_eq!(v.get("t", 0, 901, 0), Some(claims.clone()));
        assert!(Arc::ptr_eq(&v.get("t", 0, 901, 0).unwrap(), &claims), "a hit shares the identity");
        // past exp (no leeway), or within the leeway
        assert_eq!(v.get("t", 0, 1_000, 0), None);
        v.put("t", &claims, 0);
        assert_eq!(v.get("t", 0, 1_005, 10), Some(claims.clone()));
        assert_eq!(v.get("t", 0, 1_010, 10), None);
        // other keys since
        v.put("k", &claims, 3);
        assert_eq!(v.get("k", 4, 901, 0), None);
        assert_eq!(v.get("k", 3, 901, 0), None, "a miss forgets the entry");
    }

    #[test]
    fn the_max_age_bounds_the_trust() {
        let claims = id(json!({ "exp": 100_000 }));
        let never = Verified::new(Duration::ZERO);
        never.put("t", &claims, 0);
        assert_eq!(never.get("t", 0, 1, 0), None);
        let short = Verified::new(Duration::from_millis(30));
        short.put("t", &claims, 0);
        assert_eq!(short.get("t", 0, 1, 0), Some(claims.clone()));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(short.get("t", 0, 1, 0), None);
        assert_eq!(Verified::new(Duration::from_secs(3600)).max_age, MAX_AGE);
    }

    #[test]
    fn tokens_without_exp_or_too_long_are_not_remembered_and_the_map_is_bounded() {
        let v = Verified::new(MAX_AGE);
        v.put("n", &id(json!({ "sub": "a" })), 0);
        assert_eq!(v.get("n", 0, 2, 0), None);
        let long = "x".repeat(MAX_TOKEN + 1);
        v.put(&long, &id(json!({ "exp": 10 })), 0);
        assert_eq!(v.get(&long, 0, 2, 0), None);
        for i in 0..CAPACITY + 10 {
            v.put(&format!("t{i}"), &id(json!({ "exp": 10 })), 0);
        }
        assert_eq!(v.map.lock().len(), CAPACITY);
        assert_eq!(v.get("t0", 0, 2, 0), None, "the least recently used went first");
        assert!(v.get(&format!("t{}", CAPACITY + 9), 0, 2, 0).is_some());
    }
}
