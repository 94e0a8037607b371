//! Hostile and careless clients against a real `marina serve` with real workers: connections
//! that send nothing, too many connections, slow uploads, malformed chunked bodies, workers that
//! never read a large body, clients that never read their response, and clients that give up
//! (HTTP/2 reset, closed connection). None of them may hold shared capacity or get a worker
//! blamed for the client's doing, and every request is on record.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Sends raw bytes, then reads whatever comes back until EOF, an error or `timeout`.
fn exchange(port: u16, request: &[u8], timeout: Duration) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    s.set_read_timeout(Some(timeout)).unwrap();
    if s.write_all(request).is_err() {
        return String::new();
    }
    read_all(&mut s)
}

/// Reads until EOF or an error, keeping what arrived (a reset after the response is fine).
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection that was answered 200 on a keep-alive request and stays open, or `None` when
/// marina closed it (at the connection cap).
fn keep_alive_answered(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The health body is small JSON: the head and the body's closing brace end the answer.
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}")) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"HTTP/1.1 200").then_some(s)
}

fn get(port: u16, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    exchange(port, req.as_bytes(), Duration::from_secs(30))
}

fn body(resp: &str) -> &str {
    resp.split("\r\n\r\n").nth(1).unwrap_or_default()
}

/// `marina serve` on `port` with its stderr collected line by line.
struct Marina {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    _apps: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl Marina {
    fn start(apps: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        open_to_workers(apps.path());
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = serve_command(apps.path(), state.path(), port, env).spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let m = Self { child, port, log, _apps: apps, _state: state };
        assert!(
            eventually(Duration::from_secs(20), || get(port, "/api/health").starts_with("HTTP/1.1 200")),
            "marina did not become healthy: {:?}",
            m.log.lock().unwrap()
        );
        m
    }

    /// The first log line containing every one of `parts`, waiting up to `limit` for it.
    fn log_line(&self, parts: &[&str], limit: Duration) -> Option<String> {
        let mut found = None;
        eventually(limit, || {
            found = self.log.lock().unwrap().iter().find(|l| parts.iter().all(|p| l.contains(p))).cloned();
            found.is_some()
        });
        found
    }

    fn workers(&self) -> serde_json::Value {
        serde_json::from_str(body(&get(self.port, "/api/workers"))).unwrap_or_default()
    }

    fn in_flight(&self) -> u64 {
        in_flight(self.port)
    }
}

impl Drop for Marina {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A warm JS app: `/pid`, `/count` (reads the whole body), `/ignore` (neither reads its body
/// nor answers), `?ms=` sleeps.
fn app_dir() -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    write(&apps.path().join("echo/manifest.yaml"), "entrypoint: index.js\nttl: 60s\ntimeout: 1s\n");
    write(
        &apps.path().join("echo/index.js"),
        r#"export default {
  async fetch(req) {
    const url = new URL(req.url);
    if (url.pathname === "/pid") return new Response(String(process.pid));
    if (url.pathname === "/count") return new Response(String((await req.arrayBuffer()).byteLength));
    if (url.pathname === "/ignore") return new Promise(() => {});
    const ms = Number(url.searchParams.get("ms") || 0);
    if (ms) await new Promise((r) => setTimeout(r, ms));
    return new Response(`slept ${ms}`);
  },
};
"#,
    );
    apps
}

#[test]
fn silent_and_half_sent_connections_are_closed_after_the_header_timeout() {
    let m = Marina::start(app_dir(), &[("RUNTIME_HEADER_TIMEOUT", "1s")]);
    for sent in [&b""[..], b"GET /echo/ HT"] {
        let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(sent).unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf);
        assert!(matches!(n, Ok(0)) || n.is_err(), "closed, not answered: {n:?}");
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(900), "not before the timeout: {waited:?}");
        assert!(waited < Duration::from_secs(10), "closed by marina, not by the test's read timeout: {waited:?}");
    }
    // A client that speaks is served as usual.
    assert!(get(m.port, "/echo/pid").starts_with("HTTP/1.1 200"));
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    let m = Marina::start(app_dir(), &[("RUNTIME_MAX_CONNECTIONS", "2"), ("RUNTIME_HEADER_TIMEOUT", "60s")]);
    // Each held connection proves it holds a slot by being answered on a keep-alive request: a
    // bare connect is not enough, because the start-up health check's connection may still hold
    // its slot for a moment after its answer, and a connection closed past the cap would then
    // count as held (CI saw that: the third connection got served).
    let held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut conn = None;
            assert!(
                eventually(Duration::from_secs(10), || {
                    conn = keep_alive_answered(m.port);
                    conn.is_some()
                }),
                "held connection {i} was never answered"
            );
            conn.unwrap()
        })
        .collect();
    let mut extra = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let text = read_all(&mut s);
            let refused = text.is_empty();
            extra = Some(text);
            refused
        }),
        "a third connection is closed without an answer: {extra:?}"
    );
    assert!(m.log_line(&["RUNTIME_MAX_CONNECTIONS reached"], Duration::from_secs(5)).is_some());
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || get(m.port, "/api/health").starts_with("HTTP/1.1 200")),
        "served again once the held connections closed"
    );
}

