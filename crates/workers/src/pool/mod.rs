//! The worker pool: the lifecycle policy, the same for every kind.
//!
//! Each app version (`name@version`) gets a *slot* holding its workers (1 by default,
//! `instances` in the manifest). Slots live in an LRU bounded by `RUNTIME_POOL_SIZE`; `ttl: 0`
//! apps bypass it and get a fresh worker per request behind the ephemeral gate. A housekeeping
//! task (every 250 ms) applies the sliding `ttl`, `idleTimeout` (`onIdle`) and `maxMemory`.
//! Workers are started, called and stopped through the backend seam ([`crate::backend`]); the
//! kind of an app only picks its backend. Kinds with [`Policy::Shared`] (static) skip the
//! lifecycle: one instance per app version. See `docs/workers.md`.

mod client_body;
mod gate;
mod reload;
mod shared;
mod stats;
mod worker;

pub use stats::LatencyRing;
pub(crate) use stats::rss_bytes;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use lru::LruCache;
use marina_apps::{App, WorkerKind};
use marina_core::body::{Body, BoxError};
use marina_core::{Error, body};
use marina_proxy::LimitedBody;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use self::client_body::{ClientBody, Upload};
use self::gate::Gate;
use self::shared::Shared;
use self::worker::{Phase, Worker};
use crate::backend::{Backend, CallError, Event, Policy, StartSpec};
use crate::html::{self, Injection};
use crate::process::sandbox::{SandboxOptions, SandboxStatus};
use crate::process::{CONTROL_HEADER, ProcessBackend, ProcessOptions};
use crate::static_kind::StaticBackend;
/// How often ttl, idleTimeout and maxMemory are checked.
const TICK: Duration = Duration::from_millis(250);
/// How long a stopping worker has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// A worker that ran at least this long before crashing resets the crash-loop count.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// An app version with no worker for this long leaves the LRU.
const SLOT_FORGET_AFTER: Duration = Duration::from_secs(10);
/// A worker expected to reach `maxRequests` within this time gets its successor started early.
const SUCCESSOR_HORIZON: Duration = Duration::from_secs(10);
/// The longest crash-loop back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Settings of the pool, read from the environment by the server.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// `RUNTIME_POOL_SIZE`: how many app versions keep warm workers at once (LRU).
    pub pool_size: usize,
    /// `RUNTIME_EPHEMERAL_CONCURRENCY` (default 2): `ttl: 0` requests running at once.
    pub ephemeral_concurrency: usize,
    /// `RUNTIME_EPHEMERAL_QUEUE_LIMIT` (default 100): `ttl: 0` requests waiting; beyond, 503.
    pub ephemeral_queue_limit: usize,
    /// `RUNTIME_STATE_DIR`: the JS shim and worker sockets go under it.
    pub state_dir: PathBuf,
    /// `RUNTIME_API_URL` as workers see it.
    pub runtime_api_url: String,
    /// `NODE_ENV` as workers see it.
    pub node_env: String,
    /// `RUNTIME_LOG_LEVEL` as workers see it.
    pub log_level: String,
    /// `RUNTIME_JS`: `bun`, `node` or a path; `None` = Bun when on PATH, else Node.
    pub js_runtime: Option<String>,
    /// `RUNTIME_WORKER_DIRS`, passed on to workers as Buntime does.
    pub worker_dirs: Vec<PathBuf>,
    /// `RUNTIME_PLUGIN_DIRS`, passed on to workers as Buntime does.
    pub plugin_dirs: Vec<PathBuf>,
    /// Where an app's own SQLite database is, told to its workers as `APP_DATABASE_PATH`
    /// (`None`, or the function answering `None`, when there is no such file: PostgreSQL).
    pub app_database: Option<AppDatabasePath>,
    /// When set, each process worker gets a scoped token (revoked when it exits) as
    /// `LIBSQL_AUTH_TOKEN`, and `LIBSQL_URL` = `{runtime_api_url}/database/api/`.
    pub tokens: Option<crate::tokens::WorkerTokens>,
    /// Worker user, uid range, cgroups (see [`crate::process::sandbox`], docs/security.md).
    pub sandbox: SandboxOptions,
    /// `RUNTIME_BODY_TIMEOUT`: how long a client may take to send a request body to a worker
    /// (zero: no limit). The worker's `timeout` starts once the whole body is in.
    pub body_timeout: Duration,
}

