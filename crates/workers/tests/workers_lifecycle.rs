//! Lifecycle rules with real Node workers: ttl, LRU, ephemeral gate, maxRequests, timeout,
//! crash and crash loop, idle, memory limit, instances, shutdown.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A file the app writes its lifecycle events to: in its private data dir, the one place
/// besides its tmp dir a worker may write.
fn marker(state: &tempfile::TempDir, app: &str) -> (String, std::path::PathBuf) {
    let p = state.path().join("workers").join(app).join("data/marker.log");
    (p.display().to_string(), p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_slides_then_retires_with_on_terminate() {
    let state = tempfile::tempdir().unwrap();
    let (m, mpath) = marker(&state, "ttl");
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app("ttl", "js-echo", "index.js", |c| {
        c.ttl = Duration::from_millis(1000);
        c.timeout = Duration::from_millis(1000);
        c.env.insert("MARKER_FILE".into(), m);
    });
    let first = get(&pool, &app, "/pid").await.text;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(get(&pool, &app, "/pid").await.text, first, "each hit slides the ttl");
    }
    assert!(eventually(Duration::from_secs(4), || pool.workers().is_empty()).await, "retired after ttl");
    let log = std::fs::read_to_string(&mpath).unwrap_or_default();
    assert!(log.contains(&format!("terminate {first}")), "onTerminate ran: {log:?}");
    assert!(gone(first.parse().unwrap()));
    assert_ne!(get(&pool, &app, "/pid").await.text, first, "a fresh worker after retirement");
    let m = pool.metrics();
    assert_eq!((m.total_workers_created, m.total_workers_retired), (2, 1));
    assert!(m.hits >= 3 && m.misses == 2, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_is_bounded_by_pool_size() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |o| o.pool_size = 2);
    let apps: Vec<_> = ["a", "b", "c"].iter().map(|n| js_app(n, "js-echo", "index.js", |_| {})).collect();
    let a_pid: u32 = get(&pool, &apps[0], "/pid").await.text.parse().unwrap();
    get(&pool, &apps[1], "/pid").await;
    get(&pool, &apps[0], "/pid").await; // a is now most recently used; b is the LRU
    let b_pid: u32 = pool.workers().iter().find(|w| w.app == "b").unwrap().pid.unwrap();
    get(&pool, &apps[2], "/pid").await;
    assert_eq!(pool.metrics().evictions, 1);
    assert!(eventually(Duration::from_secs(4), || gone(b_pid)).await, "the LRU app's worker stopped");
    assert!(!gone(a_pid));
    let mut names: Vec<_> = pool.workers().iter().map(|w| w.app.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_gets_a_fresh_worker_and_the_gate_answers_503() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |o| {
        o.ephemeral_concurrency = 1;
        o.ephemeral_queue_limit = 1;
    });
    let app = js_app("eph", "js-echo", "index.js", |c| c.ttl = Duration::ZERO);
    let p1 = get(&pool, &app, "/pid").await.text;
    let p2 = get(&pool, &app, "/pid").await.text;
    assert_ne!(p1, p2, "ttl: 0 is one worker per request");
    assert!(eventually(Duration::from_secs(3), || gone(p1.parse().unwrap()) && gone(p2.parse().unwrap())).await);
    let sockets = || std::fs::read_dir(state.path().join("sock")).unwrap().count();
    assert!(eventually(Duration::from_secs(3), || sockets() == 0).await, "sockets of stopped workers are removed");

    let slow = |pool: Arc<marina_workers::pool::WorkerPool>, app| async move {
        call(&pool, &app, "GET", "/slow?ms=800", "").await
    };
    let running = tokio::spawn(slow(pool.clone(), app.clone()));
    assert!(eventually(Duration::from_secs(3), || pool.metrics().ephemeral_active == 1).await);
    // Buntime's `ephemeralConcurrency` is the configured limit, not the number running.
    let m = serde_json::to_value(pool.metrics()).unwrap();
    assert_eq!((m["ephemeralConcurrency"].as_u64(), m["ephemeralActive"].as_u64()), (Some(1), Some(1)));
    let queued = tokio::spawn(slow(pool.clone(), app.clone()));
    assert!(eventually(Duration::from_secs(3), || pool.metrics().ephemeral_queue_depth == 1).await);
    let err = call(&pool, &app, "GET", "/pid", "").await.err().expect("the third is refused");
    assert_eq!((err.status().as_u16(), err.code()), (503, "EPHEMERAL_WORKER_QUEUE_SATURATED"));
    let data = err.data().unwrap();
    assert_eq!(
        (data["active"].as_u64(), data["maxConcurrency"].as_u64(), data["maxQueue"].as_u64(), data["pending"].as_u64()),
        (Some(1), Some(1), Some(1), Some(1))
    );
    assert_eq!(running.await.unwrap().unwrap().text, "slow done");
    assert_eq!(queued.await.unwrap().unwrap().text, "slow done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_spares_start_ahead_serve_one_request_each_and_stop_on_reload() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |o| o.ephemeral_spares = 1);
    let app = js_app("spare", "js-echo", "index.js", |c| c.ttl = Duration::ZERO);
    let first: u32 = get(&pool, &app, "/pid").await.text.parse().unwrap();
    // A never-used worker is started ahead and waits, ready, for the next request.
    let spare = |not: u32| {
        pool.workers()
            .iter()
            .find(|w| w.ephemeral && w.state == "ready" && w.requests == 0 && w.pid != Some(not))
            .and_then(|w| w.pid)
    };
    assert!(eventually(Duration::from_secs(5), || spare(first).is_some()).await, "a spare is ready");
    let ahead = spare(first).unwrap();
    let second: u32 = get(&pool, &app, "/pid").await.text.parse().unwrap();
    assert_eq!(second, ahead, "the request was served by the worker started ahead");
    assert!(eventually(Duration::from_secs(3), || gone(first) && gone(second)).await, "each served one request");
    assert!(eventually(Duration::from_secs(5), || spare(second).is_some()).await, "its replacement is ready");
    let next = spare(second).unwrap();
    assert!(eventually(Duration::from_secs(3), || pool.workers().len() == 1).await, "one spare: {:?}", pool.workers());
    pool.reload(app.clone(), "test");
    assert!(eventually(Duration::from_secs(3), || gone(next)).await, "the spare is stopped on reload");
    assert!(eventually(Duration::from_secs(3), || pool.workers().is_empty()).await);
}

/// Requests spread over many `ttl: 0` apps keep spares for at most 4 of them (the most
/// recently asked): a client cannot keep an idle process alive per app it touches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_are_kept_for_four_apps_at_most() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |o| o.ephemeral_spares = 1);
    let apps: Vec<_> =
        (0..6).map(|i| js_app(&format!("many{i}"), "js-echo", "index.js", |c| c.ttl = Duration::ZERO)).collect();
    for app in &apps {
        get(&pool, app, "/pid").await;
    }
    let spare_apps = || {
        let mut keys: Vec<String> = pool
            .workers()
            .iter()
            .filter(|w| w.ephemeral && w.requests == 0 && w.state != "draining" && w.state != "stopped")
            .map(|w| w.app.clone())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };
    assert!(
        eventually(Duration::from_secs(10), || spare_apps() == ["many2", "many3", "many4", "many5"]).await,
        "spares for the four most recent apps only: {:?}",
        pool.workers().iter().map(|w| (&w.app, &w.state, w.requests)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_after_draining_in_flight() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app("maxreq", "js-echo", "index.js", |c| c.max_requests = 3);
    let p = get(&pool, &app, "/pid").await.text;
    assert_eq!(get(&pool, &app, "/pid").await.text, p);
    // The third request reaches the limit while in flight: it still completes.
    let r = get(&pool, &app, "/slow?ms=400").await;
    assert_eq!(r.text, "slow done");
    assert_ne!(get(&pool, &app, "/pid").await.text, p, "recycled after maxRequests");
    assert!(eventually(Duration::from_secs(4), || gone(p.parse().unwrap())).await);
    let w = pool.workers();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].restarts, 1);
    assert!(w[0].last_restart_reason.as_deref().unwrap().contains("maxRequests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_answers_504_and_kills_a_hung_worker_within_a_second() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    // 2 s rather than less: the request after the kill goes to a freshly started Node process,
    // whose first answer can take most of a second on a loaded 2-core CI machine.
    let app = js_app("hang", "js-echo", "index.js", |c| c.timeout = Duration::from_secs(2));
    let pid: u32 = get(&pool, &app, "/pid").await.text.parse().unwrap();
    let started = Instant::now();
    let err = call(&pool, &app, "GET", "/hang", "").await.err().expect("timeout");
    let took = started.elapsed();
    assert_eq!((err.status().as_u16(), err.code()), (504, "WORKER_TIMEOUT"));
    assert!(took >= Duration::from_millis(1980) && took < Duration::from_millis(3000), "{took:?}");
    assert!(eventually(Duration::from_secs(1), || gone(pid)).await, "the looping worker is gone within 1 s");
    let next: u32 = get(&pool, &app, "/pid").await.text.parse().unwrap();
    assert_ne!(next, pid);
    let w = pool.workers();
    assert_eq!(w[0].restarts, 1);
    assert!(w[0].last_restart_reason.as_deref().unwrap().starts_with("timeout"), "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_gives_502_then_a_fresh_worker_and_repeats_back_off() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app("crashy", "js-echo", "index.js", |_| {});
    let pid = get(&pool, &app, "/pid").await.text;
    let err = call(&pool, &app, "GET", "/crash", "").await.err().expect("crash");
    assert_eq!((err.status().as_u16(), err.code()), (502, "WORKER_CRASHED"), "{}", err.message());
    assert!(err.message().contains("exit status: 7"), "{}", err.message());
    let pid2 = get(&pool, &app, "/pid").await.text;
    assert_ne!(pid, pid2, "the next request gets a fresh worker at once");

    // A second crash soon after: the app backs off and shows as crashloop.
    let err = call(&pool, &app, "GET", "/crash", "").await.err().unwrap();
    assert_eq!(err.code(), "WORKER_CRASHED");
    assert!(
        eventually(Duration::from_secs(1), || pool.workers().iter().any(|w| w.state == "crashloop")).await,
        "{:?}",
        pool.workers()
    );
    let err = call(&pool, &app, "GET", "/pid", "").await.err().expect("backing off");
    assert_eq!((err.status().as_u16(), err.code()), (503, "WORKER_CRASHLOOP"));
    let info = pool.workers().into_iter().find(|w| w.state == "crashloop").unwrap();
    assert_eq!(info.restarts, 2);
    assert!(info.last_restart_reason.unwrap().contains("crashed"));
    // After the back-off (250 ms for the second crash) it serves again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&pool, &app, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_calls_on_idle_once_and_keeps_the_worker() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app("idle", "js-echo", "index.js", |c| c.idle_timeout = Duration::from_millis(300));
    let pid = get(&pool, &app, "/pid").await.text;
    assert!(eventually(Duration::from_secs(2), || pool.workers().first().is_some_and(|w| w.state == "idle")).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&pool, &app, "/idle-calls").await.text, "1", "onIdle once per idle period");
    assert_eq!(get(&pool, &app, "/pid").await.text, pid, "idle does not stop the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_kills_a_worker_within_about_a_second() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app("fat", "js-echo", "index.js", |c| c.max_memory = Some(120 * 1024 * 1024));
    let pid: u32 = get(&pool, &app, "/pid").await.text.parse().unwrap();
    // With a memory cgroup the kernel stops it mid-request (502 WORKER_MEMORY_LIMIT); with
    // sampling the request may finish first and the next sample kills it.
    match call(&pool, &app, "GET", "/grow", "").await {
        Ok(r) => assert!(r.text.starts_with("holding 160"), "{}", r.text),
        Err(e) => assert_eq!((e.status().as_u16(), e.code()), (502, "WORKER_MEMORY_LIMIT"), "{}", e.message()),
    }
    let grown = Instant::now();
    assert!(eventually(Duration::from_secs(3), || gone(pid)).await, "over maxMemory the worker is replaced");
    assert!(grown.elapsed() < Duration::from_millis(2500), "{:?}", grown.elapsed());
    let next: u32 = get(&pool, &app, "/pid").await.text.parse().unwrap();
    assert_ne!(next, pid);
    let w = pool.workers();
    assert!(w[0].last_restart_reason.as_deref().unwrap().contains("maxMemory"), "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_spread_concurrent_requests() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app("multi", "js-echo", "index.js", |c| {
        c.instances = marina_apps::manifest::Instances { min: 2, max: 3 };
    });
    get(&pool, &app, "/").await;
    assert!(
        eventually(Duration::from_secs(5), || pool.workers().iter().filter(|w| w.state == "ready").count() == 2).await,
        "min instances started"
    );
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (p, a) = (pool.clone(), app.clone());
        tasks.push(tokio::spawn(async move { call(&p, &a, "GET", "/slow?ms=600", "").await.unwrap().status }));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let w = pool.workers();
    assert_eq!(w.len(), 3, "max instances used under load: {w:?}");
    assert!(w.iter().all(|w| w.requests >= 1), "{w:?}");
}

/// A failed reload's error stays while the old workers serve, and goes once a worker of the
/// same app starts from newer files: here one the slot adds under load, after the code was
/// fixed and before any reload of that fix (live_reload's broken-edit test once saw `v3`
/// served with the broken edit's error still shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_after_a_failed_reload_clears_its_error() {
    let state = tempfile::tempdir().unwrap();
    let code = tempfile::tempdir().unwrap();
    let entry = code.path().join("index.js");
    let serving = |v: &str| {
        format!(
            "export default {{ async fetch(req) {{ const ms = Number(new URL(req.url).searchParams.get('ms') ?? 0); \
             await new Promise((r) => setTimeout(r, ms)); return new Response('{v}'); }} }};\n"
        )
    };
    std::fs::write(&entry, serving("v1")).unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app_in("fixable", code.path().to_path_buf(), "index.js", |c| {
        c.instances = marina_apps::manifest::Instances { min: 1, max: 2 };
    });
    assert_eq!(get(&pool, &app, "/").await.text, "v1");

    std::fs::write(&entry, "export default { fetch( ").unwrap();
    pool.reload(app.clone(), "index.js changed");
    assert!(
        eventually(Duration::from_secs(10), || pool.reload_error(app.key()).is_some()).await,
        "the broken edit's reload fails"
    );
    assert_eq!(get(&pool, &app, "/").await.text, "v1", "the old worker keeps serving");
    assert!(pool.reload_error(app.key()).is_some(), "a request to the old worker does not clear it");

    // Fixed, but no reload yet: a second request while the first worker is busy starts a
    // worker, which reads the fixed code.
    std::fs::write(&entry, serving("v2")).unwrap();
    let busy = {
        let (p, a) = (pool.clone(), app.clone());
        tokio::spawn(async move { call(&p, &a, "GET", "/?ms=1500", "").await.unwrap().text })
    };
    assert!(
        eventually(Duration::from_secs(5), || pool.workers().iter().any(|w| w.app == "fixable" && w.in_flight > 0))
            .await
    );
    assert_eq!(get(&pool, &app, "/").await.text, "v2");
    assert_eq!(pool.reload_error(app.key()), None, "the error of the broken edit is cleared");
    assert_eq!(busy.await.unwrap(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_runs_on_terminate_drains_and_kills() {
    let state = tempfile::tempdir().unwrap();
    let (m, mpath) = marker(&state, "js");
    let pool = pool(state.path(), None, |_| {});
    let js = js_app("js", "js-echo", "index.js", |c| {
        c.env.insert("MARKER_FILE".into(), m);
    });
    let py = py_app("py", |_| {});
    let js_pid: u32 = get(&pool, &js, "/pid").await.text.parse().unwrap();
    let py_pid: u32 = get(&pool, &py, "/pid").await.text.parse().unwrap();
    let (p, a) = (pool.clone(), js.clone());
    let in_flight = tokio::spawn(async move { call(&p, &a, "GET", "/slow?ms=500", "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    pool.shutdown(Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(in_flight.await.unwrap().unwrap().text, "slow done", "in-flight request drained");
    assert!(gone(js_pid) && gone(py_pid));
    assert!(std::fs::read_to_string(&mpath).unwrap().contains(&format!("terminate {js_pid}")));
    let err = call(&pool, &js, "GET", "/", "").await.err().unwrap();
    assert_eq!((err.status().as_u16(), err.code()), (503, "SHUTTING_DOWN"));
    pool.shutdown(Duration::from_secs(1)).await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_start_releases_the_ephemeral_worker() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |o| o.ephemeral_concurrency = 1);
    let app = js_app("gone", "js-echo", "index.js", |c| c.ttl = Duration::ZERO);
    // Give up almost at once: the worker is still starting.
    let r = tokio::time::timeout(Duration::from_millis(5), call(&pool, &app, "GET", "/pid", "")).await;
    assert!(r.is_err(), "the request was meant to be abandoned while starting");
    assert!(
        eventually(Duration::from_secs(5), || pool.workers().is_empty()).await,
        "the abandoned ephemeral worker is stopped: {:?}",
        pool.workers()
    );
    assert_eq!(pool.metrics().ephemeral_active, 0, "and its gate slot is free");
    assert_eq!(get(&pool, &app, "/").await.status, 200);
}
