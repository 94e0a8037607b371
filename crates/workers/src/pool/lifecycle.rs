//! The lifecycle of pooled workers: retiring (drain, `onTerminate`, stop), exits and crash
//! loops with back-off, the housekeeping tick (`ttl`, `idleTimeout`, `maxMemory`, forgetting
//! empty slots) and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Inner;
use super::worker::{Phase, Worker};
use crate::backend::Event;

/// How long a stopping worker has between SIGTERM and SIGKILL.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(2);
/// A worker that ran at least this long before crashing resets the crash-loop count.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// An app version with no worker for this long leaves the LRU.
const SLOT_FORGET_AFTER: Duration = Duration::from_secs(10);
/// The longest crash-loop back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Inner {
    /// Takes a worker out of service: no new requests, in-flight ones finish (up to the app's
    /// `timeout`), then `onTerminate` and stop. `restart` records a restart reason on its app.
    pub(super) fn retire(&self, worker: &Arc<Worker>, restart: Option<String>, why: &str) {
        if !worker.begin_drain() {
            return;
        }
        if let Some(slot) = self.slots.lock().peek(&worker.key).cloned() {
            let mut st = slot.st.lock();
            st.workers.retain(|w| !Arc::ptr_eq(w, worker));
            // A successor started for this worker takes its place now (ready or not).
            if let Some(next) = st.successor.take()
                && next.usable()
            {
                st.workers.push(next);
            }
            if let Some(reason) = restart {
                st.restarts += 1;
                st.last_reason = Some(reason);
            }
        }
        self.counters.retired.fetch_add(1, Ordering::Relaxed);
        tracing::info!(app = %worker.key, worker = %worker.id, "retiring worker: {why}");
        let w = worker.clone();
        tokio::spawn(async move {
            let limit = w.app.config.timeout;
            if !w.drain(limit).await {
                tracing::warn!(app = %w.key, worker = %w.id, "in-flight requests still running after {limit:?}; stopping anyway");
            }
            w.terminate(KILL_GRACE).await;
        });
    }

    pub(super) fn note_restart(&self, worker: &Worker, reason: &str) {
        if let Some(slot) = self.slots.lock().peek(&worker.key).cloned() {
            let mut st = slot.st.lock();
            st.restarts += 1;
            st.last_reason = Some(reason.to_string());
        }
    }

    /// Called by a worker's exit watcher. `unexpected` = marina did not ask it to stop.
    pub(crate) fn on_exit(&self, worker: &Arc<Worker>, unexpected: bool) {
        self.forget(worker);
        if worker.over_memory() {
            let limit = worker.app.config.max_memory.unwrap_or_default();
            let reason = format!("maxMemory: went over {limit} bytes and was killed");
            tracing::warn!(app = %worker.key, worker = %worker.id, "{reason}");
            self.note_restart(worker, &reason);
            return;
        }
        if !unexpected || worker.ephemeral {
            return;
        }
        let status = worker.exit_status.lock().clone().unwrap_or_default();
        tracing::warn!(app = %worker.key, worker = %worker.id, "worker crashed ({status})");
        self.record_crash(worker, &format!("crashed: {status}"));
    }

    /// Called when a worker could not start.
    pub(crate) fn on_start_failed(&self, worker: &Arc<Worker>, reason: &str) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        if !worker.ephemeral {
            self.record_crash(worker, &format!("start failed: {reason}"));
        }
    }

    pub(super) fn record_crash(&self, worker: &Arc<Worker>, reason: &str) {
        let Some(slot) = self.slots.lock().peek(&worker.key).cloned() else { return };
        let mut st = slot.st.lock();
        if self.is_reload_candidate(&st, worker) {
            return; // the reload reports it; the running version did not crash
        }
        st.workers.retain(|w| !Arc::ptr_eq(w, worker));
        st.restarts += 1;
        st.last_reason = Some(reason.to_string());
        st.crashes = if worker.created.elapsed() >= STABLE_AFTER { 1 } else { st.crashes + 1 };
        if st.crashes >= 2 {
            let exp = (st.crashes - 2).min(16);
            let delay = (Duration::from_millis(250) * 2u32.pow(exp)).min(MAX_BACKOFF);
            st.backoff_until = Some(Instant::now() + delay);
        }
    }

    pub(crate) fn forget(&self, worker: &Worker) {
        self.all.lock().remove(&worker.id);
    }

    pub(super) fn housekeeping(&self) {
        let workers: Vec<Arc<Worker>> = self.all.lock().values().cloned().collect();
        // RSS for /api/workers once a second; every tick for apps with a maxMemory.
        let sample_all = self.ticks.fetch_add(1, Ordering::Relaxed).is_multiple_of(4);
        for w in workers {
            if w.phase() != Phase::Ready {
                continue;
            }
            // Where the kernel enforces maxMemory (a memory cgroup), only sample for the stats.
            let enforced = w.instance().is_some_and(|i| i.memory_enforced());
            if (sample_all || (w.app.config.max_memory.is_some() && !enforced))
                && let Some(rss) = w.memory()
            {
                w.rss.store(rss, Ordering::Relaxed);
                w.peak.fetch_max(rss, Ordering::Relaxed);
                if let Some(max) = w.app.config.max_memory
                    && rss > max
                    && !enforced
                {
                    tracing::warn!(app = %w.key, worker = %w.id, "maxMemory: memory {rss} bytes above the limit of {max} bytes; killing the worker");
                    w.kill_for_memory();
                    continue;
                }
            }
            if w.ephemeral || w.in_flight.load(Ordering::Acquire) > 0 {
                continue;
            }
            let idle = w.idle_for();
            if idle >= w.app.config.ttl {
                self.retire(&w, None, "ttl expired");
            } else if idle >= w.app.config.idle_timeout && !w.idle_notified.swap(true, Ordering::AcqRel) {
                let w = w.clone();
                tokio::spawn(async move { w.lifecycle(Event::Idle).await });
            }
        }
        self.expire_spares();
        // Drop slots that stayed empty for a while (their restart history goes with them), so
        // apps nobody calls stop taking LRU room.
        let mut slots = self.slots.lock();
        let now = Instant::now();
        let empty: Vec<String> = slots
            .iter()
            .filter(|(_, s)| {
                let mut st = s.st.lock();
                if st.workers.iter().any(|w| w.usable()) || st.backoff_until.is_some_and(|t| t > now) {
                    st.empty_since = None;
                    return false;
                }
                now.duration_since(*st.empty_since.get_or_insert(now)) >= SLOT_FORGET_AFTER
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in empty {
            slots.pop(&k);
        }
    }

    pub(super) async fn shutdown(&self, budget: Duration) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            let mut rx = self.shutdown_done.subscribe();
            let _ = rx.wait_for(|d| *d).await;
            return;
        }
        let start = tokio::time::Instant::now();
        let deadline = start + budget;
        self.gate.close();
        let workers: Vec<Arc<Worker>> = self.all.lock().values().cloned().collect();
        tracing::info!(workers = workers.len(), budget_ms = budget.as_millis() as u64, "stopping workers");
        for w in &workers {
            w.begin_drain();
        }
        // In-flight requests finish first (at most half the budget), then every worker hears
        // `onTerminate` at once (bounded by the backend, and by what is left of the budget), and
        // only then is it stopped: SIGTERM, and SIGKILL when the budget runs out.
        let drains = futures_util::future::join_all(workers.iter().map(|w| w.drain(budget)));
        let _ = tokio::time::timeout_at(start + budget / 2, drains).await;
        let now = tokio::time::Instant::now();
        let notify = futures_util::future::join_all(workers.iter().map(|w| w.lifecycle(Event::Terminate)));
        let _ = tokio::time::timeout_at(now + deadline.saturating_duration_since(now) / 2, notify).await;
        let grace = deadline.saturating_duration_since(tokio::time::Instant::now()).min(KILL_GRACE);
        futures_util::future::join_all(workers.iter().map(|w| w.stop(grace))).await;
        for w in &workers {
            w.kill();
        }
        self.slots.lock().clear();
        self.all.lock().clear();
        self.shutdown_done.send_replace(true);
    }
}
