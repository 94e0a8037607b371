//! Shared helpers for the wasm kind's tests: the test guest built from WAT at test time, a
//! pool with the wasm backend, one-call requests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use marina_apps::manifest::AppConfig;
use marina_apps::{App, WorkerKind};
use marina_core::{Error, body};
use marina_wasm::{WasmBackend, WasmOptions};
use marina_workers::backend::Backend;
use marina_workers::{PoolOptions, WorkerPool};

/// The test guest (tests/guest.wat) as a component, built once per test binary.
pub fn guest() -> &'static [u8] {
    static GUEST: OnceLock<Vec<u8>> = OnceLock::new();
    GUEST.get_or_init(|| {
        marina_wasm::component::component_from_wat(include_str!("../guest.wat")).expect("the test guest builds")
    })
}

/// An app dir holding `bytes` as `app.wasm`, and a wasm app for it with `ttl: 30s`.
pub fn wasm_app(dir: &Path, name: &str, bytes: &[u8], tweak: impl FnOnce(&mut AppConfig)) -> Arc<App> {
    let app_dir = dir.join(name);
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(app_dir.join("app.wasm"), bytes).unwrap();
    let mut config = AppConfig { ttl: Duration::from_secs(30), ..AppConfig::default() };
    tweak(&mut config);
    Arc::new(App {
        name: name.into(),
        version: "1.0.0".into(),
        entrypoint: app_dir.join("app.wasm"),
        dir: app_dir,
        kind: WorkerKind::Wasm,
        config: Arc::new(config),
        proxy: Default::default(),
        key: App::key_of(name, "1.0.0"),
        migrated: Default::default(),
    })
}

/// A pool with the wasm backend, its state in `state`.
pub fn pool(state: &Path, tweak: impl FnOnce(&mut PoolOptions)) -> Arc<WorkerPool> {
    let mut o = PoolOptions {
        pool_size: 10,
        ephemeral_concurrency: 2,
        ephemeral_queue_limit: 100,
        ephemeral_spares: 0,
        state_dir: state.to_path_buf(),
        runtime_api_url: "http://127.0.0.1:8000".into(),
        node_env: "test".into(),
        log_level: "info".into(),
        js_runtime: None,
        worker_dirs: Vec::new(),
        plugin_dirs: Vec::new(),
        app_database: None,
        tokens: None,
        sandbox: Default::default(),
        body_timeout: Duration::from_secs(60),
    };
    tweak(&mut o);
    let wasm = WasmBackend::new(WasmOptions {
        state_dir: state.to_path_buf(),
        node_env: "test".into(),
        log_level: "info".into(),
        runtime_api_url: "http://127.0.0.1:8000".into(),
    })
    .expect("wasm backend");
    let extra: Vec<(WorkerKind, Arc<dyn Backend>)> = vec![(WorkerKind::Wasm, Arc::new(wasm))];
    WorkerPool::with_backends(o, extra).expect("pool")
}

pub fn cache_files(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state.join("wasm-cache"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect())
        .unwrap_or_default()
}

pub struct Reply {
    pub status: StatusCode,
    pub text: String,
}

/// One request through `dispatch`, bounded by 15 s, body read fully.
pub async fn call(pool: &WorkerPool, app: &Arc<App>, method: &str, path: &str, text: &str) -> Result<Reply, Error> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-base", format!("/{}", app.name))
        .body(if text.is_empty() { body::empty() } else { body::full(text.to_string()) })
        .unwrap();
    let fut = async {
        let resp = pool.dispatch(app.clone(), req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| Error::internal(e.to_string()))?.to_bytes();
        Ok(Reply { status, text: String::from_utf8_lossy(&bytes).into_owned() })
    };
    tokio::time::timeout(Duration::from_secs(15), fut).await.expect("request finished within 15 s")
}

pub async fn get(pool: &WorkerPool, app: &Arc<App>, path: &str) -> Reply {
    match call(pool, app, "GET", path, "").await {
        Ok(r) => r,
        Err(e) => panic!("GET {path} on {} failed: {} {} {}", app.key(), e.status(), e.code(), e.message()),
    }
}

pub async fn get_err(pool: &WorkerPool, app: &Arc<App>, path: &str) -> Error {
    match call(pool, app, "GET", path, "").await {
        Ok(r) => panic!("GET {path} on {} answered {} {:?}, expected an error", app.key(), r.status, r.text),
        Err(e) => e,
    }
}

/// Polls `cond` every 20 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
