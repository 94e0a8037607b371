//! Worker apps through the whole server over real HTTP: the forwarded request as the app sees
//! it, repeated headers, streaming, the body limit, WebSocket upgrades, crash and timeout
//! errors as JSON. The fixture apps are the pool's (crates/workers/tests/apps), run by real Node
//! and Python processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workers/tests/apps").join(name)
}

fn copy_app(from: &Path, to: &Path, manifest: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(to.join("manifest.yaml"), manifest).unwrap();
}

/// The fixture apps in a fresh worker dir, served with Node as the JS runtime (Node is always
/// on the machine; Bun is covered by the pool's own tests).
async fn start() -> (common::Running, tempfile::TempDir) {
    let apps = tempfile::tempdir().unwrap();
    // Workers run as another user when marina is root: they must be able to enter it.
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    copy_app(
        &fixture("js-echo"),
        &apps.path().join("echo"),
        "entrypoint: index.js\nttl: 60s\ntimeout: 2s\nidleTimeout: 60s\n",
    );
    copy_app(&fixture("js-echo"), &apps.path().join("small"), "entrypoint: index.js\nttl: 60s\nmaxBodySize: 1kb\n");
    copy_app(&fixture("py-echo"), &apps.path().join("py"), "command: [\"python3\", \"app.py\"]\nttl: 60s\n");
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
    })
    .await;
    (srv, apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_a_stripped_path_and_trustworthy_headers() {
    let (srv, _apps) = start().await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/echo/echo?x=1", srv.base))
        .header("x-forwarded-for", "6.6.6.6")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/echo?x=1");
    assert_eq!(body["base"], "/echo");
    assert_eq!(body["requestId"], id.as_str());
    assert_eq!(body["forwardedFor"], "127.0.0.1", "the client's claim is replaced by the socket address");
    assert_eq!(body["body"], "payload");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_set_cookie_headers_survive_from_js_and_python() {
    let (srv, _apps) = start().await;
    for path in ["/echo/cookies", "/py/cookies"] {
        let resp = reqwest::get(format!("{}{path}", srv.base)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let cookies: Vec<_> =
            resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(cookies.len(), 2, "{path}: {cookies:?}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_through_the_server() {
    let (srv, _apps) = start().await;
    let resp = reqwest::get(format!("{}/echo/sse", srv.base)).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains("tick 2") {
        let chunk =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("ticks arrive while the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    drop(stream);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_size_get_413() {
    let (srv, _apps) = start().await;
    let client = reqwest::Client::new();
    let resp = client.post(format!("{}/small/count", srv.base)).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "PAYLOAD_TOO_LARGE");
    // A chunked body (no Content-Length) is cut while streaming.
    let chunks = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let resp =
        client.post(format!("{}/small/count", srv.base)).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    // The rest of the body is not read, so the connection closes after the answer, and the
    // answer says so: the client does not send its next request on it (RFC 9112 §9.6).
    assert_eq!(resp.headers()["connection"], "close");
    let resp = client.post(format!("{}/small/count", srv.base)).body(vec![b'x'; 512]).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["bytes"], 512);
    srv.stop().await;
}

/// A client that writes its whole body before it reads (Python's `http.client` does) still gets
/// the 413 answered at the start: marina reads and drops the rest after its answer (lingering
/// close) instead of closing on unread bytes, which resets the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_body_before_reading_gets_the_413() {
    let (srv, _apps) = start().await;
    for chunked in [false, true] {
        let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        let len = 8 << 20;
        let framing = if chunked { "transfer-encoding: chunked".to_string() } else { format!("content-length: {len}") };
        let head = format!("POST /small/count HTTP/1.1\r\nhost: t\r\n{framing}\r\n\r\n");
        let mut body = Vec::new();
        if chunked {
            for _ in 0..len / 65536 {
                body.extend_from_slice(b"10000\r\n");
                body.extend_from_slice(&[b'z'; 65536]);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
        } else {
            body = vec![b'z'; len];
        }
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap_or_else(|e| panic!("chunked={chunked}: the body could not be sent: {e}"));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
            .await
            .expect("the connection is closed after the answer")
            .unwrap_or_else(|e| panic!("chunked={chunked}: the answer could not be read: {e}"));
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "chunked={chunked}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
        assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_timeouts_are_json_errors_and_the_app_recovers() {
    let (srv, _apps) = start().await;
    let resp = reqwest::get(format!("{}/echo/crash", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "WORKER_CRASHED");
    let resp = reqwest::get(format!("{}/echo/hang", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "WORKER_TIMEOUT");
    let resp = reqwest::get(format!("{}/echo/", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 200, "a fresh worker serves the next request");
    let workers: Value = reqwest::get(format!("{}/api/workers", srv.base)).await.unwrap().json().await.unwrap();
    let echo =
        workers["workers"].as_array().unwrap().iter().find(|w| w["app"] == "echo").cloned().expect("echo listed");
    assert_eq!(echo["kind"], "js");
    assert!(echo["restarts"].as_u64().unwrap() >= 2, "{echo}");
    assert!(workers["pool"]["totalRequests"].as_u64().unwrap() >= 3);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_the_server() {
    let (srv, _apps) = start().await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        b"GET /py/ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let msg = b"ping through marina";
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![0x81, 0x80 | msg.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(msg.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h)).await.unwrap().unwrap();
    assert_eq!(h[0], 0x81);
    let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
    s.read_exact(&mut payload).await.unwrap();
    assert_eq!(payload, msg);
    drop(s);
    srv.stop().await;
}
