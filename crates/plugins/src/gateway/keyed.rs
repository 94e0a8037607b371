//! The rate limiter's keyed state: governor's GCRA state per key in a [`DashMap`] that marina
//! keeps a handle on, so that `/gateway/api` can forget one key (`DELETE
//! /rate-limit/buckets/:key`) or all of them (`POST /rate-limit/clear`).
//!
//! Why not governor's own store: `RateLimiter` owns its state and offers no way to remove a key
//! (only `retain_recent`, which drops keys whose bucket is full again). Implementing governor's
//! `StateStore` over a shared map is the extension point governor documents for other stores;
//! the per-key decision stays governor's GCRA, delegated unchanged to the `DashMap` store
//! governor ships ([`governor::state::keyed::DashMapStateStore`]).

use std::sync::Arc;

use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, StateStore};

/// The keys' hasher: std's SipHash with a random key. Keys are client addresses (an IPv6 /64
/// gives one client many), and this map is what a flood aims at, so it keeps the hasher made to
/// resist chosen collisions; foldhash was measured ~150 instructions per request cheaper but calls
/// itself only minimally DoS-resistant.
pub type KeyHasher = std::hash::RandomState;

/// Keyed GCRA state, shared between the limiter and the API that edits it.
#[derive(Clone, Default)]
pub struct SharedKeyedStore(Arc<DashMapStateStore<String, KeyHasher>>);

impl SharedKeyedStore {
    /// Forget `key`: its next request starts with a full bucket. True when it had state.
    pub fn remove(&self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    /// Forget every key; how many there were.
    pub fn clear(&self) -> usize {
        let n = self.0.len();
        self.0.clear();
        n
    }
}

impl StateStore for SharedKeyedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let map: &DashMap<String, InMemoryState, KeyHasher> = &self.0;
        map.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for SharedKeyedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::DefaultClock;
    use governor::{Quota, RateLimiter};

    use super::*;

    #[test]
    fn a_removed_key_starts_over_and_others_keep_their_state() {
        let store = SharedKeyedStore::default();
        let quota = Quota::per_hour(NonZeroU32::new(2).unwrap());
        let limiter =
            RateLimiter::<String, SharedKeyedStore, DefaultClock>::new(quota, store.clone(), DefaultClock::default());
        let (a, b) = ("ip:10.0.0.1".to_string(), "ip:10.0.0.2".to_string());
        for _ in 0..2 {
            assert!(limiter.check_key(&a).is_ok() && limiter.check_key(&b).is_ok());
        }
        assert!(limiter.check_key(&a).is_err() && limiter.check_key(&b).is_err());
        assert!(store.remove(&a));
        assert!(!store.remove(&a), "already gone");
        assert!(limiter.check_key(&a).is_ok(), "a full bucket again");
        assert!(limiter.check_key(&b).is_err(), "b untouched");
        assert_eq!(limiter.len(), 2);
        assert_eq!(store.clear(), 2);
        assert!(limiter.is_empty());
        assert!(limiter.check_key(&b).is_ok());
    }
}
