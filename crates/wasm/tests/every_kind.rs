//! The pool's lifecycle rules, run the same way against every kind behind the backend seam:
//! a JavaScript worker (Node, `crates/workers/tests/apps/js-echo`), a process worker (Python,
//! `py-echo`) and a wasm component (`tests/guest.wat`). Each scenario only uses what all three
//! share: `/` answers 200, `/slow?ms=N` answers "slow done" after N ms without spinning, and the
//! pool's own view (`workers()` rows, `metrics()`), never a process id.
//!
//! The `static` kind is not here: it runs with `Policy::Shared` (one site per app version,
//! no workers to start, recycle or time out), so these rules do not apply to it.
//!
//! What differs by kind is tested next to the kind: crashes, hooks and memory kills of
//! processes in `crates/workers/tests/workers_lifecycle.rs`; traps, deadlines inside the guest
//! and memory limits of wasm instances in `wasm_kind.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use marina_apps::manifest::{AppConfig, Instances};
use marina_apps::{App, WorkerKind};
use marina_workers::WorkerPool;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Js,
    Process,
    Wasm,
}

const KINDS: [Kind; 3] = [Kind::Js, Kind::Process, Kind::Wasm];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workers/tests/apps").join(name)
}

/// An app of `kind` named `name` (`ttl: 30s` unless `tweak` says otherwise); wasm apps get
/// their component written under `state`.
fn app(kind: Kind, state: &Path, name: &str, tweak: impl FnOnce(&mut AppConfig)) -> Arc<App> {
    let mut config = AppConfig { ttl: Duration::from_secs(30), ..AppConfig::default() };
    let (dir, entrypoint, kind) = match kind {
        Kind::Wasm => return wasm_app(state, name, guest(), tweak),
        Kind::Js => (fixture("js-echo"), fixture("js-echo").join("index.js"), WorkerKind::Js),
        Kind::Process => {
            config.command = Some(vec!["python3".into(), "app.py".into()]);
            (fixture("py-echo"), fixture("py-echo").join("app.py"), WorkerKind::Process)
        }
    };
    tweak(&mut config);
    Arc::new(App {
        name: name.into(),
        version: "1.0.0".into(),
        entrypoint,
        dir,
        kind,
        config: Arc::new(config),
        proxy: Default::default(),
        key: App::key_of(name, "1.0.0"),
        migrated: Default::default(),
    })
}

/// A pool that runs all kinds (JavaScript under Node), its state in `state`.
fn kinds_pool(state: &Path, tweak: impl FnOnce(&mut marina_workers::PoolOptions)) -> Arc<WorkerPool> {
    pool(state, |o| {
        o.js_runtime = Some("node".into());
        tweak(o);
    })
}

