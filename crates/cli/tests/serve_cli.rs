//! `marina serve` and `marina check` as a user runs them: the real binary, real signals,
//! real HTTP over loopback.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

/// A raw HTTP/1.1 GET; returns the status line and body.
fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(String, String)> {
    let text = http_get_raw(port, path, timeout)?;
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((status, body))
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok((status, _)) = http_get(port, "/api/health", Duration::from_secs(1))
            && status.contains("200")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("marina did not become healthy on port {port}");
}

fn serve(apps: &Path, state: &Path, port: u16, extra_env: &[(&str, &str)]) -> Child {
    serve_command(apps, state, port, extra_env).spawn().unwrap()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("marina did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let cases = [
        ("PORT", "eighty", "marina: invalid PORT (--port) \"eighty\": expected a port number from 0 to 65535"),
        (
            "RUNTIME_POOL_SIZE",
            "-3",
            "marina: invalid RUNTIME_POOL_SIZE (--pool-size) \"-3\": expected a whole number from 1 to 100000",
        ),
        (
            "NODE_ENV",
            "prod",
            "marina: invalid NODE_ENV (--node-env) \"prod\": expected one of development, production, staging, test",
        ),
        (
            "RUNTIME_JS",
            "deno",
            "marina: invalid RUNTIME_JS (--js-runtime) \"deno\": expected bun, node, or the path of an executable Bun or Node",
        ),
    ];
    for (var, value, message) in cases {
        let out = Command::new(BIN).arg("serve").env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), message);
    }
    let out = Command::new(BIN).args(["serve", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    write(&apps.path().join("slow/manifest.yaml"), "command: [\"python3\", \"app.py\"]\nttl: 60s\n");
    write(
        &apps.path().join("slow/app.py"),
        r#"import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        body = b"finished"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    );
    let port = free_port();
    let mut child = serve(apps.path(), state.path(), port, &[]);
    wait_ready(port);
    // Warm the worker so the slow request is in flight at the app, not starting it.
    assert!(http_get(port, "/slow/", Duration::from_secs(10)).unwrap().0.contains("200"));

    let in_flight = std::thread::spawn(move || http_get(port, "/slow/slow", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    sigterm(&child);
    let (status, body) = in_flight.join().unwrap().expect("the in-flight request completes");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "finished");
    let exit = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(exit.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens after exit");
}

#[test]
fn production_logs_are_json_with_one_access_line_per_request() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    write(&apps.path().join("site/index.html"), "<html><body>hi</body></html>");
    let port = free_port();
    let mut child = serve(apps.path(), state.path(), port, &[("NODE_ENV", "production")]);
    wait_ready(port);
    let (status, _) = http_get(port, "/site/", Duration::from_secs(5)).unwrap();
    assert!(status.contains("200"));
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).code(), Some(0));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let lines: Vec<serde_json::Value> = BufReader::new(stderr.as_bytes())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("every log line is JSON"))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["target"] == "marina::access" && l["path"] == "/site/")
        .unwrap_or_else(|| panic!("an access line for /site/ in {stderr}"));
    assert_eq!(access["method"], "GET");
    assert_eq!(access["status"], 200);
    assert_eq!(access["app"], "site@latest");
    assert!(access["duration_ms"].as_f64().is_some());
    assert!(access["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    // Lists are arrays, and no line repeats a key (`target` of the line vs a field).
    let serving = lines.iter().find(|l| l["message"] == "marina is serving").expect("a start line");
    assert_eq!(serving["worker_dirs"], serde_json::json!([apps.path().display().to_string()]));
    // RUNTIME_THREADS unset: one per CPU.
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(serving["threads"], cpus, "{serving}");
    for raw in stderr.lines() {
        assert_eq!(raw.matches("\"target\":").count(), 1, "{raw}");
    }
}

/// `RUNTIME_THREADS` is the number of threads the async runtime really runs (tokio's own count
/// in the start line), and marina serves with it, one thread as well as more.
#[test]
fn runtime_threads_sets_the_async_threads() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    write(&apps.path().join("site/index.html"), "<p>threads</p>");
    for threads in ["1", "3"] {
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let env = [("NODE_ENV", "production"), ("RUNTIME_THREADS", threads)];
        let mut child = serve(apps.path(), state.path(), port, &env);
        wait_ready(port);
        let (status, body) = http_get(port, "/site/", Duration::from_secs(5)).unwrap();
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("<p>threads</p>"), "{body}");
        let (serving, _) = stop_for_start_line(&mut child);
        assert_eq!(serving["threads"].to_string(), threads, "{serving}");
    }
}