#[test]
fn a_slow_upload_gets_408_and_the_worker_keeps_its_pid() {
    let m = Marina::start(app_dir(), &[("RUNTIME_BODY_TIMEOUT", "3s")]);
    let pid = body(&get(m.port, "/echo/pid")).to_string();
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    // The app's `timeout` is 1 s; one byte every 300 ms for 100 bytes would take 30 s.
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"POST /echo/count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n").unwrap();
    let mut writer = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let t0 = Instant::now();
    let resp = read_all(&mut s);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("\"code\":\"REQUEST_BODY_TIMEOUT\""), "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(body(&get(m.port, "/echo/pid")), pid, "the worker was not replaced");
    let w = m.workers();
    let echo = &w["workers"].as_array().unwrap().iter().find(|w| w["app"] == "echo").unwrap().clone();
    assert_eq!((echo["restarts"].as_u64(), echo["errors"].as_u64()), (Some(0), Some(0)), "not blamed: {echo}");
}

#[test]
fn a_slow_upload_within_the_body_timeout_is_served_though_it_outlasts_the_apps_timeout() {
    let m = Marina::start(app_dir(), &[("RUNTIME_BODY_TIMEOUT", "30s")]);
    let pid = body(&get(m.port, "/echo/pid")).to_string();
    // The app's `timeout` is 1 s; 12 bytes one every 250 ms take 3 s, all of it the client's.
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"POST /echo/count HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 12\r\n\r\n").unwrap();
    let mut writer = s.try_clone().unwrap();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        for _ in 0..12 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let resp = read_all(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(body(&resp), "12");
    assert!(t0.elapsed() > Duration::from_secs(2), "the upload itself took ~3 s: {:?}", t0.elapsed());
    assert_eq!(body(&get(m.port, "/echo/pid")), pid, "the worker was not replaced");
    let w = m.workers();
    let echo = &w["workers"].as_array().unwrap().iter().find(|w| w["app"] == "echo").unwrap().clone();
    assert_eq!((echo["restarts"].as_u64(), echo["errors"].as_u64()), (Some(0), Some(0)), "not blamed: {echo}");
}