/// Maps an app name to its SQLite database file. A function rather than a directory because
/// the file name rule (and whether there is a file at all) belongs to the store.
#[derive(Clone)]
pub struct AppDatabasePath(pub Arc<AppDatabaseFn>);

/// The function inside [`AppDatabasePath`]: app name → its SQLite file, if any.
pub type AppDatabaseFn = dyn Fn(&str) -> Option<PathBuf> + Send + Sync;

impl std::fmt::Debug for AppDatabasePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppDatabasePath(..)")
    }
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
}

/// One worker as `GET /api/workers` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    /// Worker id (also its `WORKER_ID`); empty for a crash-looping app with no process.
    pub id: String,
    /// App name.
    pub app: String,
    /// App version.
    pub version: String,
    /// `static`, `js`, `process` or `wasm`.
    pub kind: &'static str,
    /// OS process id of the app (its process group also holds marina's supervising shell);
    /// null for kinds that run inside marina.
    pub pid: Option<u32>,
    /// `starting`, `ready`, `busy`, `idle`, `draining` or `crashloop`.
    pub state: &'static str,
    /// Whether this is a one-request (`ttl: 0`) worker.
    pub ephemeral: bool,
    /// Requests forwarded to it.
    pub requests: u64,
    /// Requests that failed (5xx, crash, timeout).
    pub errors: u64,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Restarts of the app version's workers (crash, timeout, memory, maxRequests).
    pub restarts: u64,
    /// Why the last restart happened.
    pub last_restart_reason: Option<String>,
    /// Why the last live reload of its app version did not start (the worker kept serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
    /// Mean time to response headers over the last 100 requests.
    pub avg_latency_ms: f64,
    /// 99th percentile of the same.
    pub p99_latency_ms: f64,
    /// The highest memory use seen, bytes: the kernel's peak for a worker in a memory cgroup,
    /// else the highest sample.
    pub peak_rss_bytes: Option<u64>,
    /// Lines of its output not logged because it printed faster than the log rate limit.
    pub log_lines_dropped: u64,
    /// Memory of the worker, bytes (last sample): for a process, the resident memory of it and
    /// every process it started.
    pub rss_bytes: Option<u64>,
    /// Age of the worker.
    pub age_ms: u64,
    /// Time since it last started or finished a request.
    pub idle_ms: u64,
}

/// Pool-wide numbers, with Buntime's field names (buntime.md §3.8).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolMetrics {
    /// Live worker processes.
    pub active_workers: usize,
    /// Mean time to response headers over the last 100 requests.
    pub avg_response_time_ms: f64,
    /// The most ephemeral requests that may run at once (`RUNTIME_EPHEMERAL_CONCURRENCY` after
    /// clamping), as Buntime's metrics report it.
    pub ephemeral_concurrency: usize,
    /// Ephemeral requests running now (marina).
    pub ephemeral_active: usize,
    /// Ephemeral requests waiting now.
    pub ephemeral_queue_depth: usize,
    /// The ephemeral queue limit.
    pub ephemeral_queue_limit: usize,
    /// App versions evicted from the LRU.
    pub evictions: u64,
    /// `hits / (hits + misses)` in percent.
    pub hit_rate: f64,
    /// Requests that found a warm worker.
    pub hits: u64,
    /// Sum of the workers' resident memory, MiB.
    #[serde(rename = "memoryUsageMB")]
    pub memory_usage_mb: f64,
    /// Requests that had to start a worker.
    pub misses: u64,
    /// Requests per second since the previous metrics call (or since start).
    pub requests_per_second: f64,
    /// Requests forwarded.
    pub total_requests: u64,
    /// Workers started.
    pub total_workers_created: u64,
    /// Workers that failed to start.
    pub total_workers_failed: u64,
    /// Workers retired (ttl, maxRequests, memory, eviction, ephemeral completion).
    pub total_workers_retired: u64,
    /// Time since the pool was created.
    pub uptime_ms: u64,
}

/// The worker pool. Create with [`WorkerPool::new`]; share the `Arc`.
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("workers", &self.inner.all.lock().len()).finish()
    }
}

