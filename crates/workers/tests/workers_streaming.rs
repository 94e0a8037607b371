//! Streaming through a real hyper server in front of the pool: a large upload with flat
//! memory, an endless SSE stream, and WebSocket echo through Python and Bun workers.

mod common;

use common::*;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use marina_core::body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn vm(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_with_flat_memory() {
    let total: u64 = std::env::var("MARINA_UPLOAD_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024) * 1024 * 1024;
    for rt in runtimes() {
        let state = tempfile::tempdir().unwrap();
        let pool = pool(state.path(), Some(rt), |_| {});
        let app = js_app("up", "js-echo", "index.js", |c| c.max_body_size = u64::MAX);
        get(&pool, &app, "/").await; // warm
        let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
        let n = total / chunk.len() as u64;
        let frames = futures_util::stream::iter((0..n).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
        let req = Request::post("/count").body(body::boxed(StreamBody::new(frames))).unwrap();
        let hwm_before = vm("VmHWM:");
        let started = Instant::now();
        let resp =
            tokio::time::timeout(Duration::from_secs(20), pool.dispatch(app.clone(), req)).await.unwrap().unwrap();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        let took = started.elapsed();
        assert_eq!(std::str::from_utf8(&text).unwrap(), format!(r#"{{"bytes":{total}}}"#), "{rt}");
        let grew = vm("VmHWM:").saturating_sub(hwm_before);
        eprintln!(
            "{rt}: {} MiB upload in {took:?} ({:.0} MiB/s); marina peak RSS grew {} KiB",
            total >> 20,
            (total >> 20) as f64 / took.as_secs_f64(),
            grew >> 10
        );
        assert!(grew < 64 * 1024 * 1024, "{rt}: memory grew by {grew} bytes: the body was buffered");
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_size_is_413_while_streaming() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("node"), |_| {});
    let app = js_app("small", "js-echo", "index.js", |c| c.max_body_size = 1024 * 1024);
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames = futures_util::stream::iter((0..64).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    let req = Request::post("/count").body(body::boxed(StreamBody::new(frames))).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), pool.dispatch(app.clone(), req)).await.unwrap();
    let err = outcome.expect_err("4 MiB over a 1 MiB limit");
    assert_eq!((err.status().as_u16(), err.code()), (413, "PAYLOAD_TOO_LARGE"));
    // Declared too large: refused before reaching a worker.
    let req = Request::post("/count").header("content-length", "2000000").body(body::empty()).unwrap();
    assert_eq!(pool.dispatch(app.clone(), req).await.err().unwrap().status(), 413);
    assert_eq!(get(&pool, &app, "/").await.status, 200, "the worker is fine afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_arrives_incrementally_and_stops_when_the_client_goes() {
    for rt in runtimes() {
        let state = tempfile::tempdir().unwrap();
        let pool = pool(state.path(), Some(rt), |_| {});
        let app = js_app("sse", "js-echo", "index.js", |c| c.timeout = Duration::from_secs(1));
        let addr = front(pool.clone(), app.clone()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        // Ticks every 50 ms; well past the 1 s request timeout the stream must still flow.
        while !String::from_utf8_lossy(&got).contains("data: tick 25") {
            assert!(Instant::now() < deadline, "{rt}: SSE stalled: {}", String::from_utf8_lossy(&got));
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "{rt}: stream closed");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{rt}: {text}");
        assert!(text.contains("text/event-stream"));
        assert_eq!(pool.workers()[0].state, "busy");
        drop(s);
        assert!(
            eventually(Duration::from_secs(3), || pool.workers()[0].in_flight == 0).await,
            "{rt}: the stream ends when the client leaves"
        );
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

async fn websocket_echo(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let mut out = Vec::new();
    for msg in ["hello", "through marina"] {
        // Between messages the session is idle, and still counts as in flight on its worker.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | msg.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).await.unwrap();
        let mut h = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h)).await.unwrap().unwrap();
        assert_eq!(h[0], 0x81);
        let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
        s.read_exact(&mut payload).await.unwrap();
        out.push(String::from_utf8(payload).unwrap());
    }
    out.join("|")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_python_and_bun_workers() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), None, |_| {});
    let py = py_app("wspy", |_| {});
    let addr = front(pool.clone(), py).await;
    assert_eq!(websocket_echo(addr, "/ws").await, "hello|through marina");
    // An ephemeral (ttl: 0) worker lives as long as its WebSocket session.
    let eph = py_app("wseph", |c| c.ttl = Duration::ZERO);
    let addr = front(pool.clone(), eph).await;
    assert_eq!(websocket_echo(addr, "/ws").await, "hello|through marina");
    if runtimes().contains(&"bun") {
        let bun = js_app("wsbun", "ts-echo", "index.ts", |_| {});
        let addr = front(pool.clone(), bun).await;
        assert_eq!(websocket_echo(addr, "/ws").await, "hello|through marina");
    }
    pool.shutdown(Duration::from_secs(2)).await;
}
