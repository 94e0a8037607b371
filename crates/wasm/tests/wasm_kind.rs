//! The wasm kind through the worker pool, with a real component built from tests/guest.wat and
//! run by wasmtime: answers, env, streaming, traps, deadlines, memory, outbound HTTP, reuse.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use marina_core::body;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_env_and_a_worker_row() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "hello", guest(), |c| {
        c.env.insert("GREETING".into(), "hi from the manifest".into());
    });
    let r = get(&pool, &app, "/").await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "hello from wasm"));
    assert_eq!(get(&pool, &app, "/greet").await.text, "hi from the manifest");

    let rows = pool.workers();
    let row = rows.iter().find(|w| w.app == "hello").expect("a row for the wasm app");
    assert_eq!((row.kind, row.pid, row.ephemeral, row.requests), ("wasm", None, false, 2));
    assert!(matches!(row.state, "ready" | "busy"), "{}", row.state);
    assert!(row.rss_bytes.is_some());
    // Compiled once, cached on disk for the next start.
    assert_eq!(cache_files(state.path()).len(), 1);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_stream() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "echo", guest(), |_| {});

    // Chunk by chunk: each chunk comes back before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let req = http::Request::post("/echo").body(body::boxed(StreamBody::new(stream))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), pool.dispatch(app.clone(), req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp_body = resp.into_body();
    for i in 0..3 {
        let chunk = format!("chunk {i};");
        tx.send(Ok(http_body::Frame::data(Bytes::from(chunk.clone())))).await.unwrap();
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = tokio::time::timeout(Duration::from_secs(10), resp_body.frame())
                .await
                .expect("the echo arrives before the request ends")
                .unwrap()
                .unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(String::from_utf8(got).unwrap(), chunk);
    }
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(10), resp_body.collect()).await.unwrap().unwrap();
    assert!(rest.to_bytes().is_empty());

    // A large body, echoed byte for byte.
    let big: String = (0..400_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let r = call(&pool, &app, "POST", "/echo", &big).await.unwrap();
    assert_eq!(r.text.len(), big.len());
    assert!(r.text == big, "the echo differs");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_a_500_and_the_next_request_is_served() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "trap", guest(), |_| {});
    let e = get_err(&pool, &app, "/trap").await;
    assert_eq!((e.status(), e.code()), (StatusCode::INTERNAL_SERVER_ERROR, "WORKER_TRAPPED"));
    assert!(e.message().contains("trap"), "{}", e.message());
    let json = e.to_json();
    assert_eq!(json["success"], false);
    assert!(json["data"]["trap"].as_str().unwrap().contains("unreachable"), "{json}");
    assert_eq!(get(&pool, &app, "/").await.text, "hello from wasm");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_a_504_within_the_deadline() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "loop", guest(), |c| c.timeout = Duration::from_millis(300));
    get(&pool, &app, "/").await; // compiled and warm
    let started = Instant::now();
    let e = get_err(&pool, &app, "/loop").await;
    let took = started.elapsed();
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT, "{} {}", e.code(), e.message());
    // The deadline is 300 ms; the bound is generous for a loaded machine.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(get(&pool, &app, "/").await.text, "hello from wasm");
    pool.shutdown(Duration::from_secs(2)).await;
}

/// A guest computing without pause yields every tick in a way that lets the thread's timers
/// and I/O run before it resumes: on a single-threaded runtime (per-thread scheduling's
/// connection threads, `RUNTIME_THREADS=1`) the other requests on the thread go on. With a
/// yield that only re-queues the guest, tokio looks at timers and I/O every 61st tick: 610 ms.
#[tokio::test(flavor = "current_thread")]
async fn a_computing_guest_lets_the_thread_s_timers_and_io_run() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "loop", guest(), |c| c.timeout = Duration::from_secs(4));
    get(&pool, &app, "/").await; // compiled and warm
    let looping = tokio::spawn({
        let (pool, app) = (pool.clone(), app.clone());
        async move { get_err(&pool, &app, "/loop").await }
    });
    // Until the guest is running (its request is in flight), then a few short timers beside it.
    assert!(eventually(Duration::from_secs(10), || pool.workers().iter().any(|w| w.in_flight > 0)).await);
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        slowest = slowest.max(t0.elapsed());
    }
    assert!(!looping.is_finished(), "the guest stopped computing before the timers were measured");
    // 20 ms asked; 10 ms ticks; the bound is generous for a loaded machine and far under 610 ms.
    assert!(slowest < Duration::from_millis(300), "a 20 ms timer beside a computing guest took {slowest:?}");
    let e = looping.await.unwrap();
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT, "{} {}", e.code(), e.message());
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_at_max_memory() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "bomb", guest(), |c| c.max_memory = Some(4 * 1024 * 1024));
    let e = get_err(&pool, &app, "/bomb").await;
    assert_eq!((e.status(), e.code()), (StatusCode::BAD_GATEWAY, "WORKER_MEMORY_LIMIT"));
    assert_eq!(e.data().unwrap()["maxMemoryBytes"], 4 * 1024 * 1024);
    assert_eq!(get(&pool, &app, "/").await.text, "hello from wasm");
    // Without maxMemory the pool's own ceiling (1 GiB) stops it; the guest then traps.
    let free = wasm_app(state.path(), "bomb-free", guest(), |_| {});
    let e = get_err(&pool, &free, "/bomb").await;
    assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    pool.shutdown(Duration::from_secs(2)).await;
}