/// The echo app, and a process app whose POST handler neither reads its body nor answers; both
/// take bodies up to 100 MiB, so a large one streams to them rather than being refused.
fn never_reading_apps() -> tempfile::TempDir {
    let apps = app_dir();
    write(&apps.path().join("echo/manifest.yaml"), "entrypoint: index.js\nttl: 60s\ntimeout: 1s\nmaxBodySize: 100mb\n");
    write(
        &apps.path().join("py/manifest.yaml"),
        "command: [\"python3\", \"app.py\"]\nttl: 60s\ntimeout: 1s\nmaxBodySize: 100mb\n",
    );
    write(
        &apps.path().join("py/app.py"),
        r#"import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        time.sleep(3600)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    );
    apps
}

#[test]
fn a_worker_that_never_reads_a_large_body_gets_504_and_is_replaced() {
    let m = Marina::start(never_reading_apps(), &[("RUNTIME_BODY_TIMEOUT", "60s")]);
    // Far more than the sockets and buffers between the client and the worker hold: the body
    // waits on the worker, which never takes it.
    let len = 90 << 20;
    for app in ["echo", "py"] {
        let pid = body(&get(m.port, &format!("/{app}/pid"))).to_string();
        assert!(pid.parse::<u32>().is_ok(), "{app}: {pid}");
        let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!("POST /{app}/ignore HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let mut writer = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if writer.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        });
        let t0 = Instant::now();
        let resp = read_all(&mut s);
        assert!(resp.starts_with("HTTP/1.1 504"), "{app}: {resp:.300}");
        assert!(resp.contains("\"code\":\"WORKER_TIMEOUT\""), "{app}: {resp:.300}");
        assert!(t0.elapsed() < Duration::from_secs(20), "{app}: answered by the app's 1 s timeout: {:?}", t0.elapsed());
        let mut fresh = String::new();
        assert!(
            eventually(Duration::from_secs(20), || {
                fresh = body(&get(m.port, &format!("/{app}/pid"))).to_string();
                fresh.parse::<u32>().is_ok()
            }),
            "{app}: served again: {fresh}"
        );
        assert_ne!(fresh, pid, "{app}: the hung worker was replaced");
    }
}

#[test]
fn a_malformed_chunked_body_is_400_and_not_the_workers_fault() {
    let m = Marina::start(app_dir(), &[]);
    let pid = body(&get(m.port, "/echo/pid")).to_string();
    let resp = exchange(
        m.port,
        b"POST /echo/count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
        Duration::from_secs(20),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("\"code\":\"BAD_REQUEST_BODY\""), "{resp}");
    // A well-formed chunked body still works, on the same worker.
    let ok = exchange(
        m.port,
        b"POST /echo/count HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(20),
    );
    assert_eq!(body(&ok), "5", "{ok}");
    // A coding marina does not decode before the chunking: the app would count the still
    // gzip-coded bytes as the body. 501, and the worker never sees it.
    let gzip = exchange(
        m.port,
        b"POST /echo/count HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(20),
    );
    assert!(gzip.starts_with("HTTP/1.1 501"), "{gzip}");
    assert!(gzip.contains("\"code\":\"TRANSFER_CODING_UNSUPPORTED\""), "{gzip}");
    assert_eq!(body(&get(m.port, "/echo/pid")), pid);
    let w = m.workers();
    let echo = w["workers"].as_array().unwrap().iter().find(|w| w["app"] == "echo").unwrap().clone();
    assert_eq!((echo["restarts"].as_u64(), echo["errors"].as_u64()), (Some(0), Some(0)), "not blamed: {echo}");
}

/// Two `ttl: 0` apps (one fresh process per request): `flood` answers an endless response,
/// `quick` a short one.
fn flood_and_quick_apps() -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    write(&apps.path().join("flood/manifest.yaml"), "entrypoint: index.js\nttl: 0\n");
    write(
        &apps.path().join("flood/index.js"),
        r#"const chunk = new Uint8Array(64 * 1024).fill(120);
export default {
  fetch() {
    return new Response(new ReadableStream({ pull(c) { c.enqueue(chunk); } }), {
      headers: { "content-type": "application/octet-stream" },
    });
  },
};
"#,
    );
    write(&apps.path().join("quick/manifest.yaml"), "entrypoint: index.js\nttl: 0\n");
    write(&apps.path().join("quick/index.js"), "export default { fetch() { return new Response(\"quick\"); } };\n");
    apps
}

#[test]
fn clients_that_never_read_do_not_block_another_apps_ttl0_requests() {
    let apps = flood_and_quick_apps();
    let m = Marina::start(
        apps,
        &[("RUNTIME_EPHEMERAL_CONCURRENCY", "2"), ("RUNTIME_EPHEMERAL_SPARES", "0"), ("RUNTIME_SEND_TIMEOUT", "1s")],
    );
    // Two clients take both ttl: 0 slots and never read a byte.
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
            s.write_all(b"GET /flood/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(20), || {
            m.log.lock().unwrap().iter().filter(|l| l.contains("flood@latest") && l.contains("worker started")).count()
                == 2
        }),
        "both flood workers started"
    );
    let t0 = Instant::now();
    let resp = get(m.port, "/quick/");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(body(&resp), "quick");
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    assert!(
        m.log_line(&["stopped reading its response"], Duration::from_secs(5)).is_some(),
        "the stalled responses were cut by RUNTIME_SEND_TIMEOUT"
    );
    drop(stalled);
}