/// Stops a marina started with JSON logs (SIGTERM, exit 0 expected) and returns its
/// `marina is serving` line and its whole stderr.
fn stop_for_start_line(child: &mut Child) -> (serde_json::Value, String) {
    sigterm(child);
    assert_eq!(wait_exit(child, Duration::from_secs(15)).code(), Some(0));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let serving = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "marina is serving")
        .unwrap_or_else(|| panic!("a start line in {stderr}"));
    (serving, stderr)
}

/// `RUNTIME_SCHEDULER=per-thread`: connections are spread over the connection threads, and
/// each thread opens its own connections to a worker (a socket belongs to the thread whose
/// I/O driver registered it); many concurrent requests to a JS app and a static app all get
/// their own answer.
#[test]
fn per_thread_scheduling_serves_concurrent_connections_on_its_threads() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    napper_app(apps.path());
    write(&apps.path().join("site/index.html"), "<p>per thread</p>");
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [("NODE_ENV", "production"), ("RUNTIME_SCHEDULER", "per-thread"), ("RUNTIME_THREADS", "2")];
    let mut child = serve(apps.path(), state.path(), port, &env);
    wait_ready(port);
    let comms: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    for name in ["marina-conn-1", "marina-conn-2"] {
        assert!(comms.iter().any(|c| c == name), "no thread {name} among {comms:?}");
    }
    assert!(http_get(port, "/napper/", Duration::from_secs(15)).unwrap().0.contains("200"));
    // Six clients at once, each request on its own connection: the connections land on both
    // threads, and requests overlap (20 ms each) so each thread needs its own worker connections.
    let clients: Vec<_> = (0..6)
        .map(|c| {
            std::thread::spawn(move || {
                (0..15)
                    .map(|i| {
                        let (path, want) = match (c + i) % 3 {
                            0 => (format!("/napper/?ms=20&n={c}-{i}"), "slept 20".to_string()),
                            1 => (format!("/napper/?ms={}", c + 1), format!("slept {}", c + 1)),
                            _ => ("/site/".to_string(), "<p>per thread</p>".to_string()),
                        };
                        let text = http_get_raw(port, &path, Duration::from_secs(20)).unwrap_or_default();
                        (path, want, text)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (path, want, text) in clients.into_iter().flat_map(|c| c.join().unwrap()) {
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with(&want), "{path}: wanted {want:?}, got {text}");
    }
    let (serving, stderr) = stop_for_start_line(&mut child);
    assert_eq!(
        (serving["threads"].as_u64(), serving["scheduler"].as_str()),
        (Some(2), Some("per-thread")),
        "{serving}"
    );
    assert!(stderr.lines().any(|l| l.contains("marina stopped")), "{stderr}");
}

#[test]
fn check_prints_manifest_errors_and_exits_1() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    write(&apps.path().join("good/index.html"), "<html></html>");
    write(&apps.path().join("bad/index.html"), "<html></html>");
    write(&apps.path().join("bad/manifest.yaml"), "ttl: 5x\ntimeout: 0\n");
    let out = Command::new(BIN).arg("check").arg(apps.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ttl"), "{text}");
    assert!(text.contains("timeout"), "{text}");
    assert!(text.contains("\"5x\""), "{text}");

    let out = Command::new(BIN).arg("check").arg(apps.path().join("good")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A JS app that sleeps `?ms=` before answering and notes `onTerminate` in its data dir
/// (`{state}/workers/napper/data/terminated`).
fn napper_app(apps: &Path) {
    write(&apps.join("napper/manifest.yaml"), "entrypoint: index.js\nttl: 60s\ntimeout: 60s\n");
    write(
        &apps.join("napper/index.js"),
        r#"import { appendFileSync } from "node:fs";
export default {
  async fetch(req) {
    const ms = Number(new URL(req.url).searchParams.get("ms") || 0);
    if (ms) await new Promise((r) => setTimeout(r, ms));
    return new Response(`slept ${ms}`);
  },
  onTerminate() {
    appendFileSync(`${process.env.APP_DATA_DIR}/terminated`, `terminate ${process.pid}\n`);
  },
};
"#,
    );
}

#[test]
fn sigterm_flips_readiness_then_serves_through_the_delay_and_runs_on_terminate() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    napper_app(apps.path());
    let port = free_port();
    let delay = Duration::from_secs(4);
    let mut child = serve(
        apps.path(),
        state.path(),
        port,
        &[("RUNTIME_SHUTDOWN_DELAY", "4s"), ("RUNTIME_SHUTDOWN_TIMEOUT", "10s")],
    );
    wait_ready(port);
    assert!(http_get(port, "/napper/", Duration::from_secs(15)).unwrap().0.contains("200"));
    let (status, _) = http_get(port, "/api/health/ready", Duration::from_secs(2)).unwrap();
    assert!(status.contains("200"), "{status}");

    let t0 = Instant::now();
    sigterm(&child);
    let mut ready = String::new();
    assert!(
        eventually(Duration::from_secs(3), || {
            ready = http_get_raw(port, "/api/health/ready", Duration::from_secs(2)).unwrap_or_default();
            ready.starts_with("HTTP/1.1 503")
        }),
        "readiness answers 503 soon after SIGTERM: {ready}"
    );
    assert!(ready.contains("\"draining\""), "{ready}");
    // Still serving, on a new connection, during the delay.
    let (status, body) = http_get(port, "/napper/?ms=50", Duration::from_secs(5)).unwrap();
    assert!(t0.elapsed() < delay, "the test itself was too slow to check the delay");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "slept 50"));

    let exit = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0));
    assert!(t0.elapsed() >= delay, "marina kept serving for the delay: exited after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(12), "within the timeout: {:?}", t0.elapsed());
    let marker = state.path().join("workers/napper/data/terminated");
    let text = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(text.contains("terminate"), "onTerminate ran before the worker stopped: {text:?}");
}

#[test]
fn the_shutdown_timeout_bounds_the_exit_and_cut_requests_get_503_shutting_down() {
    shutdown_timeout_bounds_the_exit("shared");
}

/// The exit reaches connections on every connection thread, and the workers started from them.
#[test]
fn the_shutdown_timeout_bounds_the_exit_with_per_thread_scheduling() {
    shutdown_timeout_bounds_the_exit("per-thread");
}

fn shutdown_timeout_bounds_the_exit(scheduler: &str) {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    napper_app(apps.path());
    let port = free_port();
    let timeout = Duration::from_secs(4);
    let env = [("RUNTIME_SHUTDOWN_TIMEOUT", "4s"), ("RUNTIME_SCHEDULER", scheduler), ("RUNTIME_THREADS", "2")];
    let mut child = serve(apps.path(), state.path(), port, &env);
    wait_ready(port);
    assert!(http_get(port, "/napper/", Duration::from_secs(15)).unwrap().0.contains("200"));

    // An idle HTTP/1.1 keep-alive connection and an idle HTTP/2 connection, both used once.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(idle, "GET /napper/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("slept 0"), "one whole response read");
    let h2_closed = h2_connection_watch(port);

    // The short request rides a keep-alive connection: it gets `Connection: close`, then EOF.
    let short = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(s, "GET /napper/short?ms=1500 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text).map(|_| text)
    });
    let long = std::thread::spawn(move || http_get_raw(port, "/napper/long?ms=30000", Duration::from_secs(40)));
    assert!(eventually(Duration::from_secs(10), || in_flight(port) == 2), "both requests reach the worker");
    let t0 = Instant::now();
    sigterm(&child);

    // Idle connections are closed gracefully while requests are still in flight.
    assert!(matches!(idle.read(&mut buf), Ok(0)), "the idle keep-alive connection is closed");
    let h2_end = h2_closed.recv_timeout(Duration::from_secs(10)).expect("the HTTP/2 connection ends (GOAWAY)");
    assert!(h2_end.is_ok(), "a graceful HTTP/2 close, not an error: {h2_end:?}");
    assert!(!long.is_finished() && child.try_wait().unwrap().is_none(), "closed before the in-flight work ended");

    let short = short.join().unwrap().expect("the short request is answered, then the connection closed");
    assert!(short.starts_with("HTTP/1.1 200"), "{short}");
    assert!(short.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{short}");
    assert!(short.ends_with("slept 1500"), "{short}");
    let long = long.join().unwrap().expect("the long request is answered");
    assert!(long.starts_with("HTTP/1.1 503"), "{long}");
    assert!(long.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{long}");
    assert!(long.contains("\"code\":\"SHUTTING_DOWN\""), "{long}");
    assert!(t0.elapsed() < timeout + Duration::from_millis(500), "cut before the deadline: {:?}", t0.elapsed());

    let exit = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0));
    let took = t0.elapsed();
    assert!(took < timeout + Duration::from_secs(1), "the whole exit within the timeout + 1 s: {took:?}");
    let marker = state.path().join("workers/napper/data/terminated");
    let text = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(text.contains("terminate"), "onTerminate ran: {text:?}");
    // The cut request has its access line, written before marina exited.
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let cut = stderr
        .lines()
        .find(|l| l.contains("marina::access") && l.contains("/napper/long"))
        .unwrap_or_else(|| panic!("an access line for the cut request in {stderr}"));
    assert!(cut.contains("status=503"), "{cut}");
}

/// Opens an HTTP/2 (prior knowledge) connection, makes one request on it, then reports when
/// the connection ends: `Ok` for a graceful end (GOAWAY, then close).
fn h2_connection_watch(port: u16) -> std::sync::mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            let driver = tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let req = http::Request::get(format!("http://127.0.0.1:{port}/napper/")).body(()).unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            let mut body = resp.into_body();
            while let Some(chunk) = body.data().await {
                let n = chunk.unwrap().len();
                let _ = body.flow_control().release_capacity(n);
            }
            ready_tx.send(()).unwrap();
            let ended = driver.await.unwrap().map_err(|e| e.to_string());
            let _ = tx.send(ended);
            drop(client);
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(15)).expect("an HTTP/2 request was served");
    rx
}

