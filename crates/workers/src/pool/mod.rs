//! The worker pool: the lifecycle policy, the same for every kind.
//!
//! Each app version (`name@version`) gets a *slot* holding its workers (1 by default,
//! `instances` in the manifest). Slots live in an LRU bounded by `RUNTIME_POOL_SIZE`; `ttl: 0`
//! apps bypass it and get a fresh worker per request behind the ephemeral gate. A housekeeping
//! task (every 250 ms) applies the sliding `ttl`, `idleTimeout` (`onIdle`) and `maxMemory`.
//! Workers are started, called and stopped through the backend seam ([`crate::backend`]); the
//! kind of an app only picks its backend. Kinds with [`Policy::Shared`] (static) skip the
//! lifecycle: one instance per app version. See `docs/workers.md`.
//!
//! This file holds the pool's entry points (`dispatch` and the API); the policy lives beside
//! it: [`slots`] (slots, picking, the early successor), [`gate`] (the ephemeral gate),
//! [`call`] (forwarding a request, the in-flight guard), [`lifecycle`] (retire, crashes,
//! housekeeping, shutdown), [`reload`] (live reload), [`spares`] (fresh `ttl: 0` workers
//! started ahead) and [`report`] (`/api/workers`, metrics).

mod call;
mod client_body;
mod gate;
mod lifecycle;
mod reload;
mod report;
mod shared;
mod slots;
mod spares;
mod stats;
mod worker;

pub use report::{PoolMetrics, WorkerInfo};
pub use stats::LatencyRing;
pub(crate) use stats::rss_bytes;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use lru::LruCache;
use marina_apps::{App, WorkerKind};
use marina_core::body::Body;
use marina_core::{Error, body};
use marina_proxy::LimitedBody;
use parking_lot::Mutex;
use tokio::sync::watch;

use self::call::InFlight;
use self::client_body::{ClientBody, Upload};
use self::gate::Gate;
use self::shared::Shared;
use self::slots::{Slot, SlotState};
use self::worker::Worker;
use crate::backend::{Backend, Policy};
use crate::html::{self, Injection};
use crate::process::sandbox::{SandboxOptions, SandboxStatus};
use crate::process::{CONTROL_HEADER, ProcessBackend, ProcessOptions};
use crate::static_kind::StaticBackend;

/// How often ttl, idleTimeout and maxMemory are checked.
const TICK: Duration = Duration::from_millis(250);

/// Settings of the pool, read from the environment by the server.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// `RUNTIME_POOL_SIZE`: how many app versions keep warm workers at once (LRU).
    pub pool_size: usize,
    /// `RUNTIME_EPHEMERAL_CONCURRENCY` (default 2): `ttl: 0` requests running at once.
    pub ephemeral_concurrency: usize,
    /// `RUNTIME_EPHEMERAL_QUEUE_LIMIT` (default 100): `ttl: 0` requests waiting; beyond, 503.
    pub ephemeral_queue_limit: usize,
    /// `RUNTIME_EPHEMERAL_SPARES` (default 1): never-used workers started ahead for each `ttl: 0`
    /// app in use (see [`spares`]).
    pub ephemeral_spares: usize,
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
    /// `RUNTIME_BODY_TIMEOUT`: how long a worker may wait, in all, for pieces of a request body
    /// the client has not sent (zero: no limit). The worker's `timeout` counts the rest.
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
    /// Tells a worker's connection to marina from anyone else's.
    callers: crate::process::sandbox::callers::CallerProbe,
    /// One backend per kind; the only place a kind is looked at.
    backends: HashMap<WorkerKind, Arc<dyn Backend>>,
    /// Instances of [`Policy::Shared`] kinds.
    shared: Shared,
    slots: Mutex<LruCache<String, Arc<Slot>>>,
    /// Every worker with a process (or starting one), by id.
    all: Mutex<HashMap<String, Arc<Worker>>>,
    gate: Gate,
    /// Never-used `ttl: 0` workers started ahead, by app key.
    spares: Mutex<spares::Spares>,
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
        let callers = process.callers();
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
            callers,
            backends,
            shared: Shared::default(),
            gate: Gate::new(concurrency, opts.ephemeral_queue_limit),
            spares: Mutex::new(spares::Spares::new()),
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
    /// (the app's prefix, for `<base>` injection), `x-request-id` and `x-forwarded-*` (only
    /// `x-base` for a static app, which never leaves the process). An
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
            let worker = inner.ephemeral_worker(&app);
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
        let base = req.headers().get(marina_core::headers::X_BASE).and_then(|v| v.to_str().ok()).unwrap_or("");
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
    /// instance is rebuilt on its next request; a `ttl: 0` app's spares are stopped.
    pub fn reload(&self, app: Arc<App>, reason: &str) {
        let inner = &self.inner;
        if inner.backend(&app).is_ok_and(|b| b.policy() == Policy::Shared) {
            inner.shared.forget(app.key());
            return;
        }
        inner.drop_spares(app.key());
        let Some(slot) = inner.slots.lock().peek(app.key()).cloned() else { return };
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

    /// Tells a worker's connection to marina from anyone else's (the internal API asks while
    /// it is open without a key).
    pub fn callers(&self) -> crate::process::sandbox::callers::CallerProbe {
        self.inner.callers.clone()
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
}
