//! A hostile client's pass over the production error edge (issue 7, item 5): with
//! `NODE_ENV=production`, every error we can provoke — a worker that crashes with stderr, a
//! thrown error, a bad manifest, a proxy upstream that is down, bad JSON to `/api/keys`,
//! `/keyval/api`, `/database/api` and `/redirects/api` — answers with its code and the request
//! id, and no absolute path, stderr line, stack or thrown text. Then hostile input on those
//! APIs: bodies over their limit get 413 before they are read whole, deep nesting and malformed
//! JSON get clear 400s, and a client trickling a body holds up nobody else.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROOT_KEY: &str = "root-key-for-the-production-errors-test-0123456789";
/// Text the apps put in their stderr and thrown errors; it must never reach a client.
const MARKERS: [&str; 3] = ["STDERR_MARKER", "THROWN_MARKER", "IMPORT_MARKER"];

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
    set_mode(p, 0o644);
    set_mode(p.parent().unwrap(), 0o755);
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn apps() -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    set_mode(apps.path(), 0o755);
    let r = apps.path();
    write(
        &r.join("thrower/index.js"),
        r#"export default { fetch() {
  console.error("STDERR_MARKER " + process.cwd());
  throw new Error("THROWN_MARKER at " + import.meta.url);
} };"#,
    );
    write(&r.join("thrower/manifest.yaml"), "entrypoint: index.js\nttl: 60s\n");
    write(
        &r.join("crasher/index.js"),
        "console.error('STDERR_MARKER ' + process.cwd());\nthrow new Error('IMPORT_MARKER ' + import.meta.url);\n",
    );
    write(&r.join("crasher/manifest.yaml"), "entrypoint: index.js\nttl: 60s\n");
    write(&r.join("broken/index.html"), "<h1>broken</h1>");
    write(&r.join("broken/manifest.yaml"), "ttl: [\n");
    write(&r.join("proxied/index.html"), "<h1>proxied</h1>");
    write(
        &r.join("proxied/manifest.yaml"),
        &format!("proxy:\n  - pattern: \"^/api/(.*)\"\n    target: \"http://127.0.0.1:{}\"\n", closed_port()),
    );
    write(&r.join("fine/index.html"), "<h1>fine</h1>");
    apps
}

struct Answer {
    status: u16,
    id: String,
    text: String,
}

/// An admin API key in marina's database (the proxy plugin reads the root key from the process
/// environment, not from the test's configuration, so a key in the database serves every API).
async fn admin_key(state: &Path) -> String {
    let store = marina_store::Store::open(None, state).await.unwrap();
    // As `marina keys create` does: the server's new marina.db may still be being migrated.
    store.migrate_system().await.unwrap();
    let keys = marina_auth::keys::KeyStore::new(store);
    let new =
        marina_auth::keys::NewKey { name: Some("admin".into()), role: Some("admin".into()), ..Default::default() };
    keys.create(new, None).await.unwrap().key
}

async fn call(c: &reqwest::Client, key: &str, method: &str, url: &str, body: Option<String>) -> Answer {
    let mut r = c.request(method.parse().unwrap(), url).bearer_auth(key).timeout(Duration::from_secs(60));
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let id = resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    Answer { status, id, text: resp.text().await.unwrap() }
}

