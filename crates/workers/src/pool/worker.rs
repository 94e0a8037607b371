//! One worker as the pool sees it: its phase, counters and clocks, around the backend's
//! [`Instance`] (which it gets once the backend has started it).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use marina_apps::App;
use marina_core::Error;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::stats::LatencyRing;
use crate::backend::{Backend, Event, Instance, StartSpec};
use crate::process::{clone_error, timing};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Dead = 3,
}

#[derive(Debug, Clone)]
pub(crate) enum Boot {
    Pending,
    Ready,
    Failed(Arc<Error>),
}

/// One running (or starting) worker.
pub(crate) struct Worker {
    pub id: String,
    pub app: Arc<App>,
    pub key: String,
    pub ephemeral: bool,
    pub created: Instant,
    instance: OnceLock<Arc<dyn Instance>>,
    /// Cancelled when marina stops the worker, so a start in progress gives up.
    cancel: CancellationToken,
    phase: AtomicU8,
    boot: watch::Sender<Boot>,
    exited: watch::Sender<bool>,
    pub in_flight: AtomicUsize,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Microseconds after `created` of the last request start or end (the sliding TTL clock).
    last_used_us: AtomicU64,
    pub idle_notified: AtomicBool,
    pub latency: Mutex<LatencyRing>,
    /// Set when marina asked it to stop, so its exit is not counted as a crash.
    expected_exit: AtomicBool,
    pub exit_status: Mutex<Option<String>>,
    pub drained: Notify,
    /// Last sampled memory, bytes (0 = not sampled yet).
    pub rss: AtomicU64,
    /// The highest sampled memory, bytes.
    pub peak: AtomicU64,
    /// Set when marina killed it for going over `maxMemory` (sampled, no memory cgroup).
    pub memory_killed: AtomicBool,
    pool: Weak<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).field("key", &self.key).field("pid", &self.pid()).finish()
    }
}

impl Worker {
    pub fn new(app: Arc<App>, ephemeral: bool, pool: Weak<Inner>) -> Arc<Self> {
        Arc::new(Self {
            key: app.key().to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            app,
            ephemeral,
            created: Instant::now(),
            instance: OnceLock::new(),
            cancel: CancellationToken::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            boot: watch::Sender::new(Boot::Pending),
            exited: watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_used_us: AtomicU64::new(0),
            idle_notified: AtomicBool::new(false),
            latency: Mutex::new(LatencyRing::new(100)),
            expected_exit: AtomicBool::new(false),
            exit_status: Mutex::new(None),
            drained: Notify::new(),
            rss: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            memory_killed: AtomicBool::new(false),
            pool,
        })
    }

    /// The started instance (none while starting or after a failed start).
    pub fn instance(&self) -> Option<&Arc<dyn Instance>> {
        self.instance.get()
    }

    /// The OS process id to show, for kinds that have one.
    pub fn pid(&self) -> Option<u32> {
        self.instance().and_then(|i| i.pid())
    }

    /// Memory in use now, as the backend measures it.
    pub fn memory(&self) -> Option<u64> {
        self.instance().and_then(|i| i.memory())
    }

    /// The highest memory use seen: the backend's own peak when it keeps one, else the highest
    /// sample.
    pub fn peak_memory(&self) -> Option<u64> {
        let sampled = self.peak.load(Ordering::Relaxed);
        let own = self.instance().and_then(|i| i.peak_memory()).unwrap_or(0);
        Some(sampled.max(own)).filter(|p| *p > 0)
    }

    /// Whether it was killed for going over `maxMemory`, by the kernel or by marina.
    pub fn over_memory(&self) -> bool {
        self.memory_killed.load(Ordering::SeqCst) || self.instance().is_some_and(|i| i.memory_killed())
    }

