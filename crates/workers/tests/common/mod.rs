//! Shared helpers for the worker tests: fixture apps, a pool in a temp state dir, one-call requests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use marina_apps::manifest::AppConfig;
use marina_apps::{App, WorkerKind};
use marina_core::{Error, body};
use marina_workers::pool::{PoolOptions, WorkerPool};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps").join(name)
}

/// A JS app from `tests/apps/{fixture}/{entry}` with `ttl: 30s` and whatever `tweak` changes.
pub fn js_app(name: &str, fixture_dir: &str, entry: &str, tweak: impl FnOnce(&mut AppConfig)) -> Arc<App> {
    js_app_in(name, fixture(fixture_dir), entry, tweak)
}

/// A JS app in `dir` (one a test writes itself) with `ttl: 30s` and whatever `tweak` changes.
pub fn js_app_in(name: &str, dir: PathBuf, entry: &str, tweak: impl FnOnce(&mut AppConfig)) -> Arc<App> {
    let mut config = AppConfig { ttl: Duration::from_secs(30), ..AppConfig::default() };
    tweak(&mut config);
    Arc::new(App {
        name: name.into(),
        version: "1.0.0".into(),
        entrypoint: dir.join(entry),
        dir,
        kind: WorkerKind::Js,
        config: Arc::new(config),
        proxy: Default::default(),
        key: App::key_of(name, "1.0.0"),
        migrated: Default::default(),
    })
}

/// The Python process app with `ttl: 30s`.
pub fn py_app(name: &str, tweak: impl FnOnce(&mut AppConfig)) -> Arc<App> {
    let mut config = AppConfig {
        ttl: Duration::from_secs(30),
        command: Some(vec!["python3".into(), "app.py".into()]),
        ..AppConfig::default()
    };
    tweak(&mut config);
    let dir = fixture("py-echo");
    Arc::new(App {
        name: name.into(),
        version: "1.0.0".into(),
        entrypoint: dir.join("app.py"),
        dir,
        kind: WorkerKind::Process,
        config: Arc::new(config),
        proxy: Default::default(),
        key: App::key_of(name, "1.0.0"),
        migrated: Default::default(),
    })
}

pub fn options(state: &Path, js: Option<&str>) -> PoolOptions {
    PoolOptions {
        pool_size: 10,
        ephemeral_concurrency: 2,
        ephemeral_queue_limit: 100,
        ephemeral_spares: 0,
        state_dir: state.to_path_buf(),
        runtime_api_url: "http://127.0.0.1:8000".into(),
        node_env: "test".into(),
        log_level: "info".into(),
        js_runtime: js.map(str::to_string),
        worker_dirs: vec!["/srv/apps".into(), "/srv/more".into()],
        plugin_dirs: vec!["/srv/plugins".into()],
        app_database: {
            // The store's layout: a dir per app under the state dir (the worker may write it).
            let apps = state.join("apps");
            Some(marina_workers::AppDatabasePath(std::sync::Arc::new(move |name: &str| {
                Some(apps.join(name).join("app.db"))
            })))
        },
        tokens: None,
        sandbox: Default::default(),
        body_timeout: std::time::Duration::from_secs(60),
    }
}

pub fn pool(state: &Path, js: Option<&str>, tweak: impl FnOnce(&mut PoolOptions)) -> Arc<WorkerPool> {
    let mut o = options(state, js);
    tweak(&mut o);
    WorkerPool::new(o).expect("pool")
}

/// JS engines to run every JS test under: Node always, Bun when on PATH (required on CI).
pub fn runtimes() -> Vec<&'static str> {
    let has_bun = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("bun").is_file()));
    if std::env::var_os("CI").is_some() {
        assert!(has_bun, "CI is set, so Bun must be on PATH for the JS worker tests");
    }
    if has_bun { vec!["node", "bun"] } else { vec!["node"] }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

/// One request through `dispatch`, bounded by 15 s, body read fully.
pub async fn call(
    pool: &WorkerPool,
    app: &Arc<App>,
    method: &str,
    path: &str,
    body_text: &str,
) -> Result<Reply, Error> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-base", format!("/{}", app.name))
        .header("x-request-id", "req-1")
        .header("x-forwarded-for", "203.0.113.9")
        .body(if body_text.is_empty() { body::empty() } else { body::full(body_text.to_string()) })
        .unwrap();
    let fut = async {
        let resp = pool.dispatch(app.clone(), req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.map_err(|e| Error::internal(e.to_string()))?.to_bytes();
        Ok(Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() })
    };
    tokio::time::timeout(Duration::from_secs(15), fut).await.expect("request finished within 15 s")
}

pub async fn get(pool: &WorkerPool, app: &Arc<App>, path: &str) -> Reply {
    match call(pool, app, "GET", path, "").await {
        Ok(r) => r,
        Err(e) => panic!("GET {path} on {} failed: {} {} {}", app.key(), e.status(), e.code(), e.message()),
    }
}

/// Whether a process is gone (no such pid, or a zombie nobody reaped yet).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
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

/// A minimal front server on 127.0.0.1: every request goes to `app` through `dispatch`, errors
/// as their JSON body, upgrades (WebSocket) passed through.
pub async fn front(pool: Arc<WorkerPool>, app: Arc<App>) -> std::net::SocketAddr {
    use hyper::body::Incoming;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let _ = s.set_nodelay(true);
            let (pool, app) = (pool.clone(), app.clone());
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (pool, app) = (pool.clone(), app.clone());
                async move {
                    let resp = match pool.dispatch(app, req.map(body::boxed)).await {
                        Ok(r) => r,
                        Err(e) => http::Response::builder()
                            .status(e.status())
                            .body(body::full(e.to_json().to_string()))
                            .unwrap(),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .with_upgrades(),
            );
        }
    });
    addr
}