/// Nothing internal in a body: no marker, no absolute path of the machine, no stack frame.
fn assert_no_internals(what: &str, a: &Answer, dirs: &[&Path]) {
    assert!(!a.id.is_empty(), "{what}: no x-request-id");
    for m in MARKERS {
        assert!(!a.text.contains(m), "{what} leaks {m}: {}", a.text);
    }
    for d in dirs {
        assert!(!a.text.contains(d.to_str().unwrap()), "{what} leaks the path {}: {}", d.display(), a.text);
    }
    for internal in ["/root/", "/home/", "/usr/", "/tmp/", "file://", "    at ", "node:internal", ".rs:"] {
        assert!(!a.text.contains(internal), "{what} leaks {internal:?}: {}", a.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_errors_show_only_the_code_and_request_id() {
    let apps = apps();
    let srv = common::start(apps.path(), |r| {
        r.set("NODE_ENV", "production")
            .set("RUNTIME_JS", "node")
            .set("RUNTIME_ROOT_KEY", ROOT_KEY)
            .set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
    })
    .await;
    let c = reqwest::Client::new();
    let key = admin_key(&srv.state_dir).await;
    let b = &srv.base;
    let dirs = [apps.path(), srv.state_dir.as_path()];

    // Server-side failures: only the code and the request id.
    for (what, path, code) in [
        ("a thrown error", "/thrower/", "WORKER_ERROR"),
        ("a worker that crashes at start with stderr", "/crasher/", "WORKER_START_FAILED"),
        ("a bad manifest", "/broken/", "APP_MANIFEST_INVALID"),
    ] {
        let a = call(&c, &key, "GET", &format!("{b}{path}"), None).await;
        assert_no_internals(what, &a, &dirs);
        assert!(a.status >= 500, "{what}: {}", a.text);
        let body: Value = serde_json::from_str(&a.text).unwrap();
        assert_eq!(body["code"], code, "{what}: {body}");
        assert_eq!(body["data"]["requestId"], a.id, "{what}: {body}");
        assert_eq!(body["data"].as_object().unwrap().len(), 1, "{what}: only the request id in data: {body}");
        assert!(body["message"].as_str().unwrap().contains(&a.id), "{what}: {body}");
    }
    // A proxy rule whose upstream is down.
    let a = call(&c, &key, "GET", &format!("{b}/proxied/api/time"), None).await;
    assert_no_internals("a proxy upstream that is down", &a, &dirs);
    assert!(a.status == 502 || a.status == 504, "{}", a.text);
    let body: Value = serde_json::from_str(&a.text).unwrap();
    assert_eq!(body["data"]["requestId"], a.id, "{body}");
    // The thrown error is still served again (the worker stays up) and other apps serve.
    assert_eq!(call(&c, &key, "GET", &format!("{b}/thrower/"), None).await.status, 500);
    assert_eq!(call(&c, &key, "GET", &format!("{b}/fine/"), None).await.status, 200);

    // Client errors on the plugin APIs: clear 400s naming the problem, nothing internal.
    let deep = "[".repeat(100_000);
    // Valid JSON (`[]`, an empty body) may be a fine value for some routes; the rest must not.
    let bodies = ["{bad", "", "[]", "{\"a\":", deep.as_str(), "\u{0}"];
    let endpoints = [
        ("POST", "/api/keys"),
        ("PUT", "/keyval/api/keys/a/b"),
        ("POST", "/keyval/api/atomic"),
        ("POST", "/database/api/v2/pipeline"),
        ("POST", "/database/api/pipeline"),
        ("POST", "/redirects/api/rules"),
        ("PUT", "/redirects/api/rules/reorder"),
    ];
    for (method, path) in endpoints {
        for body in bodies {
            let what = format!("{method} {path} with {:?}", body.chars().take(8).collect::<String>());
            let a = call(&c, &key, method, &format!("{b}{path}"), Some(body.to_string())).await;
            assert_no_internals(&what, &a, &dirs);
            // An empty body may be accepted by some routes (it is "no value"); everything else
            // is a 4xx with the one error shape.
            if a.status < 400 {
                assert!(body.is_empty() || body == "[]", "{what}: {} {}", a.status, a.text);
                continue;
            }
            assert!((400..500).contains(&a.status), "{what}: {} {}", a.status, a.text);
            let v: Value = serde_json::from_str(&a.text).unwrap_or_else(|_| panic!("{what}: not JSON: {}", a.text));
            assert_eq!(v["success"], false, "{what}: {v}");
            assert!(v["code"].as_str().is_some_and(|c| c.chars().all(|c| c.is_ascii_uppercase() || c == '_')), "{v}");
        }
    }
    // marina still answers after all of it.
    assert_eq!(call(&c, &key, "GET", &format!("{b}/api/health"), None).await.status, 200);
    srv.stop().await;
}

/// Send `len` bytes declared in Content-Length to `path` over a raw connection, and return the
/// status line marina answers with and how many bytes had been written by then. The writer
/// stops when the answer arrives, so marina must answer before reading the body whole.
async fn oversized(addr: std::net::SocketAddr, key: &str, method: &str, path: &str, len: usize) -> (String, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'['; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            if wr.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n;
            counter.store(sent, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await.expect("an answer in time").unwrap();
        assert!(n > 0, "connection closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let at = written.load(std::sync::atomic::Ordering::Relaxed);
    writer.abort();
    let line = String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_string();
    (line, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_slow_bodies_to_the_plugin_apis_are_cut_short() {
    let apps = apps();
    let srv = common::start(apps.path(), |r| {
        r.set("NODE_ENV", "production")
            .set("RUNTIME_ROOT_KEY", ROOT_KEY)
            .set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
    })
    .await;
    let key = admin_key(&srv.state_dir).await;
    // 512 MiB declared: each API answers 413 long before that much is sent.
    let total = 512 * 1024 * 1024;
    for (method, path) in [
        ("POST", "/api/keys"),
        ("PUT", "/keyval/api/keys/a/b"),
        ("POST", "/database/api/v2/pipeline"),
        ("POST", "/redirects/api/rules"),
    ] {
        let started = Instant::now();
        let (line, written) = oversized(srv.addr, &key, method, path, total).await;
        eprintln!("{method} {path}: {line:?} after {written} bytes, {:?}", started.elapsed());
        assert!(line.contains(" 413 "), "{method} {path}: {line}");
        assert!(written < 64 * 1024 * 1024, "{method} {path}: {written} bytes were read before the 413");
    }

    // A client trickling a body to /keyval/api holds up nobody: other API calls answer.
    let stream = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (_rd, mut wr) = stream.into_split();
    wr.write_all(
        format!("PUT /keyval/api/keys/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: 1000\r\n\r\n{{")
            .as_bytes(),
    )
    .await
    .unwrap();
    let c = reqwest::Client::new();
    for i in 0..10 {
        let a = call(&c, &key, "PUT", &format!("{}/keyval/api/keys/fast/{i}", srv.base), Some(format!("{i}"))).await;
        assert!(a.status < 300, "{} {}", a.status, a.text);
        wr.write_all(b" ").await.unwrap();
    }
    assert_eq!(call(&c, &key, "GET", &format!("{}/fine/", srv.base), None).await.status, 200);
    // (Closing the trickle: a body that never finishes is the body timeout's business, and a
    // graceful stop waits for requests in flight.)
    drop((_rd, wr));
    srv.stop().await;
}
