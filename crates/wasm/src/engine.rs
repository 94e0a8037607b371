//! The wasmtime engine, the linker, and compiled components cached in memory and on disk.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use marina_apps::App;
use marina_core::Error;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::host::Host;

/// How often the epoch advances: the granularity of deadlines and of a busy guest's yields.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Instances (and their memories) the pooling allocator keeps slots for. A request that finds
/// them all in use gets a start failure rather than unbounded memory use.
const POOL_INSTANCES: u32 = 1000;
/// The largest linear memory an instance may have, whatever its `maxMemory`.
const POOL_MAX_MEMORY: usize = 1 << 30;

/// A component file as last seen on disk; a changed file is a new key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

type Loaded = Arc<OnceCell<Result<ProxyPre<Host>, String>>>;

pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    cache_dir: PathBuf,
    /// `wasmtime` version and engine settings, as part of the on-disk cache key.
    engine_tag: String,
    loaded: Mutex<HashMap<FileKey, Loaded>>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Release);
    }
}

impl Runtime {
    pub fn new(cache_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(cache_dir).map_err(|e| {
            Error::internal(format!("could not create the wasm cache directory {}: {e}", cache_dir.display()))
        })?;
        let engine = engine()?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .map_err(|e| Error::internal(format!("could not link WASI into wasmtime: {e}")))?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_tag = format!("{:016x}", h.finish());
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("marina-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::internal(format!("could not start the wasm epoch thread: {e}")))?;
        }
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            engine_tag,
            loaded: Mutex::new(HashMap::new()),
            ticker_stop,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The app's component, compiled and linked: from memory, else the disk cache, else
    /// compiled now (once, however many requests wait for it).
    pub async fn load(&self, app: &App) -> Result<ProxyPre<Host>, String> {
        let path = app.entrypoint.clone();
        let meta = tokio::fs::metadata(&path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = FileKey { path: path.clone(), len: meta.len(), modified: meta.modified().ok() };
        let cell = {
            let mut loaded = self.loaded.lock();
            // A changed file makes the old entries useless.
            loaded.retain(|k, _| k.path != key.path || *k == key);
            loaded.entry(key).or_default().clone()
        };
        cell.get_or_init(|| self.compile_and_link(path)).await.clone()
    }

    async fn compile_and_link(&self, path: PathBuf) -> Result<ProxyPre<Host>, String> {
        let bytes = tokio::fs::read(&path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let cached = self.cache_dir.join(format!("{hash}-{}.cwasm", self.engine_tag));
        let engine = self.engine.clone();
        let shown = path.display().to_string();
        let component = tokio::task::spawn_blocking(move || load_or_compile(&engine, &bytes, &cached, &shown))
            .await
            .map_err(|e| format!("the compile task failed: {e}"))??;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("{} cannot be linked: {e:#}", path.display()))?;
        ProxyPre::new(pre).map_err(|e| {
            format!(
                "{} is not a wasi:http/proxy component (it must export wasi:http/incoming-handler): {e:#}",
                path.display()
            )
        })
    }
}

fn load_or_compile(engine: &Engine, bytes: &[u8], cached: &Path, shown: &str) -> Result<Component, String> {
    // Read into memory rather than mapped: a mapped file truncated by someone else would
    // bring marina down with SIGBUS.
    if let Ok(bytes) = std::fs::read(cached) {
        // SAFETY: the file was written by `Component::serialize` of this same engine
        // configuration (its name carries the content hash and the engine's compatibility
        // hash) into marina's state dir, which apps cannot write to; wasmtime checks its header
        // and version. A file that does not deserialize is recompiled and replaced.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!(file = %cached.display(), "cached component unusable, recompiling: {e}"),
        }
    }
    let started = std::time::Instant::now();
    let component = Component::new(engine, bytes).map_err(|e| format!("{shown} is not a valid component: {e:#}"))?;
    tracing::info!(file = shown, ms = started.elapsed().as_millis() as u64, "compiled wasm component");
    match component.serialize() {
        Ok(out) => {
            let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
            if let Err(e) = std::fs::write(&tmp, out).and_then(|()| std::fs::rename(&tmp, cached)) {
                tracing::warn!(file = %cached.display(), "could not cache the compiled component: {e}");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Err(e) => tracing::warn!("could not serialize the compiled component: {e}"),
    }
    Ok(component)
}

/// Epoch interruption for deadlines; the pooling allocator so that a fresh instance per
/// request costs microseconds. Falls back to on-demand allocation where the pool's virtual
/// memory reservation is refused (a tight `ulimit -v`).
fn engine() -> Result<Engine, Error> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 4)
        .total_memories(POOL_INSTANCES)
        .total_tables(POOL_INSTANCES * 4)
        .max_memory_size(POOL_MAX_MEMORY);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            tracing::warn!("the wasm pooling allocator is unavailable ({e}); instances are allocated on demand");
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(|e| Error::internal(format!("wasmtime refused its configuration: {e}")))
        }
    }
}
