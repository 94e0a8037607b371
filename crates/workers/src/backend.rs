//! The backend seam: what the pool needs from a worker kind, and nothing more.
//!
//! The pool ([`crate::pool`]) owns the policy — slots, picking, in-flight counting, the
//! ephemeral gate, timeouts, crash back-off, recycling — and drives every kind through these two
//! traits, so it never asks which kind it is driving. A [`Backend`] starts [`Instance`]s of an
//! app version; an instance answers requests until it is stopped or exits on its own.
//!
//! Kinds: [`crate::process`] (`js` and `process`: an OS process behind HTTP) and
//! [`crate::static_kind`] (`static`: files served by marina itself).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use marina_apps::App;
use marina_core::body::BoxError;
use marina_core::{Body, Error};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How the pool runs a kind's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The manifest's lifecycle applies: slots in the LRU, `ttl` (0 = one instance per request
    /// behind the ephemeral gate), `idleTimeout`, `timeout`, `maxRequests`, `maxMemory`, crash
    /// back-off.
    Lifecycle,
    /// One instance per app version, started on its first request and kept while the version is
    /// current; no lifecycle. For kinds marina serves itself at no cost per instance (static).
    Shared,
}

/// What a backend gets to start one instance.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// The app version to run.
    pub app: Arc<App>,
    /// The worker's id (`WORKER_ID`), unique per instance.
    pub worker_id: String,
    /// Whether it will serve one request only (`ttl: 0`).
    pub ephemeral: bool,
    /// Cancelled when the pool stops the worker while it is still starting (shutdown,
    /// eviction). A backend that sees it must stop what it started and return an error.
    pub cancel: CancellationToken,
}

/// A lifecycle event the pool tells an instance about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// No request for `idleTimeout` (the JS shim calls `onIdle`).
    Idle,
    /// The instance is about to be stopped (the JS shim calls `onTerminate`).
    Terminate,
}

impl Event {
    /// The event's wire name (`idle`, `terminate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Idle => "idle",
            Event::Terminate => "terminate",
        }
    }
}

/// Why a call produced no response.
#[derive(Debug)]
pub enum CallError {
    /// The request body went past `maxBodySize` while streaming (413).
    BodyTooLarge,
    /// The instance went away before answering (crash, closed connection). The pool answers
    /// `WORKER_CRASHED` (502) with the exit status, if the instance has one.
    Lost(BoxError),
    /// The backend's own answer (e.g. a trapped WebAssembly instance).
    Failed(Error),
}

/// A kind of worker: starts instances of apps.
pub trait Backend: Send + Sync + 'static {
    /// How the pool runs this kind's instances.
    fn policy(&self) -> Policy {
        Policy::Lifecycle
    }

    /// Starts one instance and resolves once it can take requests. On error nothing the start
    /// began may be left running. The error is the client's answer (`WORKER_START_FAILED`, ...).
    fn start(&self, spec: StartSpec) -> BoxFuture<'static, Result<Arc<dyn Instance>, Error>>;
}

/// One running worker of some kind.
pub trait Instance: Send + Sync + 'static {
    /// Answers one request. `req`'s URI is the app-relative path and query; the body streams
    /// (it may fail with [`CallError::BodyTooLarge`]). The response body streams too.
    fn call(self: Arc<Self>, req: Request<Body>) -> BoxFuture<'static, Result<Response<Body>, CallError>>;

    /// Tells the app about a lifecycle event; bounded in time by the backend. Kinds without
    /// hooks ignore it.
    fn event(self: Arc<Self>, event: Event) -> BoxFuture<'static, ()> {
        let _ = event;
        Box::pin(async {})
    }

    /// Stops gracefully (SIGTERM for a process), escalating to [`Instance::kill`] after `grace`.
    fn stop(self: Arc<Self>, grace: Duration) -> BoxFuture<'static, ()>;

    /// Stops now. The exit that follows is expected.
    fn kill(&self);

    /// Memory in use now, bytes (a process tree's RSS, or its cgroup's use), if the kind can tell.
    fn memory(&self) -> Option<u64>;

    /// The highest memory use so far, bytes, when the kind measures it itself (a cgroup's peak).
    fn peak_memory(&self) -> Option<u64> {
        None
    }

    /// Whether something below the pool enforces `maxMemory` for this instance (a memory cgroup;
    /// a wasm instance's memory cannot grow past it), so the pool need not sample and kill it.
    fn memory_enforced(&self) -> bool {
        false
    }

    /// Whether it was killed for going over `maxMemory` (by the kernel).
    fn memory_killed(&self) -> bool {
        false
    }

    /// Lines of its output not logged because of the log rate limit.
    fn log_lines_dropped(&self) -> u64 {
        0
    }

    /// Whether the instance answers `504` itself when a call outlives the app's `timeout`
    /// (stopping just that call), so the pool need not kill the whole worker for it.
    fn enforces_timeout(&self) -> bool {
        false
    }

    /// The OS process id to show in `/api/workers`, for kinds that have one.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// `None` while running; the exit status text once the instance has exited. An instance
    /// that exits without being stopped has crashed.
    fn exit(&self) -> watch::Receiver<Option<String>>;
}