#[test]
fn sigterm_under_load_with_a_2s_timeout_fails_no_request_that_finishes_in_time() {
    sigterm_under_load("shared");
}

#[test]
fn sigterm_under_load_with_per_thread_scheduling_fails_no_request_that_finishes_in_time() {
    sigterm_under_load("per-thread");
}

fn sigterm_under_load(scheduler: &str) {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    napper_app(apps.path());
    let port = free_port();
    let env = [("RUNTIME_SHUTDOWN_TIMEOUT", "2s"), ("RUNTIME_SCHEDULER", scheduler), ("RUNTIME_THREADS", "2")];
    let mut child = serve(apps.path(), state.path(), port, &env);
    wait_ready(port);
    assert!(http_get(port, "/napper/", Duration::from_secs(15)).unwrap().0.contains("200"));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut responses = Vec::new();
                let until = Instant::now() + Duration::from_secs(15);
                while Instant::now() < until {
                    match http_get_raw(port, "/napper/load?ms=100", Duration::from_secs(10)) {
                        Ok(text) if !text.is_empty() => {
                            responses.push(text);
                            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Refused (the port is closed) or reset in the accept queue: never started.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                        _ => {}
                    }
                }
                responses
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || answered.load(std::sync::atomic::Ordering::Relaxed) >= 8));
    let t0 = Instant::now();
    sigterm(&child);
    let exit = wait_exit(&mut child, Duration::from_secs(10));
    let took = t0.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(took < Duration::from_secs(3), "exit within the 2 s timeout + 1 s: {took:?}");
    let responses: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    for r in &responses {
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("slept 100"), "every request that ran finished: {r}");
    }
}

