//! The gateway's metrics history (`GET/DELETE /gateway/api/metrics/history`): one snapshot per
//! second, `{timestamp, totalRequests, blockedRequests, allowedRequests, activeBuckets}`, the
//! last [`CAPACITY`] kept (an hour), as Buntime's.
//!
//! Kept in memory and, once the gateway's `init` attached it, in marina's database
//! ([`super::history_db`], per instance, written in batches), so it survives a restart as Buntime's
//! (kept in keyval) did. The counters sampled are the process's own and restart at zero, so
//! after a restart the history shows the previous run, a gap while marina was down, then the new
//! run from zero; the gap is not filled.
//!
//! Idle costs nothing: the sampler parks when a tick finds the counters unchanged, and the
//! first request after that wakes it ([`History::touch`], one atomic load on the request
//! path); the seconds it slept through are filled with the unchanged values then, so the
//! history still has one snapshot per second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use marina_core::Error;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::history_db::{FLUSH_EVERY, HistoryDb};

/// Snapshots kept: an hour at one per second.
pub const CAPACITY: usize = 3600;

/// How often a snapshot is taken while requests arrive.
pub const EVERY: Duration = Duration::from_secs(1);

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Epoch milliseconds.
    pub timestamp: u64,
    /// Requests the gateway saw.
    pub total_requests: u64,
    /// Of those, refused by a rate limit.
    pub blocked_requests: u64,
    /// Of those, let through.
    pub allowed_requests: u64,
    /// Keys with rate-limit state.
    pub active_buckets: u64,
}

impl Snapshot {
    fn same_counts(&self, other: &Snapshot) -> bool {
        (self.total_requests, self.blocked_requests, self.allowed_requests, self.active_buckets)
            == (other.total_requests, other.blocked_requests, other.allowed_requests, other.active_buckets)
    }
}

#[derive(Default)]
struct Ring {
    snaps: VecDeque<Snapshot>,
    /// Whether the newest snapshot is this process's (quiet seconds after it are filled in);
    /// false after loading a previous run's.
    own: bool,
    /// The newest snapshot stored in the database.
    flushed: u64,
    /// Snapshots taken since the last write.
    unflushed: usize,
}

/// The ring, the sampler's wake-up, and where it is stored.
#[derive(Default)]
pub struct History {
    ring: Mutex<Ring>,
    parked: AtomicBool,
    wake: Arc<Notify>,
    db: OnceLock<HistoryDb>,
    /// One database write at a time (a flush, a clear), so a clear is never undone by a flush.
    writing: tokio::sync::Mutex<()>,
}

impl History {
    /// Called on every request after its counters moved: wakes a parked sampler. `SeqCst`
    /// pairs with the sampler's store of `parked` and re-read of the counters, so a request
    /// is either seen by that re-read or sees `parked` (never neither).
    #[inline]
    pub fn touch(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// The newest `limit` snapshots, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Snapshot> {
        self.ring.lock().snaps.iter().rev().take(limit).copied().collect()
    }

    /// Load the stored history and keep storing it there.
    ///
    /// # Errors
    /// The database's.
    pub async fn attach(&self, db: HistoryDb) -> Result<(), Error> {
        let stored = db.load().await?;
        {
            let mut ring = self.ring.lock();
            let flushed = stored.last().map_or(0, |s| s.timestamp);
            ring.flushed = flushed;
            // What this process sampled before (none: `init` runs first) goes after.
            let own: Vec<Snapshot> = ring.snaps.drain(..).filter(|s| s.timestamp > flushed).collect();
            ring.snaps = stored.into_iter().chain(own).collect();
            ring.own = false;
        }
        let _ = self.db.set(db);
        Ok(())
    }

    /// Write what is new to the database (when attached). A failure is logged; the snapshots
    /// stay in memory and go with the next write.
    pub async fn flush(&self) {
        let Some(db) = self.db.get() else { return };
        let _one = self.writing.lock().await;
        let fresh: Vec<Snapshot> = {
            let ring = self.ring.lock();
            ring.snaps.iter().filter(|s| s.timestamp > ring.flushed).copied().collect()
        };
        let Some(newest) = fresh.last().map(|s| s.timestamp) else { return };
        match db.append(&fresh).await {
            Ok(()) => {
                let mut ring = self.ring.lock();
                ring.flushed = ring.flushed.max(newest);
                ring.unflushed = 0;
            }
            Err(e) => {
                // Retried with the next batch, not every second.
                self.ring.lock().unflushed = 0;
                tracing::warn!(error = %e, "the gateway's metrics history could not be stored; kept in memory");
            }
        }
    }

    /// Forget every snapshot, stored ones included.
    ///
    /// # Errors
    /// The database's (memory is cleared all the same).
    pub async fn clear(&self) -> Result<(), Error> {
        let _one = self.writing.lock().await;
        {
            let mut ring = self.ring.lock();
            ring.snaps.clear();
            ring.unflushed = 0;
        }
        match self.db.get() {
            Some(db) => db.clear().await,
            None => Ok(()),
        }
    }