/// A loopback HTTP server counting the requests it gets.
async fn counting_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            let svc = hyper::service::service_fn(move |_req| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")))) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc),
            );
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_is_denied_unless_granted() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let (port, hits) = counting_server().await;
    let target = format!("/out/127.0.0.1:{port}");

    let closed = wasm_app(state.path(), "closed", guest(), |_| {});
    assert_eq!(get(&pool, &closed, &target).await.status, StatusCode::FORBIDDEN);
    let other_port = wasm_app(state.path(), "other-port", guest(), |c| {
        c.allowed_outbound_hosts = vec![format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1))];
    });
    assert_eq!(get(&pool, &other_port, &target).await.status, StatusCode::FORBIDDEN);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a denied request never left marina");

    let open = wasm_app(state.path(), "open", guest(), |c| {
        c.allowed_outbound_hosts = vec![format!("http://127.0.0.1:{port}")];
    });
    assert_eq!(get(&pool, &open, &target).await.status, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_per_request_unless_reuse_is_asked() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let fresh = wasm_app(state.path(), "fresh", guest(), |_| {});
    for _ in 0..5 {
        assert_eq!(get(&pool, &fresh, "/count").await.text, "1");
    }
    // An instance goes back for reuse when its handler returns, just after the response ends,
    // so a request right behind may still get a new one: reuse shows as counts above 1.
    let reused = wasm_app(state.path(), "reused", guest(), |c| c.reuse_instances = true);
    let mut counts = Vec::new();
    for _ in 0..10 {
        counts.push(get(&pool, &reused, "/count").await.text.parse::<u32>().unwrap());
    }
    assert!(counts.iter().any(|&n| n >= 2), "{counts:?}");
    // A trapped instance is dropped; the app keeps serving.
    get_err(&pool, &reused, "/trap").await;
    assert_eq!(get(&pool, &reused, "/").await.text, "hello from wasm");
    pool.shutdown(Duration::from_secs(2)).await;
}

/// A guest whose `handle` returns without answering and keeps its response-outparam (what a
/// componentize-js component does on its second request: it throws "respondWith can't be
/// called twice"). With reuse, the kept store used to keep the outparam alive and the caller
/// waited for ever, past `timeout`; now the request fails at once and the instance is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_returns_without_answering_fails_fast_fresh_or_reused() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let fresh = wasm_app(state.path(), "fresh", guest(), |_| {});
    let reused = wasm_app(state.path(), "reused", guest(), |c| c.reuse_instances = true);
    for app in [&fresh, &reused] {
        for _ in 0..3 {
            let e = tokio::time::timeout(Duration::from_secs(20), get_err(&pool, app, "/nothing"))
                .await
                .unwrap_or_else(|_| panic!("{}: /nothing hung instead of failing", app.key()));
            assert_eq!((e.status(), e.code()), (StatusCode::INTERNAL_SERVER_ERROR, "WORKER_TRAPPED"), "{e:?}");
            assert!(e.to_string().contains("without setting a response"), "{e}");
            // And the app goes on serving.
            let n = get(&pool, app, "/count").await.text;
            assert!(n.parse::<u32>().is_ok(), "{}: {n}", app.key());
        }
    }
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_example_builds_and_answers() {
    let wat = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/apps/hello-wasm/hello.wat"))
        .unwrap();
    let component = marina_wasm::component::component_from_wat(&wat).unwrap();
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "hello-wasm", &component, |_| {});
    let r = get(&pool, &app, "/anything").await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "hello from a wasm component\n"));
    pool.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn bad_wat_is_a_clear_error() {
    // No handler exported: the message names the export that is missing.
    let e = marina_wasm::component::component_from_wat("(module)").unwrap_err();
    assert!(format!("{e:#}").contains("wasi:http/incoming-handler@0.2.12"), "{e:#}");
    let e = marina_wasm::component::component_from_wat("(module (import \"nope\" \"f\" (func)))").unwrap_err();
    assert!(format!("{e:#}").contains("nope"), "{e:#}");
    let e = marina_wasm::component::component_from_wat("(modul").unwrap_err();
    assert!(format!("{e:#}").contains("does not parse"), "{e:#}");
}