#[test]
fn a_slow_reader_that_keeps_reading_gets_the_whole_response() {
    // RUNTIME_SEND_TIMEOUT is per stall: a client taking a 7 MiB file at ~800 KiB/s needs far
    // longer than the 1 s timeout for the whole file, and for each 1 MiB sendfile chunk once
    // the kernel's send buffer (up to 4 MiB) is full, but it never leaves marina waiting that
    // long for it to take more, so it must get every byte.
    let apps = tempfile::tempdir().unwrap();
    write(&apps.path().join("site/index.html"), "<html><body>hi</body></html>");
    let file: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(apps.path().join("site/big.bin"), &file).unwrap();
    let m = Marina::start(apps, &[("RUNTIME_SEND_TIMEOUT", "1s")]);
    let port = m.port;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A small receive buffer, so that marina's writes wait on this reader's pace.
    let mut s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        socket.connect(([127, 0, 0, 1], port).into()).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /site/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        // The reader's pace (what is tested), not a wait for marina.
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..head_end]));
    assert_eq!(got.len() - head_end, file.len(), "every byte arrived (after {took:?})");
    assert!(got[head_end..] == file[..], "the bytes are the file's");
    assert!(took > Duration::from_secs(3), "the transfer outlasted the timeout several times over: {took:?}");
    assert!(m.log_line(&["stopped reading"], Duration::from_millis(10)).is_none(), "nothing was cut");
}

#[test]
fn an_http2_stream_that_stops_reading_is_reset_alone_and_frees_its_worker() {
    let apps = flood_and_quick_apps();
    // One ttl: 0 slot: while the flood response holds it, no other ttl: 0 request runs.
    let m = Marina::start(
        apps,
        &[("RUNTIME_EPHEMERAL_CONCURRENCY", "1"), ("RUNTIME_EPHEMERAL_SPARES", "0"), ("RUNTIME_SEND_TIMEOUT", "1s")],
    );
    let port = m.port;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // A 64 KiB window per stream (the flood stream fills it and is never read), and a large
        // one for the connection so that the other streams are not starved by it.
        let (h2, conn) = h2::client::Builder::new()
            .initial_window_size(64 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut h2 = h2.ready().await.unwrap();
        let get = |path: &str| http::Request::get(format!("http://127.0.0.1:{port}{path}")).body(()).unwrap();
        let (flood, _) = h2.send_request(get("/flood/"), true).unwrap();
        let flood = flood.await.unwrap();
        assert_eq!(flood.status(), 200);
        // The quick app needs the one slot the flood response holds until its stream is cut.
        h2 = h2.ready().await.unwrap();
        let (quick, _) = h2.send_request(get("/quick/"), true).unwrap();
        let quick = tokio::time::timeout(Duration::from_secs(20), quick).await.expect("answered").unwrap();
        assert_eq!(quick.status(), 200);
        let mut body = quick.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        assert_eq!(text, b"quick", "served on the same connection");
        // The connection still takes new streams.
        h2 = h2.ready().await.unwrap();
        let (health, _) = h2.send_request(get("/api/health"), true).unwrap();
        assert_eq!(health.await.unwrap().status(), 200);
        // Reading the cut stream now: what was already queued, then a reset with CANCEL.
        let mut flood = flood.into_body();
        let mut taken = 0usize;
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match flood.data().await {
                    Some(Ok(chunk)) => {
                        taken += chunk.len();
                        let _ = flood.flow_control().release_capacity(chunk.len());
                    }
                    Some(Err(e)) => return Some(e),
                    None => return None,
                }
            }
        })
        .await
        .expect("the cut stream ends");
        let err = ended.expect("the cut stream ends with a reset, not a clean end");
        assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err} after {taken} bytes");
        assert!(taken < 1024 * 1024, "only what was queued before the cut arrived: {taken} bytes");
    });
    assert!(m.log_line(&["resetting its stream"], Duration::from_secs(5)).is_some());
    assert!(m.log_line(&["closing the connection"], Duration::from_millis(10)).is_none(), "the connection stayed");
}