fn ids(pool: &WorkerPool, app: &str) -> Vec<String> {
    pool.workers().into_iter().filter(|w| w.app == app && !w.id.is_empty()).map(|w| w.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_slides_then_the_worker_retires() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |_| {});
        let app = app(kind, state.path(), "ttl", |c| c.ttl = Duration::from_millis(1500));
        assert_eq!(get(&pool, &app, "/").await.status, StatusCode::OK, "{kind:?}");
        let first = ids(&pool, "ttl");
        assert_eq!(first.len(), 1, "{kind:?}: {first:?}");
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            get(&pool, &app, "/").await;
            assert_eq!(ids(&pool, "ttl"), first, "{kind:?}: each hit slides the ttl");
        }
        assert!(eventually(Duration::from_secs(6), || ids(&pool, "ttl").is_empty()).await, "{kind:?}: retired");
        get(&pool, &app, "/").await;
        let second = ids(&pool, "ttl");
        assert!(second.len() == 1 && second != first, "{kind:?}: a fresh worker after retirement: {second:?}");
        let m = pool.metrics();
        assert_eq!((m.total_workers_created, m.total_workers_retired, m.misses), (2, 1, 2), "{kind:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lru_is_bounded_by_pool_size() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |o| o.pool_size = 2);
        let apps: Vec<_> = ["a", "b", "c"].iter().map(|n| app(kind, state.path(), n, |_| {})).collect();
        get(&pool, &apps[0], "/").await;
        get(&pool, &apps[1], "/").await;
        get(&pool, &apps[0], "/").await; // a is now the most recently used; b the least
        let a = ids(&pool, "a");
        get(&pool, &apps[2], "/").await;
        assert_eq!(pool.metrics().evictions, 1, "{kind:?}");
        assert!(eventually(Duration::from_secs(5), || ids(&pool, "b").is_empty()).await, "{kind:?}: b evicted");
        assert_eq!(ids(&pool, "a"), a, "{kind:?}: a kept its worker");
        let mut names: Vec<_> = pool.workers().into_iter().map(|w| w.app).collect();
        names.sort();
        assert_eq!(names, ["a", "c"], "{kind:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_is_a_worker_per_request_behind_the_ephemeral_gate() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |o| {
            o.ephemeral_concurrency = 1;
            o.ephemeral_queue_limit = 1;
        });
        let app = app(kind, state.path(), "eph", |c| c.ttl = Duration::ZERO);
        get(&pool, &app, "/").await;
        get(&pool, &app, "/").await;
        assert!(eventually(Duration::from_secs(5), || pool.workers().is_empty()).await, "{kind:?}: none stays");
        let m = pool.metrics();
        assert_eq!((m.total_workers_created, m.total_workers_retired), (2, 2), "{kind:?}");

        let slow =
            |pool: Arc<WorkerPool>, app: Arc<App>| async move { call(&pool, &app, "GET", "/slow?ms=800", "").await };
        let running = tokio::spawn(slow(pool.clone(), app.clone()));
        assert!(eventually(Duration::from_secs(5), || pool.metrics().ephemeral_active == 1).await, "{kind:?}");
        let queued = tokio::spawn(slow(pool.clone(), app.clone()));
        assert!(eventually(Duration::from_secs(5), || pool.metrics().ephemeral_queue_depth == 1).await, "{kind:?}");
        let e = get_err(&pool, &app, "/").await;
        assert_eq!((e.status().as_u16(), e.code()), (503, "EPHEMERAL_WORKER_QUEUE_SATURATED"), "{kind:?}");
        assert_eq!(running.await.unwrap().unwrap().text, "slow done", "{kind:?}");
        assert_eq!(queued.await.unwrap().unwrap().text, "slow done", "{kind:?}");
        assert!(eventually(Duration::from_secs(5), || pool.workers().is_empty()).await, "{kind:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_after_the_last_request_finishes() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |_| {});
        let app = app(kind, state.path(), "maxreq", |c| c.max_requests = 3);
        get(&pool, &app, "/").await;
        let first = ids(&pool, "maxreq");
        get(&pool, &app, "/").await;
        // The third request reaches the limit while in flight: it still completes.
        assert_eq!(get(&pool, &app, "/slow?ms=400").await.text, "slow done", "{kind:?}");
        get(&pool, &app, "/").await;
        assert!(
            eventually(Duration::from_secs(5), || {
                let now = ids(&pool, "maxreq");
                !now.is_empty() && now.iter().all(|id| !first.contains(id))
            })
            .await,
            "{kind:?}: recycled after maxRequests: {:?}",
            pool.workers()
        );
        let rows = pool.workers();
        assert_eq!(rows[0].restarts, 1, "{kind:?}: {rows:?}");
        assert!(rows[0].last_restart_reason.as_deref().unwrap_or("").contains("maxRequests"), "{kind:?}: {rows:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_timeout_is_a_504_and_the_app_serves_on() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |_| {});
        let app = app(kind, state.path(), "slow", |c| c.timeout = Duration::from_millis(1500));
        get(&pool, &app, "/").await;
        let started = Instant::now();
        let e = get_err(&pool, &app, "/slow?ms=10000").await;
        let took = started.elapsed();
        assert_eq!((e.status().as_u16(), e.code()), (504, "WORKER_TIMEOUT"), "{kind:?}: {}", e.message());
        assert!(took >= Duration::from_millis(1450) && took < Duration::from_secs(5), "{kind:?}: {took:?}");
        // A process worker is killed and replaced; a wasm worker loses only that instance.
        assert_eq!(get(&pool, &app, "/").await.status, StatusCode::OK, "{kind:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_show_as_idle_and_stay() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |_| {});
        let app = app(kind, state.path(), "idle", |c| c.idle_timeout = Duration::from_millis(300));
        get(&pool, &app, "/").await;
        let first = ids(&pool, "idle");
        assert!(
            eventually(Duration::from_secs(5), || pool.workers().first().is_some_and(|w| w.state == "idle")).await,
            "{kind:?}: {:?}",
            pool.workers()
        );
        get(&pool, &app, "/").await;
        assert_eq!(ids(&pool, "idle"), first, "{kind:?}: idle does not stop the worker");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_spread_concurrent_requests() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |_| {});
        let app = app(kind, state.path(), "multi", |c| c.instances = Instances { min: 2, max: 3 });
        get(&pool, &app, "/").await;
        assert!(
            eventually(Duration::from_secs(10), || pool.workers().iter().filter(|w| w.state == "ready").count() == 2)
                .await,
            "{kind:?}: min instances started: {:?}",
            pool.workers()
        );
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (p, a) = (pool.clone(), app.clone());
            tasks.push(tokio::spawn(async move { call(&p, &a, "GET", "/slow?ms=800", "").await.unwrap().status }));
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK, "{kind:?}");
        }
        let rows = pool.workers();
        assert_eq!(rows.len(), 3, "{kind:?}: max instances used under load: {rows:?}");
        assert!(rows.iter().all(|w| w.requests >= 1), "{kind:?}: {rows:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_start_failures_back_off() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |_| {});
        let app = match kind {
            Kind::Js => {
                let dir = fixture("js-broken");
                let entrypoint = std::fs::read_dir(&dir).unwrap().flatten().next().unwrap().path();
                let js = app(kind, state.path(), "broken", |_| {});
                Arc::new(App { dir, entrypoint, ..(*js).clone() })
            }
            Kind::Process => app(kind, state.path(), "broken", |c| {
                c.command = Some(vec!["/nonexistent/marina-test-program".into()]);
            }),
            Kind::Wasm => wasm_app(state.path(), "broken", b"not a component", |_| {}),
        };
        let e = get_err(&pool, &app, "/").await;
        assert_eq!((e.status().as_u16(), e.code()), (502, "WORKER_START_FAILED"), "{kind:?}: {}", e.message());
        let mut codes = Vec::new();
        for _ in 0..8 {
            let e = get_err(&pool, &app, "/").await;
            codes.push(e.code().to_string());
            if e.code() == "WORKER_CRASHLOOP" {
                assert_eq!(e.status().as_u16(), 503, "{kind:?}");
                break;
            }
        }
        assert_eq!(codes.last().map(String::as_str), Some("WORKER_CRASHLOOP"), "{kind:?}: {codes:?}");
        let rows = pool.workers();
        assert!(rows.iter().any(|w| w.app == "broken" && w.state == "crashloop"), "{kind:?}: {rows:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |_| {});
        let app = app(kind, state.path(), "down", |_| {});
        get(&pool, &app, "/").await;
        let (p, a) = (pool.clone(), app.clone());
        let in_flight = tokio::spawn(async move { call(&p, &a, "GET", "/slow?ms=500", "").await });
        assert!(eventually(Duration::from_secs(5), || pool.workers().iter().any(|w| w.in_flight == 1)).await);
        let started = Instant::now();
        pool.shutdown(Duration::from_secs(3)).await;
        assert!(started.elapsed() < Duration::from_secs(6), "{kind:?}");
        assert_eq!(in_flight.await.unwrap().unwrap().text, "slow done", "{kind:?}: drained");
        assert!(pool.workers().is_empty(), "{kind:?}");
        let e = get_err(&pool, &app, "/").await;
        assert_eq!((e.status().as_u16(), e.code()), (503, "SHUTTING_DOWN"), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_start_releases_the_ephemeral_worker() {
    for kind in KINDS {
        let state = tempfile::tempdir().unwrap();
        let pool = kinds_pool(state.path(), |o| o.ephemeral_concurrency = 1);
        let app = app(kind, state.path(), "gone", |c| c.ttl = Duration::ZERO);
        // Give up almost at once: the worker is still starting (a process spawning, a
        // component compiling).
        let r = tokio::time::timeout(Duration::from_millis(5), call(&pool, &app, "GET", "/", "")).await;
        assert!(r.is_err(), "{kind:?}: the request was meant to be abandoned while starting");
        assert!(
            eventually(Duration::from_secs(5), || pool.workers().is_empty()).await,
            "{kind:?}: the abandoned ephemeral worker is stopped: {:?}",
            pool.workers()
        );
        assert_eq!(pool.metrics().ephemeral_active, 0, "{kind:?}: and its gate slot is free");
        assert_eq!(get(&pool, &app, "/").await.status, StatusCode::OK, "{kind:?}");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}
