//! `marina serve` and `marina check` as a user runs them: the real binary, real signals,
//! real HTTP over loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_marina");

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A raw HTTP/1.1 GET; returns the status line and body.
fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
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
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("PORT", port.to_string())
        .env("RUNTIME_WORKER_DIRS", apps)
        .env("RUNTIME_STATE_DIR", state)
        .env_remove("DATABASE_URL")
        .env_remove("NODE_ENV")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
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
    // Workers run as another user when marina is root: they must be able to enter it.
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
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
    // Workers run as another user when marina is root: they must be able to enter it.
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
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
    for raw in stderr.lines() {
        assert_eq!(raw.matches("\"target\":").count(), 1, "{raw}");
    }
}

#[test]
fn check_prints_manifest_errors_and_exits_1() {
    let apps = tempfile::tempdir().unwrap();
    // Workers run as another user when marina is root: they must be able to enter it.
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
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