/// marina's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One raw HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Writes `batch` again and again on a fresh HTTP/2 connection (after the preface) without
/// reading, until marina stops taking it (full buffers or a closed connection) or `limit` passes;
/// returns how many batches went out.
fn h2_flood(port: u16, batch: &[u8], limit: Duration) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&h2_frame(4, 0, 0, &[])).unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    while t0.elapsed() < limit && s.write_all(batch).is_ok() {
        sent += 1;
    }
    sent
}

#[test]
fn http2_ping_and_settings_floods_and_rapid_resets_leave_marina_serving() {
    let m = Marina::start(app_dir(), &[]);
    let before = rss_kib(m.child.id());
    let healthy = |what: &str| {
        let t0 = Instant::now();
        assert!(get(m.port, "/api/health").starts_with("HTTP/1.1 200"), "after {what}");
        assert!(t0.elapsed() < Duration::from_secs(5), "health answered promptly after {what}: {:?}", t0.elapsed());
    };
    // PINGs and SETTINGS never read back: marina answers one at a time and stops reading when
    // its answers are not taken, so the flood stalls instead of filling marina's memory.
    let ping: Vec<u8> = (0..1000).flat_map(|_| h2_frame(6, 0, 0, b"12345678")).collect();
    let settings: Vec<u8> = (0..1000).flat_map(|_| h2_frame(4, 0, 0, &[0, 3, 0, 0, 0, 100])).collect();
    for (what, batch) in [("a PING flood", &ping), ("a SETTINGS flood", &settings)] {
        let sent = h2_flood(m.port, batch, Duration::from_secs(10));
        assert!(sent > 0, "{what} got started");
        healthy(what);
    }
    // Rapid reset (CVE-2023-44487): requests opened and reset at once. Past 20 resets of streams
    // not yet accepted the connection is refused (GOAWAY), so the flood ends quickly.
    let mut rapid = Vec::new();
    for i in 0..500u32 {
        let stream = 1 + 2 * i;
        // HPACK: :method GET, :path /, :scheme http (indexed), :authority "x" (literal).
        rapid.extend(h2_frame(1, 0x4 | 0x1, stream, &[0x82, 0x84, 0x86, 0x41, 0x01, b'x']));
        rapid.extend(h2_frame(3, 0, stream, &8u32.to_be_bytes()));
    }
    let sent = h2_flood(m.port, &rapid, Duration::from_secs(10));
    assert!(sent < 1000, "the rapid-reset connection was cut short ({sent} batches of 500 went out)");
    healthy("a rapid reset");
    let after = rss_kib(m.child.id());
    assert!(after < before + 64 * 1024, "marina's memory stayed flat: {before} KiB before, {after} KiB after");
}