#[derive(Default)]
struct SlotState {
    workers: Vec<Arc<Worker>>,
    crashes: u32,
    backoff_until: Option<Instant>,
    restarts: u64,
    last_reason: Option<String>,
    /// When housekeeping first saw the slot with no worker.
    empty_since: Option<Instant>,
    /// A worker started ahead of a busy worker's `maxRequests` recycle: it joins `workers` once
    /// it is ready, or when the worker it replaces retires, whichever comes first.
    successor: Option<Arc<Worker>>,
    /// A live reload under way (see [`reload`]).
    reload: Option<reload::Reload>,
    /// The last reload that could not start; the old workers kept serving.
    failed_reload: Option<reload::FailedReload>,
}

/// What `/api/workers` shows of a slot on each of its rows: restarts, the last restart reason,
/// whether it is crash-looping, and why its last reload failed.
type SlotHistory = (u64, Option<String>, bool, Option<String>);

/// The workers of one app version, and its crash history.
struct Slot {
    app: Arc<App>,
    st: Mutex<SlotState>,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    created: AtomicU64,
    failed: AtomicU64,
    retired: AtomicU64,
    requests: AtomicU64,
}

pub(crate) struct Inner {
    opts: PoolOptions,
    /// How process workers are isolated on this machine (decided at start).
    sandbox: SandboxStatus,
    /// One backend per kind; the only place a kind is looked at.
    backends: HashMap<WorkerKind, Arc<dyn Backend>>,
    /// Instances of [`Policy::Shared`] kinds.
    shared: Shared,
    slots: Mutex<LruCache<String, Arc<Slot>>>,
    /// Every worker with a process (or starting one), by id.
    all: Mutex<HashMap<String, Arc<Worker>>>,
    gate: Gate,
    counters: Counters,
    latency: Mutex<LatencyRing>,
    last_rate: Mutex<(Instant, u64)>,
    ticks: AtomicU64,
    started: Instant,
    shutting_down: AtomicBool,
    shutdown_done: watch::Sender<bool>,
    me: Weak<Inner>,
}

impl WorkerPool {
    /// Creates the pool and its backends (the process backend writes the JS host shim under
    /// `{state_dir}/shim/`, prepares `{state_dir}/sock/` and picks the JS engine), and starts
    /// the housekeeping task (so it must be called inside a tokio runtime).
    pub fn new(opts: PoolOptions) -> Result<Arc<WorkerPool>, Error> {
        Self::with_backends(opts, Vec::new())
    }

