//! What a wasm guest exchanges with the outside besides its answer: its stdout and stderr
//! (into marina's log, bounded like a process worker's output) and a request body that a slow
//! client sends (the client's time is not the guest's: `timeout` counts the guest's own time,
//! `RUNTIME_BODY_TIMEOUT` bounds the upload). Its own binary: the output test measures the
//! process's memory, which other tests' instances would disturb.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use marina_core::body;

/// Resident memory of this test process, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_goes_to_the_log_bounded_in_memory_and_rate() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "printer", guest(), |_| {});
    get(&pool, &app, "/").await; // compiled and warm
    let before = rss();
    let r = get(&pool, &app, "/print").await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "printed"));
    // 128 MiB without a newline: logged as one line cut at 16 KiB, never held whole.
    let grown = rss().saturating_sub(before);
    assert!(grown < 48 * 1024 * 1024, "marina's memory grew by {grown} bytes while the guest printed 128 MiB");
    // 5,000 lines at once: past the burst, the rate limit drops lines and /api/workers counts them.
    let rows = pool.workers();
    let row = rows.iter().find(|w| w.app == "printer").expect("a row for the wasm app");
    assert!(row.log_lines_dropped >= 3000, "{} of 5,000 lines dropped", row.log_lines_dropped);
    assert!(row.log_lines_dropped < 5000, "every line dropped");
    pool.shutdown(Duration::from_secs(2)).await;
}

/// Sends `chunks` pieces of 10 bytes, one every `every`, as the body of `POST /drain`.
async fn slow_upload(
    pool: &marina_workers::WorkerPool,
    app: &std::sync::Arc<marina_apps::App>,
    chunks: usize,
    every: Duration,
) -> Result<(StatusCode, String), marina_core::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let req = http::Request::post("/drain").body(body::boxed(StreamBody::new(stream))).unwrap();
    tokio::spawn(async move {
        for _ in 0..chunks {
            tokio::time::sleep(every).await;
            if tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"0123456789")))).await.is_err() {
                return;
            }
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(30), pool.dispatch(app.clone(), req))
        .await
        .expect("answered within 30 s")?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_count_against_the_guests_timeout() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |_| {});
    let app = wasm_app(state.path(), "drain", guest(), |c| c.timeout = Duration::from_millis(500));
    get(&pool, &app, "/").await; // compiled and warm
    // 8 pieces 250 ms apart: 2 s of upload against a 500 ms timeout.
    let started = Instant::now();
    let (status, text) = slow_upload(&pool, &app, 8, Duration::from_millis(250)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500), "the upload really was slow");
    assert_eq!((status, text.as_str()), (StatusCode::OK, "80"));
    // The guest's own time still counts: a loop after a body is stopped.
    let req = http::Request::post("/loop").body(body::full("a body the guest never reads")).unwrap();
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(15), pool.dispatch(app.clone(), req)).await.unwrap().unwrap_err();
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT, "{} {}", e.code(), e.message());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_the_body_timeout_is_408_and_not_the_guests_fault() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), |o| o.body_timeout = Duration::from_secs(1));
    let app = wasm_app(state.path(), "drain", guest(), |c| c.timeout = Duration::from_secs(20));
    get(&pool, &app, "/").await; // compiled and warm
    // One piece a second for 30 s would take far past RUNTIME_BODY_TIMEOUT (1 s).
    let started = Instant::now();
    let e = slow_upload(&pool, &app, 30, Duration::from_millis(400)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (StatusCode::REQUEST_TIMEOUT, "REQUEST_BODY_TIMEOUT"), "{}", e.message());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // The worker is not blamed and keeps serving.
    assert_eq!(get(&pool, &app, "/").await.text, "hello from wasm");
    let rows = pool.workers();
    let row = rows.iter().find(|w| w.app == "drain").unwrap();
    assert_eq!((row.restarts, row.errors), (0, 0), "not blamed: {row:?}");
    pool.shutdown(Duration::from_secs(2)).await;
}
