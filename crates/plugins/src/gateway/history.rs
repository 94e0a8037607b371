//! The gateway's metrics history (`GET/DELETE /gateway/api/metrics/history`): one snapshot per
//! second, `{timestamp, totalRequests, blockedRequests, allowedRequests, activeBuckets}`, the
//! last [`CAPACITY`] (an hour), newest first, as Buntime's.
//!
//! Kept in memory and, once the gateway's `init` attached it, in marina's database
//! ([`super::history_db`], per instance, written in batches), so it survives a restart as Buntime's
//! (kept in keyval) did. The counters sampled are the process's own and restart at zero, so
//! after a restart the history shows the previous run, a gap while marina was down, then the new
//! run from zero; the gap is not filled.
//!
//! Idle costs nothing: the sampler parks when a tick finds the counters unchanged, and the
//! first request after that wakes it ([`History::touch`], one atomic load on the request
//! path). Only the snapshots actually taken are kept (and stored); the seconds the sampler slept
//! through are filled in with the unchanged values when the history is read ([`walk`]), between
//! two snapshots of one run (one marina process) only.
//!
//! Clocks: the cadence is tokio's (monotonic); the wall clock only labels a snapshot. Snapshots
//! are ordered and written by their `seq`, so a wall clock stepped back changes the labels, never
//! what is sampled or stored (no seconds are filled in across a step back).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use marina_core::Error;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::history_db::{FLUSH_EVERY, HistoryDb};
use super::limit::epoch_ms;

/// Snapshots kept: an hour at one per second.
pub const CAPACITY: usize = 3600;

/// How often a snapshot is taken while requests arrive.
pub const EVERY: Duration = Duration::from_secs(1);

const STEP_MS: u64 = EVERY.as_millis() as u64;

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Epoch milliseconds (the wall clock: a label only).
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

/// A snapshot the sampler took, as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the instance's history: only grows (across restarts too).
    pub seq: u64,
    /// The marina process that took it: quiet seconds are filled in within one run only.
    pub run: u64,
    /// The counters.
    pub snap: Snapshot,
}

/// The history newest first, calling `emit` for at most `limit` snapshots: each entry, and
/// before the next older one (of the same run) the quiet seconds between them, filled in with
/// the older one's counts and labelled back from the newer one's time. Returns the index of the
/// oldest entry used (what lies before it is out of reach).
fn walk(entries: &VecDeque<Entry>, limit: usize, mut emit: impl FnMut(Snapshot)) -> usize {
    let mut n = 0;
    let mut oldest = entries.len();
    for i in (0..entries.len()).rev() {
        if n >= limit {
            break;
        }
        let e = entries[i];
        emit(e.snap);
        n += 1;
        oldest = i;
        let Some(older) = i.checked_sub(1).map(|j| entries[j]).filter(|o| o.run == e.run) else { continue };
        // A clock stepped back between them: no seconds to fill.
        let quiet = (e.snap.timestamp.saturating_sub(older.snap.timestamp) / STEP_MS).saturating_sub(1);
        let fill = quiet.min((limit - n) as u64);
        for k in 1..=fill {
            emit(Snapshot { timestamp: e.snap.timestamp - k * STEP_MS, ..older.snap });
        }
        if fill > 0 {
            n += fill as usize;
            oldest = i - 1;
        }
    }
    oldest
}

struct Ring {
    /// Snapshots taken (this run's and, after `attach`, earlier runs'), oldest first.
    entries: VecDeque<Entry>,
    /// This process's run.
    run: u64,
    /// Entries up to this `seq` are in the database.
    flushed: u64,
    /// Snapshots taken since the last write.
    unflushed: usize,
}

impl Default for Ring {
    fn default() -> Self {
        // Random, so two runs of one instance never share it (stored as a positive BIGINT).
        let run = uuid::Uuid::new_v4().as_u64_pair().0 >> 1;
        Self { entries: VecDeque::new(), run, flushed: 0, unflushed: 0 }
    }
}

/// The next snapshot's `seq`, for every history in this process: a plugin reload initialises
/// the new gateway (which loads the stored history) while the old one still samples and writes
/// until it is shut down, both as one instance. With a counter each, both numbered from the
/// same stored `seq` on and the database kept whichever row came first (`ON CONFLICT DO
/// NOTHING`): the new gateway's first snapshots were lost. Only grows; [`History::attach`]
/// raises it past what is stored.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

fn next_seq() -> u64 {
    NEXT_SEQ.fetch_add(1, Ordering::Relaxed)
}

impl Ring {
    /// Drop what [`walk`] can no longer reach.
    fn trim(&mut self) {
        let oldest = walk(&self.entries, CAPACITY, |_| {});
        self.entries.drain(..oldest);
    }
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

    /// The newest `limit` snapshots, newest first, one per second within a run ([`walk`]).
    pub fn newest(&self, limit: usize) -> Vec<Snapshot> {
        let ring = self.ring.lock();
        let mut out = Vec::with_capacity(limit.min(CAPACITY));
        walk(&ring.entries, limit.min(CAPACITY), |s| out.push(s));
        out
    }

    /// Load the stored history and keep storing it there.
    ///
    /// # Errors
    /// The database's.
    pub async fn attach(&self, db: HistoryDb) -> Result<(), Error> {
        // A marina.db this start created holds no history (and may still be being migrated).
        let (stored, last) = if db.store().is_new() { (Vec::new(), 0) } else { db.load(epoch_ms()).await? };
        {
            let mut ring = self.ring.lock();
            // What this process sampled before (none: `init` runs first) goes after.
            let own: Vec<Entry> = ring.entries.drain(..).collect();
            ring.entries = stored.into_iter().collect();
            ring.flushed = last;
            NEXT_SEQ.fetch_max(last + 1, Ordering::Relaxed);
            for e in own {
                ring.entries.push_back(Entry { seq: next_seq(), ..e });
            }
            ring.trim();
        }
        let _ = self.db.set(db);
        Ok(())
    }

    /// Write what is new to the database (when attached). A failure is logged; the snapshots
    /// stay in memory and go with the next write.
    pub async fn flush(&self) {
        let Some(db) = self.db.get() else { return };
        let _one = self.writing.lock().await;
        let (fresh, keep_from) = {
            let ring = self.ring.lock();
            let fresh: Vec<Entry> = ring.entries.iter().filter(|e| e.seq > ring.flushed).copied().collect();
            (fresh, ring.entries.front().map_or_else(|| NEXT_SEQ.load(Ordering::Relaxed), |e| e.seq))
        };
        let Some(newest) = fresh.last().map(|e| e.seq) else { return };
        match db.append(&fresh, keep_from, epoch_ms()).await {
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
            ring.entries.clear();
            ring.unflushed = 0;
        }
        match self.db.get() {
            Some(db) => db.clear().await,
            None => Ok(()),
        }
    }

    /// Keep `s` as this run's newest snapshot. Returns how many snapshots wait to be written.
    fn push(&self, s: Snapshot) -> usize {
        let mut ring = self.ring.lock();
        let run = ring.run;
        ring.entries.push_back(Entry { seq: next_seq(), run, snap: s });
        ring.unflushed += 1;
        ring.trim();
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
            let unchanged = h.ring.lock().entries.back().is_some_and(|last| last.snap.same_counts(&now));
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
#[path = "history_tests.rs"]
mod tests;
