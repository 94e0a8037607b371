//! Slots and picking: each app version's workers (an LRU of slots bounded by
//! `RUNTIME_POOL_SIZE`), choosing the least busy one or starting another within `instances`,
//! and the early successor of a worker about to reach `maxRequests`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use marina_apps::App;
use marina_core::Error;
use parking_lot::Mutex;
use serde_json::json;

use super::worker::Worker;
use super::{Inner, reload};

/// A worker expected to reach `maxRequests` within this time gets its successor started early.
const SUCCESSOR_HORIZON: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct SlotState {
    pub(super) workers: Vec<Arc<Worker>>,
    pub(super) crashes: u32,
    pub(super) backoff_until: Option<Instant>,
    pub(super) restarts: u64,
    pub(super) last_reason: Option<String>,
    /// When housekeeping first saw the slot with no worker.
    pub(super) empty_since: Option<Instant>,
    /// A worker started ahead of a busy worker's `maxRequests` recycle: it joins `workers` once
    /// it is ready, or when the worker it replaces retires, whichever comes first.
    pub(super) successor: Option<Arc<Worker>>,
    /// A live reload under way (see [`reload`]).
    pub(super) reload: Option<reload::Reload>,
    /// The last reload that could not start; the old workers kept serving.
    pub(super) failed_reload: Option<reload::FailedReload>,
}

/// The workers of one app version, and its crash history.
pub(super) struct Slot {
    pub(super) app: Arc<App>,
    pub(super) st: Mutex<SlotState>,
}

impl Inner {
    pub(super) fn slot_for(&self, app: &Arc<App>) -> Arc<Slot> {
        let key = app.key();
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        let slot = Arc::new(Slot { app: app.clone(), st: Mutex::new(SlotState::default()) });
        let evicted = slots.push(key.to_string(), slot.clone());
        drop(slots);
        if let Some((old_key, old)) = evicted {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            let (workers, successor, reloading) = {
                let mut st = old.st.lock();
                let reloading = st.reload.take().map(|r| r.workers).unwrap_or_default();
                (std::mem::take(&mut st.workers), st.successor.take(), reloading)
            };
            for w in workers.into_iter().chain(successor).chain(reloading) {
                self.retire(
                    &w,
                    None,
                    &format!("evicted from the pool (RUNTIME_POOL_SIZE {}) for {}", self.opts.pool_size, old_key),
                );
            }
        }
        slot
    }

    /// Picks the least busy usable worker, starting one when there is none or all are busy and
    /// `instances.max` allows another. Returns whether it was a warm hit.
    pub(super) fn pick(&self, slot: &Arc<Slot>) -> Result<(Arc<Worker>, bool), Error> {
        let app = &slot.app;
        let mut st = slot.st.lock();
        st.workers.retain(|w| w.usable());
        if let Some(until) = st.backoff_until {
            let now = Instant::now();
            if now < until {
                let retry = until - now;
                return Err(Error::unavailable(
                    "WORKER_CRASHLOOP",
                    format!(
                        "app '{}' crashed {} times in a row; the next start is in {} ms (last: {})",
                        app.key(),
                        st.crashes,
                        retry.as_millis(),
                        st.last_reason.as_deref().unwrap_or("unknown")
                    ),
                )
                .with_data(json!({
                    "app": app.key(),
                    "crashes": st.crashes,
                    "retryAfterMs": retry.as_millis() as u64,
                    "lastReason": st.last_reason,
                })));
            }
            st.backoff_until = None;
        }
        let max = (app.config.instances.max as usize).max(1);
        let min = (app.config.instances.min as usize).clamp(1, max);
        let best = st.workers.iter().min_by_key(|w| w.in_flight.load(Ordering::Acquire)).cloned();
        let picked = match best {
            Some(w) if w.in_flight.load(Ordering::Acquire) == 0 || st.workers.len() >= max => (w, true),
            _ => {
                let w = self.spawn_worker(app.clone(), false);
                st.workers.push(w.clone());
                (w, false)
            }
        };
        while st.workers.len() < min {
            let w = self.spawn_worker(app.clone(), false);
            st.workers.push(w);
        }
        Ok(picked)
    }

    pub(super) fn spawn_worker(&self, app: Arc<App>, ephemeral: bool) -> Arc<Worker> {
        let w = Worker::new(app, ephemeral, self.me.clone());
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        self.all.lock().insert(w.id.clone(), w.clone());
        match self.backend(&w.app) {
            Ok(backend) => {
                tokio::spawn(w.clone().boot(backend));
            }
            // Unreachable through `dispatch`, which looked the backend up first.
            Err(e) => tracing::error!("{}", e.message()),
        }
        w
    }

    /// Halfway to `maxRequests`, a worker that is getting there quickly (within
    /// [`SUCCESSOR_HORIZON`] at its rate so far) gets its replacement started now, so that the
    /// recycle does not make requests wait for a cold start. The successor takes no requests
    /// until it is ready or the worker it replaces retires.
    pub(super) fn start_successor(&self, worker: &Arc<Worker>) {
        let n = worker.requests.load(Ordering::Relaxed).max(1);
        let left = worker.app.config.max_requests.saturating_sub(n);
        if worker.created.elapsed().as_secs_f64() * left as f64 / n as f64 > SUCCESSOR_HORIZON.as_secs_f64() {
            return;
        }
        let Some(slot) = self.slots.lock().peek(&worker.key).cloned() else { return };
        let successor = {
            let mut st = slot.st.lock();
            if st.successor.is_some() || !st.workers.iter().any(|w| Arc::ptr_eq(w, worker)) {
                return;
            }
            let w = self.spawn_worker(slot.app.clone(), false);
            st.successor = Some(w.clone());
            w
        };
        tokio::spawn(async move {
            let ready = successor.wait_ready().await.is_ok();
            let mut st = slot.st.lock();
            if st.successor.as_ref().is_some_and(|s| Arc::ptr_eq(s, &successor)) {
                st.successor = None;
                if ready && successor.usable() {
                    st.workers.push(successor);
                }
            }
        });
    }
}