    /// Kills it for going over `maxMemory`: killed, not drained, because a worker over its
    /// limit must not grow further; the request in flight gets 502 `WORKER_MEMORY_LIMIT`.
    pub fn kill_for_memory(&self) {
        self.memory_killed.store(true, Ordering::SeqCst);
        self.kill();
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Dead,
        }
    }

    fn set_phase(&self, p: Phase) {
        // Dead is final; Draining only moves on to Dead.
        let _ = self.phase.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
            if cur == Phase::Dead as u8 || (cur == Phase::Draining as u8 && p != Phase::Dead) {
                None
            } else {
                Some(p as u8)
            }
        });
    }

    /// Whether marina asked this worker to stop (drain, kill, shutdown).
    fn stop_requested(&self) -> bool {
        self.expected_exit.load(Ordering::SeqCst)
    }

    fn request_stop(&self) {
        self.expected_exit.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Starting or ready: may take new requests.
    pub fn usable(&self) -> bool {
        matches!(self.phase(), Phase::Starting | Phase::Ready)
    }

    pub fn touch(&self) {
        let us = u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_used_us.store(us, Ordering::Release);
    }

    /// Time since the last request started or ended (or since start, if none).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_used_us.load(Ordering::Acquire));
        self.created.elapsed().saturating_sub(last)
    }

    /// Waits until the worker is ready, or returns why it never will be.
    pub async fn wait_ready(&self) -> Result<(), Error> {
        if self.phase() == Phase::Ready && self.instance.get().is_some() {
            return Ok(()); // the warm path: no channel involved
        }
        let mut rx = self.boot.subscribe();
        let state = rx.wait_for(|b| !matches!(b, Boot::Pending)).await.map(|b| b.clone());
        match state {
            Ok(Boot::Ready) => Ok(()),
            Ok(Boot::Failed(e)) => Err(clone_error(&e)),
            _ => Err(Error::internal(format!("worker {} of app '{}' vanished while starting", self.id, self.key))),
        }
    }

    /// Waits up to `limit` for the instance to exit; true when it has.
    pub async fn wait_exit(&self, limit: Duration) -> bool {
        let mut rx = self.exited.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|e| *e)).await.is_ok()
    }

    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// Stops the instance now (SIGKILL to a process group). The exit is expected, not a crash.
    pub fn kill(&self) {
        self.request_stop();
        self.set_phase(Phase::Dead);
        if let Some(i) = self.instance() {
            i.kill();
        }
    }

    /// Marks the worker as leaving: no new requests reach it.
    pub fn begin_drain(&self) -> bool {
        self.request_stop();
        let before = self.phase();
        self.set_phase(Phase::Draining);
        before != Phase::Draining && before != Phase::Dead
    }

    /// Waits until no request is in flight, or `limit` passes; true when drained.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.drained.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// The terminate event, then a graceful stop that becomes a kill after `grace`.
    pub async fn terminate(&self, grace: Duration) {
        self.request_stop();
        let begun = Instant::now();
        if self.phase() != Phase::Dead && !self.has_exited() {
            self.lifecycle(Event::Terminate).await;
        }
        let notified = begun.elapsed();
        self.stop(grace).await;
        tracing::debug!(
            target: timing::TARGET,
            app = %self.key, worker = %self.id,
            on_terminate_us = timing::us(notified),
            stop_us = timing::us(begun.elapsed() - notified),
            "worker stop steps"
        );
    }

    /// A graceful stop that becomes a kill after `grace` (no lifecycle event).
    pub async fn stop(&self, grace: Duration) {
        self.request_stop();
        if let Some(i) = self.instance() {
            i.clone().stop(grace).await;
        }
        self.set_phase(Phase::Dead);
    }

    /// Tells the instance about a lifecycle event (ignored while it starts).
    pub async fn lifecycle(&self, event: Event) {
        if self.phase() == Phase::Starting {
            return;
        }
        if let Some(i) = self.instance() {
            i.clone().event(event).await;
        }
    }

    /// Starts the instance through `backend` and waits for it to be ready. Run as its own task.
    pub async fn boot(self: Arc<Self>, backend: Arc<dyn Backend>) {
        let spec = StartSpec {
            app: self.app.clone(),
            worker_id: self.id.clone(),
            ephemeral: self.ephemeral,
            cancel: self.cancel.clone(),
        };
        match backend.start(spec).await {
            Ok(instance) => {
                let _ = self.instance.set(instance.clone());
                // Stopped (shutdown, eviction) while it was starting: whoever stopped us saw no
                // instance, so it is ours to kill. SeqCst pairs with `request_stop` then `instance()`.
                if self.stop_requested() {
                    instance.kill();
                }
                let this = self.clone();
                let mut exit = instance.exit();
                tokio::spawn(async move {
                    let status = match exit.wait_for(Option::is_some).await {
                        Ok(s) => s.clone().unwrap_or_default(),
                        Err(_) => "gone".to_string(),
                    };
                    *this.exit_status.lock() = Some(status);
                    this.set_phase(Phase::Dead);
                    if let Some(pool) = this.pool.upgrade() {
                        pool.on_exit(&this, !this.expected_exit.load(Ordering::Acquire));
                    }
                    this.exited.send_replace(true);
                });
                self.touch();
                self.set_phase(Phase::Ready);
                if let Some(pool) = self.pool.upgrade() {
                    pool.on_started(&self);
                }
                self.boot.send_replace(Boot::Ready);
            }
            Err(e) => {
                let stopped = self.stop_requested();
                tracing::warn!(app = %self.key, worker = %self.id, "worker did not start: {}", e.message());
                self.kill();
                if !stopped && let Some(pool) = self.pool.upgrade() {
                    pool.on_start_failed(&self, e.message());
                }
                self.boot.send_replace(Boot::Failed(Arc::new(e)));
                self.exited.send_replace(true);
                if let Some(pool) = self.pool.upgrade() {
                    pool.forget(&self);
                }
            }
        }
    }
}
