//! Live reload: an app version whose files changed gets fresh workers while the old ones keep
//! serving; the switch happens only once a new worker is ready.
//!
//! A reload starts `instances.min` workers of the new [`App`] beside the slot's current ones
//! (which keep taking every request). When the first is ready, a new slot holding the new
//! workers replaces the old one in the LRU, so new requests go to them, and the old workers are
//! retired: they drain (up to the app's `timeout`), get `onTerminate` and stop. When none
//! starts, the new workers are stopped, the old ones keep serving, and the failure is kept on the
//! slot (`reloadError` in `/api/workers`, `/api/apps`) until the next change retries.
//!
//! Two things trigger one: [`super::WorkerPool::reload`], called by the server when files of the
//! app version change on disk (code included: the `App` may be the same), and a request that
//! brings an `App` whose manifest or `.env` differs from the one the slot's workers run.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::select_ok;
use marina_apps::App;
use marina_core::Error;
use parking_lot::Mutex;

use super::worker::{Phase, Worker};
use super::{Inner, Slot, SlotState, WorkerPool};

/// A reload in progress: the app it switches to and the workers started for it.
pub(super) struct Reload {
    pub app: Arc<App>,
    pub workers: Vec<Arc<Worker>>,
    pub reason: String,
}

/// A reload whose workers did not start; the slot's old workers keep serving.
pub(super) struct FailedReload {
    pub app: Arc<App>,
    pub message: String,
    /// When its last worker was spawned: a worker of the same app spawned later read newer
    /// files, and its start says the failure is out of date.
    pub spawned: Instant,
}

impl Inner {
    /// The slot to serve `app` from. When `app` differs from what the slot's workers run (its
    /// manifest or `.env` changed), a reload to it begins, unless one is under way or the same
    /// content already failed to start (the next change retries).
    pub(super) fn current_slot(&self, slot: Arc<Slot>, app: &Arc<App>) -> Arc<Slot> {
        if Arc::ptr_eq(&slot.app, app) || slot.app.same_as(app) {
            return slot;
        }
        let settled = {
            let st = slot.st.lock();
            st.reload.as_ref().is_some_and(|r| r.app.same_as(app))
                || st.failed_reload.as_ref().is_some_and(|f| f.app.same_as(app))
        };
        if settled {
            return slot;
        }
        self.reload_slot(&slot, app.clone(), "its manifest or .env changed".into())
    }

    /// Reload `slot` to `app`. A slot with no live worker is simply replaced (the next request
    /// starts a worker of `app`); otherwise new workers start beside the old ones.
    pub(super) fn reload_slot(&self, slot: &Arc<Slot>, app: Arc<App>, reason: String) -> Arc<Slot> {
        let mut st = slot.st.lock();
        if let Some(previous) = st.reload.take() {
            for w in previous.workers {
                w.kill();
            }
        }
        if !st.workers.iter().any(|w| w.usable()) {
            drop(st);
            return self.replace_slot(slot, app, Vec::new()).unwrap_or_else(|| slot.clone());
        }
        let max = (app.config.instances.max as usize).max(1);
        let n = (app.config.instances.min as usize).clamp(1, max);
        let workers: Vec<Arc<Worker>> = (0..n).map(|_| self.spawn_worker(app.clone(), false)).collect();
        tracing::info!(
            app = %app.key(),
            "reloading ({reason}): starting {n} new worker(s); the current ones serve until one is ready"
        );
        st.failed_reload = None;
        st.reload = Some(Reload { app, workers: workers.clone(), reason });
        drop(st);
        let me = self.me.clone();
        let watched = slot.clone();
        tokio::spawn(async move {
            let starts = workers.iter().map(|w| Box::pin(w.wait_ready()));
            let result = select_ok(starts).await.map(|_| ());
            if let Some(inner) = me.upgrade() {
                inner.finish_reload(&watched, &workers[0], result);
            }
        });
        slot.clone()
    }

    /// A worker started: when it runs the app a failed reload tried, and was spawned after that
    /// reload's workers, the files it read load, so the failure is no longer news. (The slot
    /// may have grown by a worker under load, or replaced one, after an edit fixed the code and
    /// before the watcher's reload of that edit ran.)
    pub(crate) fn on_started(&self, worker: &Arc<Worker>) {
        if worker.ephemeral {
            return;
        }
        let Some(slot) = self.slots.lock().peek(&worker.key).cloned() else { return };
        let mut st = slot.st.lock();
        if st.failed_reload.as_ref().is_some_and(|f| worker.created > f.spawned && f.app.same_as(&worker.app)) {
            tracing::info!(app = %worker.key, worker = %worker.id, "a worker started after the failed reload: its error is cleared");
            st.failed_reload = None;
        }
    }