    /// [`WorkerPool::new`] with more kinds: each `(kind, backend)` runs that kind's apps (the
    /// server adds `wasm` this way, so this crate does not build wasmtime).
    pub fn with_backends(
        opts: PoolOptions,
        extra: Vec<(WorkerKind, Arc<dyn Backend>)>,
    ) -> Result<Arc<WorkerPool>, Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("WorkerPool::new must be called inside a tokio runtime"))?;
        let pool_size = NonZeroUsize::new(opts.pool_size).ok_or_else(|| {
            Error::internal(format!("RUNTIME_POOL_SIZE is {}, expected a positive number", opts.pool_size))
        })?;
        let process = Arc::new(ProcessBackend::new(ProcessOptions {
            state_dir: opts.state_dir.clone(),
            runtime_api_url: opts.runtime_api_url.clone(),
            node_env: opts.node_env.clone(),
            log_level: opts.log_level.clone(),
            js_runtime: opts.js_runtime.clone(),
            worker_dirs: join_dirs(&opts.worker_dirs),
            plugin_dirs: join_dirs(&opts.plugin_dirs),
            app_database: opts.app_database.clone(),
            tokens: opts.tokens.clone(),
            sandbox: opts.sandbox.clone(),
        })?);
        let sandbox = process.sandbox_status();
        let process: Arc<dyn Backend> = process;
        let mut backends: HashMap<WorkerKind, Arc<dyn Backend>> = HashMap::from([
            (WorkerKind::Static, Arc::new(StaticBackend) as Arc<dyn Backend>),
            (WorkerKind::Js, process.clone()),
            (WorkerKind::Process, process),
        ]);
        backends.extend(extra);
        let concurrency = opts.ephemeral_concurrency.clamp(1, opts.pool_size);
        let inner = Arc::new_cyclic(|me| Inner {
            sandbox,
            backends,
            shared: Shared::default(),
            gate: Gate::new(concurrency, opts.ephemeral_queue_limit),
            opts,
            slots: Mutex::new(LruCache::new(pool_size)),
            all: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            latency: Mutex::new(LatencyRing::new(100)),
            last_rate: Mutex::new((Instant::now(), 0)),
            ticks: AtomicU64::new(0),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            shutdown_done: watch::Sender::new(false),
            me: me.clone(),
        });
        let weak = Arc::downgrade(&inner);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if inner.shutting_down.load(Ordering::Acquire) {
                    break;
                }
                inner.housekeeping();
            }
        });
        Ok(Arc::new(WorkerPool { inner }))
    }

    /// Answers one request for `app`, whatever its kind.
    ///
    /// `req`'s URI is already the app-relative path and query, and the server has set `x-base`
    /// (the app's prefix, for `<base>` injection), `x-request-id` and `x-forwarded-*`. An
    /// upgrade request (WebSocket) is spliced through when the worker answers 101. The response
    /// body streams from the worker; the worker counts the request as in flight until that body
    /// has been read or dropped. HTML responses get the manifest's `injectBase`/`envPrefix`.
    ///
    /// # Errors
    ///
    /// `PAYLOAD_TOO_LARGE` (413) past `maxBodySize`; `EPHEMERAL_WORKER_QUEUE_SATURATED` (503);
    /// `WORKER_CRASHLOOP` (503) while a crash-looping app backs off; `WORKER_START_FAILED`
    /// (502, or 500 when no JS engine fits); `WORKER_TIMEOUT` (504); `WORKER_CRASHED` (502);
    /// `SHUTTING_DOWN` (503).
    pub async fn dispatch(&self, app: Arc<App>, mut req: Request<Body>) -> Result<Response<Body>, Error> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::shutting_down("marina is shutting down and takes no new requests"));
        }
        let backend = inner.backend(&app)?;
        // A declared length over `maxBodySize` is refused before anything else, for every kind:
        // a large POST to a static app is 413 (as in Buntime), not 405.
        let limit = app.config.max_body_size;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Error::payload_too_large(limit));
        }
        if backend.policy() == Policy::Shared {
            return inner.serve_shared(backend, app, req).await;
        }
        // Only marina may send lifecycle calls; a client cannot smuggle the control header in.
        req.headers_mut().remove(&CONTROL_HEADER);
        let (parts, body) = req.into_parts();
        let (body, tripped, upload) = if http_body::Body::is_end_stream(&body) {
            (body, Arc::new(AtomicBool::new(false)), Upload::complete())
        } else {
            let (client, upload) = ClientBody::new(body, inner.opts.body_timeout);
            let (limited, tripped) = LimitedBody::new(body::boxed(client), limit);
            (body::boxed(limited), tripped, upload)
        };
        let req = Request::from_parts(parts, body);

        let (worker, permit) = if app.config.ttl.is_zero() {
            let permit = inner.gate.enter(&app.name).await?;
            inner.counters.misses.fetch_add(1, Ordering::Relaxed);
            let worker = inner.spawn_worker(app.clone(), true);
            (worker, Some(permit))
        } else {
            let slot = inner.current_slot(inner.slot_for(&app), &app);
            let (worker, hit) = inner.pick(&slot)?;
            let counter = if hit { &inner.counters.hits } else { &inner.counters.misses };
            counter.fetch_add(1, Ordering::Relaxed);
            (worker, None)
        };
        // Counted from here, so a client that gives up while the worker starts still releases
        // it (and an ephemeral worker is stopped).
        let guard = Arc::new(InFlight::enter(worker.clone(), permit, inner.me.clone()));
        worker.wait_ready().await?;
        let base = req.headers().get("x-base").and_then(|v| v.to_str().ok()).unwrap_or("");
        let injection = Injection::from_config(&app.config, base);
        let resp = inner.forward(guard, req, tripped, upload).await?;
        match injection {
            Some(inj) => html::inject_response(resp, &inj).await,
            None => Ok(resp),
        }
    }

    /// Every worker, for `GET /api/workers`, plus one `crashloop` row per app that is backing off
    /// with no process.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.inner.workers()
    }

    /// Live reload: the files of `app`'s version changed on disk (its code, or its manifest or
    /// `.env`, in which case `app` is the newly loaded one). Running workers get successors of
    /// `app`; they take over once one is ready, and the old ones drain and stop. A static app's
    /// instance is rebuilt on its next request; `ttl: 0` apps start fresh per request anyway.
    pub fn reload(&self, app: Arc<App>, reason: &str) {
        let inner = &self.inner;
        if inner.backend(&app).is_ok_and(|b| b.policy() == Policy::Shared) {
            inner.shared.forget(&app.key());
            return;
        }
        let Some(slot) = inner.slots.lock().peek(&app.key()).cloned() else { return };
        inner.reload_slot(&slot, app, reason.to_string());
    }

    /// Why the last reload of `key` (`name@version`) could not start, while its previous
    /// workers keep serving; `None` when it did, or none was tried.
    pub fn reload_error(&self, key: &str) -> Option<String> {
        let slot = self.inner.slots.lock().peek(key).cloned()?;
        let st = slot.st.lock();
        st.failed_reload.as_ref().map(|f| f.message.clone())
    }

    /// Whether a reload of `key` is under way (new workers starting beside the old ones).
    pub fn reloading(&self, key: &str) -> bool {
        self.inner.slots.lock().peek(key).is_some_and(|s| s.st.lock().reload.is_some())
    }

    /// The app the live workers of `key` run, when there are any: what keeps serving while a
    /// manifest edit on disk does not load.
    pub fn serving(&self, key: &str) -> Option<Arc<App>> {
        let slot = self.inner.slots.lock().peek(key).cloned()?;
        let live = slot.st.lock().workers.iter().any(|w| w.usable());
        live.then(|| slot.app.clone())
    }

    /// Pool-wide metrics (buntime.md §3.8).
    pub fn metrics(&self) -> PoolMetrics {
        self.inner.metrics()
    }

    /// How process workers are isolated on this machine, and what is not isolated.
    pub fn sandbox(&self) -> SandboxStatus {
        self.inner.sandbox.clone()
    }

    /// Stops every worker within `budget`: in-flight requests may finish (up to half of it),
    /// then `onTerminate` to each, then SIGTERM, and SIGKILL to every process group when the
    /// budget is spent. New requests get 503 `SHUTTING_DOWN` from the moment it starts. Calling
    /// it again waits for the first call to finish.
    pub async fn shutdown(&self, budget: Duration) {
        self.inner.shutdown(budget).await;
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // The last resort: whatever still runs dies with the pool.
        for w in self.inner.all.lock().values() {
            w.kill();
        }
    }
}

