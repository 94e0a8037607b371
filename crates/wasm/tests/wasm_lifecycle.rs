//! The pool's lifecycle rules, applied to the wasm kind through the backend seam: ephemeral
//! (`ttl: 0`) workers, `maxRequests` recycling, bad components and the crash back-off, the
//! on-disk compile cache across pools, shutdown.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_zero_is_a_new_worker_per_request_and_none_stays() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "eph", guest(), |c| c.ttl = Duration::ZERO);
    for _ in 0..3 {
        assert_eq!(get(&pool, &app, "/count").await.text, "1");
    }
    assert!(eventually(Duration::from_secs(5), || pool.workers().is_empty()).await, "{:?}", pool.workers());
    let m = pool.metrics();
    assert_eq!((m.total_workers_created, m.total_workers_retired, m.misses), (3, 3, 3));
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_the_worker() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "recycle", guest(), |c| c.max_requests = 2);
    get(&pool, &app, "/").await;
    let first = pool.workers()[0].id.clone();
    get(&pool, &app, "/").await;
    get(&pool, &app, "/").await;
    // The first worker is gone; its successor served the third request (and, being busy
    // towards its own limit, may already have a successor of its own starting).
    assert!(
        eventually(Duration::from_secs(5), || {
            let rows = pool.workers();
            rows.iter().all(|r| r.id != first && r.restarts == 1) && rows.iter().any(|r| r.requests == 1)
        })
        .await,
        "{:?}",
        pool.workers()
    );
    let row = &pool.workers()[0];
    assert!(row.last_restart_reason.as_deref().unwrap().contains("maxRequests"), "{row:?}");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_component_fails_to_start_clearly_and_backs_off() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let garbage = wasm_app(state.path(), "garbage", b"not wasm at all", |_| {});
    let e = get_err(&pool, &garbage, "/").await;
    assert_eq!((e.status(), e.code()), (StatusCode::BAD_GATEWAY, "WORKER_START_FAILED"));
    assert!(e.message().contains("not a valid component"), "{}", e.message());

    // A core module is not a component.
    let core = wasm_app(state.path(), "core", &wat::parse_str("(module)").unwrap(), |_| {});
    let e = get_err(&pool, &core, "/").await;
    assert_eq!(e.code(), "WORKER_START_FAILED");

    // A component that exports no handler is not a wasi:http/proxy component.
    let empty = wasm_app(state.path(), "no-handler", &wat::parse_str("(component)").unwrap(), |_| {});
    let e = get_err(&pool, &empty, "/").await;
    assert!(e.message().contains("wasi:http/proxy"), "{}", e.message());

    // Repeated start failures back off like crashing processes (the back-off doubles, so a
    // slow machine meets it within a few tries).
    let mut codes = Vec::new();
    for _ in 0..6 {
        let e = get_err(&pool, &garbage, "/").await;
        codes.push(e.code().to_string());
        if e.code() == "WORKER_CRASHLOOP" {
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            break;
        }
    }
    assert_eq!(codes.last().map(String::as_str), Some("WORKER_CRASHLOOP"), "{codes:?}");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pool_loads_the_compiled_component_from_disk() {
    let state = tempfile::tempdir().unwrap();
    let first = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "cached", guest(), |_| {});
    get(&first, &app, "/").await;
    first.shutdown(Duration::from_secs(2)).await;
    let files = cache_files(state.path());
    assert_eq!(files.len(), 1);
    let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    let second = pool(state.path(), |_| {});
    assert_eq!(get(&second, &app, "/").await.text, "hello from wasm");
    assert_eq!(cache_files(state.path()), files);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), written, "not compiled again");

    // A cache file that is not a compiled component is replaced, not trusted.
    std::fs::write(&files[0], b"garbage").unwrap();
    let third = pool(state.path(), |_| {});
    assert_eq!(get(&third, &app, "/").await.text, "hello from wasm");
    assert_ne!(std::fs::read(&files[0]).unwrap(), b"garbage");
    second.shutdown(Duration::from_secs(2)).await;
    third.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_wasm_workers_and_refuses_new_requests() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "down", guest(), |_| {});
    get(&pool, &app, "/").await;
    assert_eq!(pool.workers().len(), 1);
    pool.shutdown(Duration::from_secs(2)).await;
    assert!(pool.workers().is_empty());
    let e = get_err(&pool, &app, "/").await;
    assert_eq!(e.code(), "SHUTTING_DOWN");
}