#[test]
fn access_lines_show_while_serving_and_none_is_lost_at_exit() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    write(&apps.path().join("site/index.html"), "<html><body>hi</body></html>");
    let port = free_port();
    // The default text format at the default level.
    let mut child = serve(apps.path(), state.path(), port, &[("RUNTIME_LOG_LEVEL", "info")]);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    wait_ready(port);
    // The log is buffered, but a line shows within a short while without more traffic.
    let (status, _) = http_get(port, "/site/first.txt", Duration::from_secs(5)).unwrap();
    assert!(status.contains("404"), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("marina::access") && l.contains("/site/first.txt")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no access line for /site/first.txt while marina runs; saw {seen:?}"),
        }
    }
    // Many lines just before SIGTERM: every one is written by the time marina exits.
    let n = 300;
    for i in 0..n {
        let (status, _) = http_get(port, &format!("/site/n{i}.txt"), Duration::from_secs(5)).unwrap();
        assert!(status.contains("404"), "{status}");
    }
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)).code(), Some(0));
    reader.join().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    for i in 0..n {
        let path = format!("/site/n{i}.txt ");
        let count = rest.iter().filter(|l| l.contains("marina::access") && l.contains(&path)).count();
        assert_eq!(count, 1, "access line for /site/n{i}.txt");
    }
    assert!(rest.iter().any(|l| l.contains("marina stopped")), "the last line is written too");
}

