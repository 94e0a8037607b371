//! What the CLI tests share: the real `marina` binary, scratch files, ports, polling, and the
//! environment `marina serve` gets in a test (nothing inherited that would change what it does).
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_marina");

/// Writes `text` at `path`, creating its parent dirs.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Lets the workers (another user when marina runs as root) enter a test's apps dir.
pub fn open_to_workers(dir: &Path) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// `marina serve` on `port` with `apps` and `state`, on its embedded SQLite, with the test
/// machine's `DATABASE_URL`, `NODE_ENV` and `RUST_LOG` removed; stdout dropped, stderr piped.
pub fn serve_command(apps: &Path, state: &Path, port: u16, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("PORT", port.to_string())
        .env("RUNTIME_WORKER_DIRS", apps)
        .env("RUNTIME_STATE_DIR", state)
        .env_remove("DATABASE_URL")
        .env_remove("NODE_ENV")
        .env_remove("RUST_LOG")
        .env_remove("RUNTIME_THREADS")
        .env_remove("RUNTIME_SCHEDULER")
        .env_remove("TOKIO_WORKER_THREADS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A raw HTTP/1.1 GET with `Connection: close`; the whole response (status line, headers,
/// body).
pub fn http_get_raw(port: u16, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Requests in flight in every worker, from `/api/workers` (0 when it cannot be read).
pub fn in_flight(port: u16) -> u64 {
    let Ok(text) = http_get_raw(port, "/api/workers", Duration::from_secs(5)) else { return 0 };
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["workers"].as_array().map(|ws| ws.iter().filter_map(|w| w["inFlight"].as_u64()).sum()).unwrap_or(0)
}
