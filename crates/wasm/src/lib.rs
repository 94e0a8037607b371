//! The `wasm` worker kind: an app whose entrypoint is a `wasi:http/proxy` component runs inside
//! marina, under wasmtime, behind the workers' backend seam ([`marina_workers::backend`]).
//!
//! - Compiled once per version: components are compiled by Cranelift once, kept in memory per
//!   file (path, size, mtime) and on disk under `{RUNTIME_STATE_DIR}/wasm-cache/` keyed by the
//!   SHA-256 of the file and the engine's compatibility hash, so a restart does not recompile.
//! - A fresh instance per request by default (the pooling allocator makes that cheap); with
//!   `reuseInstances: true` an instance serves request after request until it traps.
//! - Per-request deadline (`timeout`, the guest's own time: waiting for a slow upload does not
//!   count): epoch interruption every [`engine::TICK`]; past the deadline the instance traps
//!   and the request gets 504. The ticks also make a busy guest
//!   yield, so a loop never holds a runtime thread.
//! - `maxMemory` caps each instance's linear memory; an instance that asks for more traps
//!   (502 `WORKER_MEMORY_LIMIT`, as a process over its limit) and is dropped.
//! - Guest stdout and stderr go to marina's log as process workers' output does (line cut, rate
//!   limit, dropped lines counted), never to marina's own stdout.
//! - No filesystem, no sockets; outgoing HTTP only to `allowedOutboundHosts`; the environment is
//!   the manifest's `env` (with `.env`) plus `WORKER_ID`, `NODE_ENV`, `RUNTIME_LOG_LEVEL` and
//!   `RUNTIME_API_URL`.
//!
//! This crate is the only one that instantiates wasmtime's generics, so editing other crates
//! does not pay for their monomorphization.

pub mod component;
mod engine;
mod host;
mod instance;
mod output;

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use marina_core::Error;
use marina_workers::backend::{Backend, Instance, StartSpec};
use tokio::sync::OnceCell;

/// Settings of the wasm kind.
#[derive(Debug, Clone)]
pub struct WasmOptions {
    /// `RUNTIME_STATE_DIR`: compiled components are cached under `wasm-cache/` in it.
    pub state_dir: PathBuf,
    /// `NODE_ENV` as apps see it.
    pub node_env: String,
    /// `RUNTIME_LOG_LEVEL` as apps see it.
    pub log_level: String,
    /// `RUNTIME_API_URL` as apps see it.
    pub runtime_api_url: String,
}

/// Starts `wasm` workers. One per process: it owns the wasmtime engine, which is built on the
/// first start of a wasm app, so a marina that serves none pays nothing for it (start-up time,
/// the pooling allocator's reservation, the epoch thread).
pub struct WasmBackend {
    runtime: Arc<OnceCell<Arc<engine::Runtime>>>,
    opts: WasmOptions,
}

impl WasmBackend {
    /// The backend; the engine comes with the first wasm app started.
    ///
    /// # Errors
    /// None today; the engine's own failures (the cache directory cannot be created, wasmtime
    /// refuses the configuration) fail that first start instead.
    pub fn new(opts: WasmOptions) -> Result<Self, Error> {
        Ok(Self { runtime: Arc::default(), opts })
    }
}

impl Backend for WasmBackend {
    fn start(&self, spec: StartSpec) -> BoxFuture<'static, Result<Arc<dyn Instance>, Error>> {
        let cell = self.runtime.clone();
        let opts = self.opts.clone();
        Box::pin(async move {
            // Built once, off the async threads (it maps the pooling allocator's slots): the
            // engine, epoch interruption, the linker with WASI 0.2 and `wasi:http`, the cache
            // directory and the epoch ticker thread.
            let runtime = cell
                .get_or_try_init(|| {
                    let cache = opts.state_dir.join("wasm-cache");
                    async move {
                        match tokio::task::spawn_blocking(move || engine::Runtime::new(&cache)).await {
                            Ok(built) => built.map(Arc::new).map_err(|e| e.message().to_string()),
                            Err(e) => Err(format!("the wasm engine task failed: {e}")),
                        }
                    }
                })
                .await
                .map_err(|reason| start_failed(&spec, reason))?
                .clone();
            let pre = runtime.load(&spec.app).await.map_err(|reason| start_failed(&spec, reason))?;
            let instance = instance::WasmInstance::new(runtime.engine().clone(), pre, &spec, &opts);
            Ok(Arc::new(instance) as Arc<dyn Instance>)
        })
    }
}

fn start_failed(spec: &StartSpec, reason: String) -> Error {
    let key = spec.app.key();
    Error::new(http::StatusCode::BAD_GATEWAY, "WORKER_START_FAILED", format!("app '{key}' did not start: {reason}"))
        .with_data(serde_json::json!({ "app": key, "worker": spec.worker_id, "reason": reason }))
}
