//! marina's JS host shim run by hand under each engine, without marina: its readiness line on
//! the inherited pipe and its control token from stdin. Through the pool a shim whose
//! readiness line never came would still work (marina falls back to probing the socket, and
//! calls every lifecycle hook), so only a direct run shows the line is written.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::runtimes;

const SHIM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/process/shim/host.mjs");

/// Reads the pipe up to its first newline (or EOF), failing the test after 20 s.
fn read_line(pipe: OwnedFd) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(pipe);
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") && file.read(&mut byte).is_ok_and(|n| n == 1) {
            line.push(byte[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("no readiness line (nor EOF) within 20 s")
}

/// One HTTP/1.1 request on the worker's socket; the status line of the answer.
fn status_line(socket: &Path, head: &str) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()
}

#[test]
fn the_shim_signals_readiness_with_the_apps_hooks_and_takes_its_token_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.js");
    std::fs::write(&plain, "export default { fetch: () => new Response('hello') };\n").unwrap();
    let hooked = dir.path().join("hooked.mjs");
    std::fs::write(&hooked, "export default { fetch: () => new Response('hi'), onTerminate() {}, onIdle() {} };\n")
        .unwrap();
    for rt in runtimes() {
        for (entry, want) in [(&plain, "ready\n"), (&hooked, "ready idle terminate\n")] {
            let socket = dir.path().join(format!("{rt}.sock"));
            let _ = std::fs::remove_file(&socket);
            // Not close-on-exec: the child inherits the write end under the same number.
            let (read_end, write_end) = nix::unistd::pipe().unwrap();
            let mut cmd = Command::new(rt);
            if rt == "node" {
                cmd.arg("--experimental-detect-module");
            }
            let mut child = cmd
                .arg(SHIM)
                .arg(&socket)
                .arg(write_end.as_raw_fd().to_string())
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap())
                .env("ENTRYPOINT", entry)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            drop(write_end);
            child.stdin.take().unwrap().write_all(b"the-token\n").unwrap();
            let line = read_line(read_end);
            assert_eq!(line, want, "{rt} {}", entry.display());

            let lifecycle = |token: &str| {
                format!(
                    "POST /__marina/lifecycle HTTP/1.1\r\nhost: w\r\nx-marina-control: {token}\r\nx-marina-event: idle\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
            };
            assert_eq!(status_line(&socket, &lifecycle("the-token")), "HTTP/1.1 204 No Content", "{rt}");
            // Without the token it is an ordinary request, for the app.
            assert_eq!(status_line(&socket, &lifecycle("not-the-token")), "HTTP/1.1 200 OK", "{rt}");
            let _ = child.kill();
            child.wait().unwrap();
        }
    }
}