    /// The first new worker is ready (or none could start): switch, or keep the old workers.
    fn finish_reload(&self, slot: &Arc<Slot>, first: &Arc<Worker>, result: Result<(), Error>) {
        let mut st = slot.st.lock();
        // A newer reload (or an eviction) superseded this one.
        if !st.reload.as_ref().is_some_and(|r| Arc::ptr_eq(&r.workers[0], first)) {
            return;
        }
        let Some(reload) = st.reload.take() else { return };
        let key = reload.app.key();
        match result {
            Ok(()) => {
                let old: Vec<Arc<Worker>> =
                    std::mem::take(&mut st.workers).into_iter().chain(st.successor.take()).collect();
                drop(st);
                let fresh: Vec<Arc<Worker>> = reload.workers.into_iter().filter(|w| w.usable()).collect();
                if self.replace_slot(slot, reload.app.clone(), fresh.clone()).is_none() {
                    // Evicted meanwhile: the new workers have no slot to serve from.
                    for w in &fresh {
                        self.retire(w, None, "its app version left the pool during a reload");
                    }
                    return;
                }
                tracing::info!(app = %key, "reloaded ({}): new requests go to the new workers", reload.reason);
                for w in &old {
                    self.retire(w, None, &format!("replaced by a reload ({})", reload.reason));
                }
            }
            Err(e) => {
                let message = e.message().to_string();
                let spawned = reload.workers.iter().map(|w| w.created).max().unwrap_or_else(Instant::now);
                // Out of date already when a worker of the same app spawned later has started
                // (it read newer files); otherwise [`Inner::on_started`] clears it later.
                let outdated = reload.app.same_as(&slot.app)
                    && st.workers.iter().chain(&st.successor).any(|w| w.created > spawned && w.phase() == Phase::Ready);
                if !outdated {
                    st.failed_reload =
                        Some(FailedReload { app: reload.app.clone(), message: message.clone(), spawned });
                }
                drop(st);
                for w in &reload.workers {
                    w.kill();
                }
                tracing::warn!(
                    app = %key,
                    "reload failed ({}); the previous workers keep serving: {message}",
                    reload.reason
                );
            }
        }
    }

    /// Put a new slot for `app` holding `workers` where `old` is in the LRU, carrying the
    /// restart history over. `None` when `old` is no longer there (evicted or replaced).
    fn replace_slot(&self, old: &Arc<Slot>, app: Arc<App>, workers: Vec<Arc<Worker>>) -> Option<Arc<Slot>> {
        let key = app.key().to_string();
        let (restarts, last_reason) = {
            let st = old.st.lock();
            (st.restarts, st.last_reason.clone())
        };
        let fresh = Arc::new(Slot {
            app,
            st: Mutex::new(SlotState { workers, restarts, last_reason, ..SlotState::default() }),
        });
        let mut slots = self.slots.lock();
        match slots.peek(&key) {
            Some(s) if Arc::ptr_eq(s, old) => {
                slots.put(key, fresh.clone());
                Some(fresh)
            }
            _ => None,
        }
    }

    /// Whether `worker` was started by a reload that has not switched yet: its start failing is
    /// the reload's failure, not a crash of the app's running version.
    pub(super) fn is_reload_candidate(&self, st: &SlotState, worker: &Arc<Worker>) -> bool {
        st.reload.as_ref().is_some_and(|r| r.workers.iter().any(|w| Arc::ptr_eq(w, worker)))
    }
}

impl WorkerPool {
    /// `key` (`name@version`) was removed from disk: its workers take no new requests, finish
    /// the ones they have (up to the app's `timeout`), then stop; a reload under way is
    /// abandoned, spares are stopped and a shared (static, wasm) instance is dropped.
    pub fn retire_app(&self, key: &str, why: &str) {
        let inner = &self.inner;
        inner.shared.forget(key);
        inner.drop_spares(key);
        let Some(slot) = inner.slots.lock().peek(key).cloned() else { return };
        let (workers, successor) = {
            let mut st = slot.st.lock();
            if let Some(reload) = st.reload.take() {
                for w in reload.workers {
                    w.kill();
                }
            }
            (st.workers.clone(), st.successor.take())
        };
        for w in successor.iter().chain(workers.iter()) {
            inner.retire(w, None, why);
        }
    }
}
