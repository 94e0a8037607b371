//! An app's manifest `proxy:` rules through the whole server over real HTTP and WebSocket, to
//! upstream servers the test starts on 127.0.0.1.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marina_core::body::{self, Body};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// An upstream answering `{"who", "path", "headers"}`; POST echoes the body.
async fn upstream(who: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let svc = service_fn(move |req: Request<Incoming>| async move {
                if req.method() == http::Method::POST {
                    return Ok::<_, Infallible>(Response::new(body::boxed(req.into_body())));
                }
                let headers: serde_json::Map<String, Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("?").into())))
                    .collect();
                let v = serde_json::json!({"who": who, "path": req.uri().to_string(), "headers": headers});
                Ok(Response::new(body::full(v.to_string())) as Response<Body>)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc));
        }
    });
    addr
}

/// A WebSocket upstream that says which path it was asked for, then echoes.
async fn ws_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut path = String::new();
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    path = req.uri().to_string();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else { return };
                let _ = ws.send(Message::text(path)).await;
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn write_app(dir: &std::path::Path, manifest: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>front</title>").unwrap();
    std::fs::write(dir.join("manifest.yaml"), manifest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_rules_forward_http_and_websocket_and_follow_manifest_changes() {
    let one = upstream("one").await;
    let two = upstream("two").await;
    let ws = ws_upstream().await;
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("front");
    let manifest = |target: SocketAddr| {
        format!(
            "entrypoint: index.html\nmaxBodySize: 1kb\nproxy:\n  - pattern: \"^/api/(.*)$\"\n    target: http://{target}/base\n    rewrite: /v1/$1\n  - pattern: \"^/ws\"\n    target: ws://{ws}\n"
        )
    };
    write_app(&app, &manifest(one));
    let srv = common::start(apps.path(), |_| {}).await;
    let client = reqwest::Client::new();

    let resp = client
        .get(format!("{}/front/api/x/y?q=1", srv.base))
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["who"], "one");
    assert_eq!(body["path"], "/base/v1/x/y?q=1", "matched below the app, rewritten, query kept");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(body["headers"]["forwarded"], format!("for=127.0.0.1;proto=http;host=\"{}\"", srv.addr));

    // Paths no rule matches go to the app itself.
    let resp = client.get(format!("{}/front/", srv.base)).send().await.unwrap();
    assert!(resp.text().await.unwrap().contains("<title>front</title>"));

    // The app's maxBodySize holds for proxied bodies.
    let resp = client.post(format!("{}/front/api/up", srv.base)).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let resp = client.post(format!("{}/front/api/up", srv.base)).body("small").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "small");

    // WebSocket through the rule, query kept.
    let (mut sock, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/front/ws/chat?room=1", srv.addr)).await.unwrap();
    let first = sock.next().await.unwrap().unwrap();
    assert_eq!(first.to_text().unwrap(), "/ws/chat?room=1");

    // A manifest edit is picked up without a restart, and the open socket survives it.
    write_app(&app, &manifest(two));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = client.get(format!("{}/front/api/x", srv.base)).send().await.unwrap().json().await.unwrap();
        if body["who"] == "two" {
            break;
        }
        assert!(Instant::now() < deadline, "the new manifest was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sock.send(Message::text("still open")).await.unwrap();
    assert_eq!(sock.next().await.unwrap().unwrap().to_text().unwrap(), "still open");

    // A rule aimed at marina itself is refused when it is used (the manifest is read before the
    // listener's address is known).
    write_app(
        &apps.path().join("loop"),
        &format!("entrypoint: index.html\nproxy:\n  - pattern: \"^/\"\n    target: http://{}\n", srv.addr),
    );
    // The new app dir reaches the registry through the file watcher: poll until it is known.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resp = loop {
        let resp = client.get(format!("{}/loop/x", srv.base)).send().await.unwrap();
        if resp.status() != 404 {
            break resp;
        }
        assert!(Instant::now() < deadline, "the new app dir was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "PROXY_TARGET_REFUSED", "{body}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_makes_the_app_answer_with_the_manifest_error() {
    let apps = tempfile::tempdir().unwrap();
    write_app(
        &apps.path().join("bad"),
        "entrypoint: index.html\nproxy:\n  - pattern: \"(\"\n    target: http://127.0.0.1:1\n",
    );
    let srv = common::start(apps.path(), |_| {}).await;
    let resp = reqwest::get(format!("{}/bad/", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "APP_MANIFEST_INVALID");
    assert_eq!(body["data"]["errors"][0]["path"], "proxy[0].pattern", "{body}");
    srv.stop().await;
}

/// The bundled example `examples/apps/proxy-demo` with its stand-in backend
/// (`examples/proxy-backend.py`, a real Python process) on a free port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_demo_example_works() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut backend = tokio::process::Command::new("python3")
        .arg(repo.join("examples/proxy-backend.py"))
        .env("PORT", port.to_string())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs the backend");
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("proxy-demo");
    std::fs::create_dir_all(&app).unwrap();
    for f in ["index.html", "manifest.yaml"] {
        let text = std::fs::read_to_string(repo.join("examples/apps/proxy-demo").join(f)).unwrap();
        std::fs::write(app.join(f), text.replace("127.0.0.1:4000", &format!("127.0.0.1:{port}"))).unwrap();
    }
    let srv = common::start(apps.path(), |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let body: Value = loop {
        // The backend needs a moment to listen; until then the rule answers 502.
        let resp = reqwest::get(format!("{}/proxy-demo/api/time?x=1", srv.base)).await.unwrap();
        if resp.status() == 200 {
            break resp.json().await.unwrap();
        }
        assert_eq!(resp.status(), 502);
        assert!(Instant::now() < deadline, "the backend never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["path"], "/v1/time?x=1");
    assert_eq!(body["proxiedBy"], "marina");
    assert_eq!(body["forwardedFor"], "127.0.0.1");
    let page = reqwest::get(format!("{}/proxy-demo/", srv.base)).await.unwrap().text().await.unwrap();
    assert!(page.contains("<h1>proxy-demo</h1>"));
    srv.stop().await;
    backend.kill().await.unwrap();
}