impl Inner {
    fn backend(&self, app: &App) -> Result<Arc<dyn Backend>, Error> {
        self.backends.get(&app.kind).cloned().ok_or_else(|| {
            Error::internal(format!(
                "app '{}' is of kind '{}', which this marina cannot run",
                app.key(),
                app.kind.as_str()
            ))
        })
    }

    /// A [`Policy::Shared`] kind: the app version's one instance, started on first use.
    async fn serve_shared(
        &self,
        backend: Arc<dyn Backend>,
        app: Arc<App>,
        req: Request<Body>,
    ) -> Result<Response<Body>, Error> {
        let started = Instant::now();
        let instance = match self.shared.get(&app) {
            Some(i) => i,
            None => {
                let spec =
                    StartSpec { app: app.clone(), worker_id: app.key(), ephemeral: false, cancel: Default::default() };
                let instance = backend.start(spec).await?;
                self.shared.insert(&app, instance)
            }
        };
        let result = match instance.call(req).await {
            Ok(resp) => Ok(resp),
            Err(CallError::BodyTooLarge) => Err(Error::payload_too_large(app.config.max_body_size)),
            Err(CallError::Failed(e)) => Err(e),
            Err(CallError::Lost(e)) => Err(Error::internal(format!("app '{}' failed: {e}", app.key()))),
        };
        let status = match &result {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        self.shared.record(&app, status, started.elapsed());
        result
    }

    fn slot_for(&self, app: &Arc<App>) -> Arc<Slot> {
        let key = app.key();
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        let slot = Arc::new(Slot { app: app.clone(), st: Mutex::new(SlotState::default()) });
        let evicted = slots.push(key, slot.clone());
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
    fn pick(&self, slot: &Arc<Slot>) -> Result<(Arc<Worker>, bool), Error> {
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

    fn spawn_worker(&self, app: Arc<App>, ephemeral: bool) -> Arc<Worker> {
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

    async fn forward(
        &self,
        guard: Arc<InFlight>,
        req: Request<Body>,
        tripped: Arc<AtomicBool>,
        upload: Upload,
    ) -> Result<Response<Body>, Error> {
        let worker = guard.worker.clone();
        let app = worker.app.clone();
        let mut req = req;
        if marina_proxy::is_upgrade(req.headers()) {
            // An open WebSocket counts as in flight until it closes.
            req.extensions_mut().insert(marina_proxy::Hold(guard.clone()));
        }
        let n = worker.requests.fetch_add(1, Ordering::AcqRel) + 1;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let max_requests = app.config.max_requests.max(1);
        if !worker.ephemeral && n >= max_requests {
            self.retire(
                &worker,
                Some(format!("maxRequests ({}) reached", app.config.max_requests)),
                "maxRequests reached",
            );
        } else if !worker.ephemeral && n == max_requests - max_requests / 2 && max_requests >= 2 {
            self.start_successor(&worker);
        }
        let Some(instance) = worker.instance().cloned() else {
            return Err(Error::internal(format!("worker {} of app '{}' is not ready", worker.id, worker.key)));
        };
        let started = Instant::now();
        // The worker's `timeout` is the worker's time: it starts once the client has sent the
        // whole body (a slow upload is the client's business, bounded by RUNTIME_BODY_TIMEOUT).
        // A kind that enforces `timeout` itself (wasm: the instance's deadline, which stops
        // just that call) is not timed here.
        let own_deadline = instance.enforces_timeout();
        let call = instance.call(req);
        tokio::pin!(call);
        let outcome = if own_deadline {
            Ok((&mut call).await)
        } else {
            tokio::select! {
                biased;
                result = &mut call => Ok(result),
                () = upload.finished() => tokio::time::timeout(app.config.timeout, &mut call).await,
            }
        };
        if outcome.as_ref().is_ok_and(|r| r.is_err())
            && let Some(e) = upload.client_error()
        {
            return Err(e);
        }
        match outcome {
            Err(_) => {
                worker.errors.fetch_add(1, Ordering::Relaxed);
                worker.kill();
                let reason = format!("timeout: no response within {} ms", app.config.timeout.as_millis());
                self.note_restart(&worker, &reason);
                tracing::warn!(app = %worker.key, worker = %worker.id, "{reason}; worker killed");
                Err(Error::gateway_timeout(format!(
                    "app '{}' did not answer within {} ms; its worker was replaced",
                    worker.key,
                    app.config.timeout.as_millis()
                ))
                .with_data(json!({ "app": worker.key, "timeoutMs": app.config.timeout.as_millis() as u64 })))
            }
            Ok(Err(CallError::BodyTooLarge)) => Err(Error::payload_too_large(app.config.max_body_size)),
            Ok(Err(_)) if tripped.load(Ordering::Acquire) => Err(Error::payload_too_large(app.config.max_body_size)),
            Ok(Err(CallError::Failed(e))) => {
                worker.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Ok(Err(CallError::Lost(e))) => {
                worker.errors.fetch_add(1, Ordering::Relaxed);
                // Give the exit watcher a moment so the message can say how the process ended
                // (and whether the kernel killed it for its memory).
                if !worker.has_exited() {
                    worker.wait_exit(Duration::from_millis(500)).await;
                }
                let exit = worker.exit_status.lock().clone();
                if worker.over_memory() {
                    let limit = app.config.max_memory.unwrap_or_default();
                    return Err(Error::bad_gateway(
                        "WORKER_MEMORY_LIMIT",
                        format!(
                            "app '{}' went over its maxMemory of {limit} bytes and its worker was killed",
                            worker.key
                        ),
                    )
                    .with_data(
                        json!({ "app": worker.key, "worker": worker.id, "maxMemoryBytes": limit, "exit": exit }),
                    ));
                }
                let how = match &exit {
                    Some(status) => format!("its worker exited ({status})"),
                    None => "its worker closed the connection".to_string(),
                };
                Err(Error::bad_gateway(
                    "WORKER_CRASHED",
                    format!("app '{}' failed before answering: {how}", worker.key),
                )
                .with_data(json!({ "app": worker.key, "worker": worker.id, "exit": exit }))
                .with_source(e))
            }
            Ok(Ok(mut resp)) => {
                default_content_type(&mut resp);
                let took = started.elapsed();
                worker.latency.lock().record(took);
                self.latency.lock().record(took);
                if resp.status().is_server_error() {
                    worker.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp.map(|b| body::boxed(GuardedBody { inner: b, _guard: guard })))
            }
        }
    }

    /// Halfway to `maxRequests`, a worker that is getting there quickly (within
    /// [`SUCCESSOR_HORIZON`] at its rate so far) gets its replacement started now, so that the
    /// recycle does not make requests wait for a cold start. The successor takes no requests
    /// until it is ready or the worker it replaces retires.
    fn start_successor(&self, worker: &Arc<Worker>) {
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

    /// Takes a worker out of service: no new requests, in-flight ones finish (up to the app's
    /// `timeout`), then `onTerminate` and stop. `restart` records a restart reason on its app.
    fn retire(&self, worker: &Arc<Worker>, restart: Option<String>, why: &str) {
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

    fn note_restart(&self, worker: &Worker, reason: &str) {
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

    fn record_crash(&self, worker: &Arc<Worker>, reason: &str) {
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

    fn housekeeping(&self) {
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

    fn workers(&self) -> Vec<WorkerInfo> {
        let all: Vec<Arc<Worker>> = self.all.lock().values().cloned().collect();
        let slots: Vec<(String, Arc<Slot>)> = self.slots.lock().iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        let history: HashMap<&str, SlotHistory> = slots
            .iter()
            .map(|(k, s)| {
                let st = s.st.lock();
                let looping = st.backoff_until.is_some_and(|t| t > Instant::now());
                let reload_error = st.failed_reload.as_ref().map(|f| f.message.clone());
                (k.as_str(), (st.restarts, st.last_reason.clone(), looping, reload_error))
            })
            .collect();
        let mut out: Vec<WorkerInfo> = all
            .iter()
            .map(|w| {
                let (restarts, last, looping, reload_error) = history.get(w.key.as_str()).cloned().unwrap_or_default();
                let state = match w.phase() {
                    Phase::Starting if looping => "crashloop",
                    Phase::Starting => "starting",
                    Phase::Draining => "draining",
                    Phase::Dead => "draining",
                    Phase::Ready if w.in_flight.load(Ordering::Acquire) > 0 => "busy",
                    Phase::Ready if w.idle_notified.load(Ordering::Acquire) => "idle",
                    Phase::Ready => "ready",
                };
                let lat = w.latency.lock();
                WorkerInfo {
                    id: w.id.clone(),
                    app: w.app.name.clone(),
                    version: w.app.version.clone(),
                    kind: w.app.kind.as_str(),
                    pid: w.pid(),
                    state,
                    ephemeral: w.ephemeral,
                    requests: w.requests.load(Ordering::Relaxed),
                    errors: w.errors.load(Ordering::Relaxed),
                    in_flight: w.in_flight.load(Ordering::Relaxed),
                    restarts,
                    last_restart_reason: last,
                    reload_error: reload_error.clone(),
                    avg_latency_ms: lat.avg_ms(),
                    p99_latency_ms: lat.p99_ms(),
                    rss_bytes: match w.rss.load(Ordering::Relaxed) {
                        0 => w.memory(),
                        r => Some(r),
                    },
                    peak_rss_bytes: w.peak_memory(),
                    log_lines_dropped: w.instance().map_or(0, |i| i.log_lines_dropped()),
                    age_ms: w.created.elapsed().as_millis() as u64,
                    idle_ms: w.idle_for().as_millis() as u64,
                }
            })
            .collect();
        for (key, slot) in &slots {
            let (restarts, last, looping, reload_error) = history[key.as_str()].clone();
            // A worker whose start just failed may not be forgotten yet: it does not count.
            let live = all.iter().any(|w| w.key == *key && w.phase() != Phase::Dead);
            if looping && !live {
                out.push(WorkerInfo {
                    id: String::new(),
                    app: slot.app.name.clone(),
                    version: slot.app.version.clone(),
                    kind: slot.app.kind.as_str(),
                    pid: None,
                    state: "crashloop",
                    ephemeral: false,
                    requests: 0,
                    errors: 0,
                    in_flight: 0,
                    restarts,
                    last_restart_reason: last,
                    reload_error: reload_error.clone(),
                    avg_latency_ms: 0.0,
                    p99_latency_ms: 0.0,
                    rss_bytes: None,
                    peak_rss_bytes: None,
                    log_lines_dropped: 0,
                    age_ms: 0,
                    idle_ms: 0,
                });
            }
        }
        out.sort_by(|a, b| (&a.app, &a.version, b.age_ms).cmp(&(&b.app, &b.version, a.age_ms)));
        let mut rows = self.shared.snapshot();
        rows.extend(out);
        rows
    }

    fn metrics(&self) -> PoolMetrics {
        let c = &self.counters;
        let hits = c.hits.load(Ordering::Relaxed);
        let misses = c.misses.load(Ordering::Relaxed);
        let total = c.requests.load(Ordering::Relaxed);
        let all: Vec<Arc<Worker>> = self.all.lock().values().cloned().collect();
        let rss: u64 = all.iter().filter_map(|w| w.memory()).sum();
        let rps = {
            let mut last = self.last_rate.lock();
            let secs = last.0.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { (total - last.1) as f64 / secs } else { 0.0 };
            *last = (Instant::now(), total);
            rate
        };
        PoolMetrics {
            active_workers: all.iter().filter(|w| w.phase() != Phase::Dead).count(),
            avg_response_time_ms: self.latency.lock().avg_ms(),
            ephemeral_concurrency: self.gate.max_concurrency(),
            ephemeral_active: self.gate.active(),
            ephemeral_queue_depth: self.gate.pending(),
            ephemeral_queue_limit: self.gate.queue_limit(),
            evictions: c.evictions.load(Ordering::Relaxed),
            hit_rate: if hits + misses == 0 { 0.0 } else { hits as f64 * 100.0 / (hits + misses) as f64 },
            hits,
            memory_usage_mb: rss as f64 / (1024.0 * 1024.0),
            misses,
            requests_per_second: rps,
            total_requests: total,
            total_workers_created: c.created.load(Ordering::Relaxed),
            total_workers_failed: c.failed.load(Ordering::Relaxed),
            total_workers_retired: c.retired.load(Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    async fn shutdown(&self, budget: Duration) {
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

/// Buntime's worker wrapper gives every response without a `Content-Type` the type
/// `text/plain;charset=utf-8`; apps (and their clients) written for Buntime rely on it.
/// Responses that carry no body by definition (1xx, 204, 304) are left alone.
fn default_content_type(resp: &mut Response<Body>) {
    let status = resp.status();
    if status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
        || resp.headers().contains_key(http::header::CONTENT_TYPE)
    {
        return;
    }
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain;charset=utf-8"));
}

/// Counts a request as in flight on its worker until the response body is done or dropped;
/// then an ephemeral worker is stopped and its gate slot freed.
struct InFlight {
    worker: Arc<Worker>,
    permit: Option<gate::Permit>,
    pool: Weak<Inner>,
}

impl InFlight {
    fn enter(worker: Arc<Worker>, permit: Option<gate::Permit>, pool: Weak<Inner>) -> Self {
        worker.in_flight.fetch_add(1, Ordering::AcqRel);
        worker.idle_notified.store(false, Ordering::Release);
        worker.touch();
        Self { worker, permit, pool }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let w = &self.worker;
        w.touch();
        if w.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            w.drained.notify_waiters();
        }
        if w.ephemeral && w.begin_drain() {
            if let Some(pool) = self.pool.upgrade() {
                pool.counters.retired.fetch_add(1, Ordering::Relaxed);
            }
            let w = w.clone();
            let permit = self.permit.take();
            // The gate slot is held until the process is gone, so at most
            // RUNTIME_EPHEMERAL_CONCURRENCY ephemeral processes exist at once.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    w.terminate(KILL_GRACE).await;
                    drop(permit);
                });
            } else {
                w.kill();
            }
        }
    }
}

/// A worker's response body that holds its [`InFlight`] guard.
struct GuardedBody {
    inner: Body,
    _guard: Arc<InFlight>,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_documented_ones() {
        let info = WorkerInfo {
            id: "x".into(),
            app: "a".into(),
            version: "1.0.0".into(),
            kind: "js",
            pid: Some(1),
            state: "ready",
            ephemeral: false,
            requests: 1,
            errors: 0,
            in_flight: 0,
            restarts: 0,
            last_restart_reason: None,
            reload_error: None,
            avg_latency_ms: 1.0,
            p99_latency_ms: 1.0,
            rss_bytes: Some(1),
            peak_rss_bytes: Some(1),
            log_lines_dropped: 0,
            age_ms: 1,
            idle_ms: 1,
        };
        let v = serde_json::to_value(info).unwrap();
        for k in ["inFlight", "lastRestartReason", "avgLatencyMs", "p99LatencyMs", "rssBytes", "ageMs"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
    }
}