#[test]
fn rust_log_still_decides_whether_access_lines_are_written() {
    // marina writes access lines itself, not as tracing events, but tracing's filter decides.
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    write(&apps.path().join("site/index.html"), "<html><body>hi</body></html>");
    for (filter, logged) in [("info,marina::access=off", false), ("warn,marina::access=info", true)] {
        let port = free_port();
        let mut child = serve(apps.path(), state.path(), port, &[("RUST_LOG", filter), ("NODE_ENV", "production")]);
        wait_ready(port);
        let (status, _) = http_get(port, "/site/", Duration::from_secs(5)).unwrap();
        assert!(status.contains("200"), "{status}");
        sigterm(&child);
        assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).code(), Some(0));
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let access = stderr.lines().filter(|l| l.contains("\"target\":\"marina::access\"")).count();
        assert_eq!(access > 0, logged, "RUST_LOG={filter}: {stderr}");
        assert_eq!(stderr.contains("\"path\":\"/site/\""), logged, "RUST_LOG={filter}: {stderr}");
        assert_eq!(
            stderr.contains("marina is serving"),
            !logged,
            "RUST_LOG={filter}: the runtime lines follow the filter too"
        );
    }
}

#[test]
fn wasm_build_makes_the_example_component_and_serve_runs_it() {
    let apps = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps/hello-wasm");
    let app = apps.path().join("hello-wasm");
    for file in ["hello.wat", "manifest.yaml"] {
        write(&app.join(file), &std::fs::read_to_string(example.join(file)).unwrap());
    }
    let port = free_port();
    let mut child = serve(apps.path(), state.path(), port, &[]);
    wait_ready(port);
    // Not built yet: the error says how to build it.
    let (status, body) = http_get(port, "/hello-wasm/", Duration::from_secs(10)).unwrap();
    assert!(status.contains("500"), "{status} {body}");
    assert!(body.contains("marina wasm build"), "{body}");

    let out = Command::new(BIN).args(["wasm", "build"]).arg(app.join("hello.wat")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(app.join("hello.wasm").is_file());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (String::new(), String::new());
    while Instant::now() < deadline {
        last = http_get(port, "/hello-wasm/", Duration::from_secs(10)).unwrap();
        if last.0.contains("200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last.0.contains("200"), "{last:?}");
    // The body streams from the component, so it comes chunked.
    assert!(last.1.contains("hello from a wasm component\n"), "{last:?}");
    let _ = child.kill();
    let _ = child.wait();

    // Bad input: a missing file, and WAT that does not parse (the message has the position).
    let out = Command::new(BIN).args(["wasm", "build"]).arg(app.join("missing.wat")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    write(&app.join("bad.wat"), "(module\n  (func $f (result i32) nope))\n");
    let out = Command::new(BIN).args(["wasm", "build"]).arg(app.join("bad.wat")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not parse") && err.contains("bad.wat"), "{err}");
    assert!(!app.join("bad.wasm").exists());
}

/// A blocking call still running when the shutdown ends (here an app's runaway SQL, stopped only
/// by its own 30 s limit) does not hold marina's exit: the exit stays within
/// `RUNTIME_SHUTDOWN_TIMEOUT` (+ 1 s), as Kubernetes expects.
#[test]
fn a_runaway_query_does_not_hold_the_exit() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    let state = tempfile::tempdir().unwrap();
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins");
    let root = "root-key-for-the-runaway-query-test-0123456789";
    let port = free_port();
    let plugins = plugins.display().to_string();
    let env =
        [("RUNTIME_SHUTDOWN_TIMEOUT", "2s"), ("RUNTIME_PLUGIN_DIRS", plugins.as_str()), ("RUNTIME_ROOT_KEY", root)];
    let mut child = serve(apps.path(), state.path(), port, &env);
    wait_ready(port);
    let post = move |sql: &str, timeout: Duration| -> std::io::Result<String> {
        let body = serde_json::json!({"requests": [{"type": "execute", "stmt": {"sql": sql}}]}).to_string();
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(timeout))?;
        write!(
            s,
            "POST /database/api/v2/pipeline?tenant=runaway HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {root}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text).map(|_| text)
    };
    assert!(post("SELECT 1", Duration::from_secs(10)).unwrap().starts_with("HTTP/1.1 200"));
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let _runaway = std::thread::spawn(move || post(endless, Duration::from_secs(60)));
    // It runs once the database stops answering (the runaway holds its connection).
    assert!(
        eventually(Duration::from_secs(15), || post("SELECT 1", Duration::from_secs(1)).is_err()),
        "the runaway query never started"
    );
    let t0 = Instant::now();
    sigterm(&child);
    let exit = wait_exit(&mut child, Duration::from_secs(40));
    let took = t0.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(took < Duration::from_secs(2 + 3), "the exit waited for the runaway query: {took:?}");
}

/// A new marina.db is migrated while marina already starts serving; if its migrations fail
/// (here the migration lock cannot be opened: a directory has its name), marina stops with
/// the error and exit status 1, as a failed start does, instead of serving without a schema.
#[test]
fn a_new_database_whose_migrations_fail_stops_marina_with_the_error() {
    let apps = tempfile::tempdir().unwrap();
    open_to_workers(apps.path());
    write(&apps.path().join("site/index.html"), "hi");
    // Without plugins, and with the bundled ones, some of which read marina's database at start
    // (the proxy's rules): their failure on the missing tables must not hide the cause.
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/plugins");
    let mut states = Vec::new();
    for plugins in [None, Some(bundled)] {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir(state.path().join("marina.db.migrate-lock")).unwrap();
        let env: Vec<(&str, &str)> = plugins.map(|dir| ("RUNTIME_PLUGIN_DIRS", dir)).into_iter().collect();
        let mut child = serve(apps.path(), state.path(), free_port(), &env);
        let exit = wait_exit(&mut child, Duration::from_secs(20));
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert_eq!(exit.code(), Some(1), "plugins {plugins:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("marina: cannot open the migration lock"), "plugins {plugins:?}: {stderr}");
        assert!(last.contains("marina.db.migrate-lock"), "plugins {plugins:?}: {stderr}");
        states.push(state);
    }
    let state = &states[0];

    // Once the cause is gone, the next start migrates the database it left.
    std::fs::remove_dir(state.path().join("marina.db.migrate-lock")).unwrap();
    let port = free_port();
    let mut child = serve(apps.path(), state.path(), port, &[]);
    wait_ready(port);
    let (status, body) = http_get(port, "/api/keys", Duration::from_secs(5)).unwrap();
    assert!(status.contains("200"), "{status} {body}");
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).code(), Some(0));
}