    /// Keep `s`; when the previous snapshot (this process's) is more than a second older, the
    /// seconds between (slept through while nothing changed) are filled with its values first.
    /// Returns how many snapshots wait to be written.
    fn push(&self, s: Snapshot) -> usize {
        let mut ring = self.ring.lock();
        if let Some(last) = ring.snaps.back().copied().filter(|_| ring.own) {
            let step = EVERY.as_millis() as u64;
            let gap = s.timestamp.saturating_sub(last.timestamp) / step;
            // Only the last CAPACITY seconds can remain anyway.
            let fill = gap.saturating_sub(1).min(CAPACITY as u64);
            let first = s.timestamp.saturating_sub(fill * step);
            for i in 0..fill {
                ring.snaps.push_back(Snapshot { timestamp: first + i * step, ..last });
            }
            ring.unflushed += fill as usize;
        }
        ring.snaps.push_back(s);
        ring.own = true;
        ring.unflushed += 1;
        while ring.snaps.len() > CAPACITY {
            ring.snaps.pop_front();
        }
        ring.unflushed
    }

    /// Sample `take` every [`EVERY`] until `stop` is cancelled or the owner (`owner`) is gone,
    /// parking while nothing changes.
    pub async fn run<T, F>(owner: Weak<T>, history: impl Fn(&T) -> &History, take: F, stop: CancellationToken)
    where
        F: Fn(&T) -> Snapshot,
    {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let Some(owner) = owner.upgrade() else { return };
            let h = history(&owner);
            let now = take(&owner);
            let unchanged = h.ring.lock().snaps.back().is_some_and(|last| last.same_counts(&now));
            if h.push(now) >= FLUSH_EVERY || unchanged {
                // Before parking, so an idle gateway has everything stored.
                h.flush().await;
            }
            if !unchanged {
                continue;
            }
            h.parked.store(true, Ordering::SeqCst);
            // A request that moved the counters before `parked` was set is seen here.
            if !take(&owner).same_counts(&now) {
                h.parked.store(false, Ordering::SeqCst);
                continue;
            }
            // The owner is not kept alive while parked (its drop cancels `stop`).
            let wake = h.wake.clone();
            drop(owner);
            tokio::select! {
                () = wake.notified() => {}
                () = stop.cancelled() => return,
            }
            tick.reset_immediately();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::limit::epoch_ms;

    fn snap(ts: u64, total: u64) -> Snapshot {
        Snapshot {
            timestamp: ts,
            total_requests: total,
            blocked_requests: 0,
            allowed_requests: total,
            active_buckets: 1,
        }
    }

    #[test]
    fn gaps_are_filled_and_the_ring_is_capped() {
        let h = History::default();
        h.push(snap(1_000, 1));
        assert_eq!(h.push(snap(4_500, 2)), 4, "3 seconds filled, 1 new, none written");
        let got = h.newest(10);
        assert_eq!(
            got.iter().map(|s| (s.timestamp, s.total_requests)).collect::<Vec<_>>(),
            [(4_500, 2), (3_500, 1), (2_500, 1), (1_000, 1)]
        );
        // Days of silence fill at most the capacity.
        h.push(snap(10_000_000, 3));
        assert_eq!(h.newest(usize::MAX).len(), CAPACITY);
        assert_eq!(h.newest(1)[0].total_requests, 3);
    }

    #[tokio::test]
    async fn cleared_and_no_gap_filled_after_a_previous_run() {
        let h = History::default();
        h.push(snap(1_000, 1));
        h.clear().await.unwrap();
        assert!(h.newest(5).is_empty());
        // A previous run's snapshot (as `attach` leaves it): the downtime is not filled.
        h.ring.lock().snaps.push_back(snap(1_000, 9));
        h.ring.lock().own = false;
        h.push(snap(9_000, 0));
        assert_eq!(h.newest(5).iter().map(|s| s.timestamp).collect::<Vec<_>>(), [9_000, 1_000]);
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_sampler_parks_when_idle_and_a_touch_wakes_it() {
        struct Owner {
            h: History,
            n: std::sync::atomic::AtomicU64,
        }
        let owner = Arc::new(Owner { h: History::default(), n: 0.into() });
        let take = |o: &Owner| Snapshot { timestamp: epoch_ms(), ..snap(0, o.n.load(Ordering::SeqCst)) };
        let stop = CancellationToken::new();
        let task = tokio::spawn(History::run(Arc::downgrade(&owner), |o: &Owner| &o.h, take, stop.clone()));
        // The first tick samples at once; the second finds nothing changed and parks.
        until("the sampler to park", || owner.h.parked.load(Ordering::SeqCst)).await;
        let before = owner.h.newest(100).len();
        assert_eq!(before, 2);
        // Parked: no tick runs (a wait for something that must not happen has to be a wait).
        tokio::time::sleep(EVERY * 2).await;
        assert_eq!(owner.h.newest(100).len(), before, "parked: nothing sampled");
        owner.n.store(5, Ordering::SeqCst);
        owner.h.touch();
        until("a sample after the touch", || owner.h.newest(1)[0].total_requests == 5).await;
        // The seconds slept through were filled with the unchanged values.
        let all = owner.h.newest(100);
        assert!(all.len() >= 4, "{all:?}");
        assert!(all[1..].iter().all(|s| s.total_requests == 0));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the sampler stops").unwrap();
    }
}