#[test]
fn a_closed_connection_and_an_http2_reset_are_logged_499_and_counted() {
    let m = Marina::start(app_dir(), &[]);
    assert!(get(m.port, "/echo/pid").starts_with("HTTP/1.1 200"));

    // HTTP/1.1: the client closes its connection while the worker is still working.
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    s.write_all(b"GET /echo/closed?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(eventually(Duration::from_secs(10), || m.in_flight() == 1), "the request reached the worker");
    drop(s);
    let line = m.log_line(&["marina::access", "/echo/closed"], Duration::from_secs(10));
    let line = line.expect("an access line for the closed request");
    assert!(line.contains("status=499"), "{line}");

    // HTTP/2: the client resets the stream.
    let port = m.port;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut h2 = h2.ready().await.unwrap();
        let req = http::Request::get(format!("http://127.0.0.1:{port}/echo/reset?ms=800")).body(()).unwrap();
        let (_response, mut stream) = h2.send_request(req, true).unwrap();
        let reached = tokio::task::spawn_blocking(move || eventually(Duration::from_secs(10), || in_flight(port) == 1));
        assert!(reached.await.unwrap(), "the HTTP/2 request reached the worker");
        stream.send_reset(h2::Reason::CANCEL);
        // Keep the connection open while marina notices the reset.
        let _keep = h2;
        let logged = tokio::task::spawn_blocking({
            let log = m.log.clone();
            move || {
                eventually(Duration::from_secs(10), || {
                    log.lock().unwrap().iter().any(|l| l.contains("/echo/reset") && l.contains("marina::access"))
                })
            }
        });
        assert!(logged.await.unwrap(), "an access line for the reset request");
    });
    let line = m.log_line(&["marina::access", "/echo/reset"], Duration::from_secs(1)).unwrap();
    assert!(line.contains("status=499"), "{line}");
    let requests = &m.workers()["requests"];
    assert!(requests["clientClosed"].as_u64() >= Some(2), "{requests}");
    assert!(requests["total"].as_u64() > requests["clientClosed"].as_u64(), "{requests}");
}

#[test]
fn out_of_file_descriptors_accept_backs_off_logs_once_a_second_and_recovers() {
    let apps = tempfile::tempdir().unwrap();
    write(&apps.path().join("site/index.html"), "<html><body>hi</body></html>");
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    // A hard limit of 64 open files: marina cannot raise it, so enough clients exhaust it.
    // (`sh` runs marina here, so the environment is set as `serve_command` does.)
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 64 && exec {BIN} serve"))
        .env("PORT", port.to_string())
        .env("RUNTIME_WORKER_DIRS", apps.path())
        .env("RUNTIME_STATE_DIR", state.path())
        .env_remove("DATABASE_URL")
        .env_remove("NODE_ENV")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    assert!(eventually(Duration::from_secs(20), || get(port, "/site/").starts_with("HTTP/1.1 200")), "{log:?}");
    let held: Vec<TcpStream> = (0..100).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(
        eventually(Duration::from_secs(10), || log.lock().unwrap().iter().any(|l| l.contains("accept failed"))),
        "accept ran out of file descriptors"
    );
    // The next line comes a second later and sums up the failures in between.
    let mut second = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            second = log.lock().unwrap().iter().filter(|l| l.contains("accept failed")).nth(1).cloned();
            second.is_some()
        }),
        "accept kept failing while the clients held every descriptor"
    );
    let second = second.unwrap();
    let failures: u64 = second
        .split("failures=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a failure count in {second}"));
    assert!(failures >= 2, "one line stands for several failures (at most a line a second): {second}");
    drop(held);
    assert!(
        eventually(Duration::from_secs(15), || get(port, "/site/").starts_with("HTTP/1.1 200")),
        "served again once descriptors are free"
    );
    let _ = child.kill();
    let _ = child.wait();
}
