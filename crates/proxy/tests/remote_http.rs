//! Proxy rules over real HTTP: a front on 127.0.0.1 routes through `RuleSet` + `Remote` to real
//! upstream servers the test starts.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use marina_proxy::RemoteConfig;
use marina_proxy::rules::RuleSpec;
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn get_json(url: &str) -> (u16, Value) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn the_rewrite_table_over_http() {
    let up = http_upstream().await;
    let front = Front::start(RemoteConfig::default()).await;
    let t = format!("http://{up}");
    front.set_rules(vec![
        RuleSpec { rewrite: Some("/v1/$1".into()), ..rule("^/api/(.*)$", &format!("{t}/base/")) },
        RuleSpec { rewrite: Some("/${id}/$kind".into()), ..rule(r"^/n/(?<kind>\w+)/(?<id>\d+)$", &t) },
        RuleSpec { rewrite: Some("fixed".into()), ..rule("^/const", &t) },
        rule("^/plain", &t),
    ]);
    for (path, want) in [
        ("/api/users/7?x=1&y=%20", "/base/v1/users/7?x=1&y=%20"),
        ("/api/", "/base/v1/"),
        ("/n/user/42", "/42/user"),
        ("/const/anything?q", "/fixed?q"),
        ("/plain/a%2Fb?z=1", "/plain/a%2Fb?z=1"),
    ] {
        let (status, body) = get_json(&front.url(path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["path"], want, "{path}");
    }
    let (status, _) = get_json(&front.url("/none")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn headers_forwarding_host_and_passthrough() {
    let up = http_upstream().await;
    let front = Front::start(RemoteConfig::default()).await;
    let t = format!("http://{up}");
    front.set_rules(vec![
        RuleSpec {
            change_origin: Some(true),
            headers: Some(BTreeMap::from([("x-rule".into(), "yes".into()), ("x-client".into(), "rule-wins".into())])),
            ..rule("^/co/", &t)
        },
        rule("^/keep/", &t),
    ]);
    let resp = client()
        .get(front.url("/co/x"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("origin", "http://app.example")
        .header("x-client", "mine")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookies: Vec<_> =
        resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(cookies, ["a=1", "b=2"], "repeated response headers are kept");
    assert!(resp.headers().get("x-leak").is_none(), "a header the upstream's Connection names is dropped");
    let body: Value = resp.json().await.unwrap();
    let h = &body["headers"];
    assert_eq!(h["host"], up.to_string(), "changeOrigin sends the target's host");
    assert_eq!(h["origin"], format!("http://{up}"));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "the client's claim is replaced by the socket address");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], front.addr.to_string(), "the host the client asked for");
    assert_eq!(h["forwarded"], format!("for=127.0.0.1;proto=http;host=\"{}\"", front.addr));
    assert_eq!(h["x-rule"], "yes");
    assert_eq!(h["x-client"], "rule-wins");
    assert!(h.get("x-hop").is_none() && h.get("keep-alive").is_none());

    let (_, body) = get_json(&front.url("/keep/x")).await;
    assert_eq!(body["headers"]["host"], front.addr.to_string(), "without changeOrigin the client's Host is kept");

    // Compression passes through untouched; redirects reach the client.
    let resp = client().get(front.url("/keep/gzip")).send().await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), GZIP_BYTES);
    let resp = client().get(front.url("/keep/redirect")).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/elsewhere");
}

#[tokio::test]
async fn a_large_body_streams_both_ways() {
    let up = http_upstream().await;
    let front = Front::start(RemoteConfig::default()).await;
    front.set_rules(vec![rule("^/up", &format!("http://{up}"))]);
    // 64 MiB generated lazily, echoed by the upstream, counted as it arrives.
    let chunks = futures_util::stream::iter((0..1024).map(|_| Ok::<_, Infallible>(Bytes::from(vec![7u8; 64 * 1024]))));
    let resp = client().put(front.url("/up/big")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&b| b == 7));
        total += chunk.len();
    }
    assert_eq!(total, 64 * 1024 * 1024);
}

#[tokio::test]
async fn upstream_down_slow_and_reset() {
    let down = closed_port().await;
    let reset = resetting_upstream().await;
    let slow = http_upstream().await;
    let front =
        Front::start(RemoteConfig { response_timeout: Duration::from_millis(500), ..RemoteConfig::default() }).await;
    front.set_rules(vec![
        rule("^/down", &format!("http://{down}")),
        rule("^/reset", &format!("http://{reset}")),
        rule("^/slow", &format!("http://{slow}")),
    ]);
    let (status, body) = get_json(&front.url("/down")).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("UPSTREAM_UNREACHABLE")), "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["data"]["rule"], "r0");
    let (status, body) = get_json(&front.url("/reset")).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("UPSTREAM_FAILED")), "{body}");
    let started = std::time::Instant::now();
    let (status, body) = get_json(&front.url("/slow")).await;
    assert_eq!((status, body["code"].as_str()), (504, Some("UPSTREAM_TIMEOUT")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(20), "the deadline cuts the wait");
}

#[tokio::test]
async fn tls_targets_verify_unless_secure_is_false() {
    let (acceptor, cert) = tls_localhost();
    let up = https_upstream(acceptor).await;
    let target = format!("https://localhost:{}", up.port());

    let front = Front::start(RemoteConfig::default()).await;
    front.set_rules(vec![rule("^/strict", &target), RuleSpec { secure: Some(false), ..rule("^/lax", &target) }]);
    let (status, body) = get_json(&front.url("/strict")).await;
    assert_eq!(status, 502, "a self-signed certificate is refused by default: {body}");
    assert!(body["message"].as_str().unwrap().to_lowercase().contains("certificate"), "{body}");
    let (status, body) = get_json(&front.url("/lax/x")).await;
    assert_eq!((status, body["path"].as_str()), (200, Some("/lax/x")), "{body}");

    // Trusting the certificate makes the verified path work.
    let trusting = Front::start(RemoteConfig { extra_roots: vec![cert], ..RemoteConfig::default() }).await;
    trusting.set_rules(vec![rule("^/strict", &target)]);
    let (status, body) = get_json(&trusting.url("/strict")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn ssrf_targets_are_refused() {
    let front = Front::start(RemoteConfig::default()).await;
    for target in
        ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/", format!("http://{}", front.addr).as_str()]
    {
        let err = marina_proxy::Rule::compile("x".into(), rule("^/", target), false, &front.policy).unwrap_err();
        assert_eq!(err.field, "target", "{target}");
        let as_error: marina_core::Error = err.into();
        assert_eq!(as_error.status(), 400);
        assert_eq!(as_error.code(), "INVALID_PROXY_RULE");
    }
}

/// Targets that pass validation (they are host names, or spellings the validator cannot read
/// as an address) but reach a refused address: caught when connecting, 502 with the reason.
#[tokio::test]
async fn names_reaching_refused_addresses_are_caught_on_connect() {
    let up = http_upstream().await;
    let deny = RemoteConfig {
        policy: marina_proxy::TargetPolicy::new(vec![], vec![]).with_deny(vec!["127.0.0.0/8".parse().unwrap()]),
        ..RemoteConfig::default()
    };
    let front = Front::start(deny).await;
    let port = front.addr.port();
    // `127.1` is not an IP address to Rust's parser, but the system resolver reads it as
    // 127.0.0.1: a classic way around a validator. `localhost.localdomain`-style names are not
    // portable, this one is.
    front.set_rules(vec![
        rule("^/loop", &format!("http://127.1:{port}")),
        rule("^/denied", &format!("http://127.1:{}", up.port())),
    ]);
    let (status, body) = get_json(&front.url("/loop")).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("PROXY_TARGET_REFUSED")), "{body}");
    let (status, body) = get_json(&front.url("/denied")).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("PROXY_TARGET_REFUSED")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("denies"), "{body}");

    // Without the deny list, the same spelling of marina's own address is a loop, and another
    // port on loopback is a normal upstream.
    let front = Front::start(RemoteConfig::default()).await;
    let port = front.addr.port();
    front.set_rules(vec![
        rule("^/loop", &format!("http://127.1:{port}")),
        RuleSpec { rewrite: Some("/ok".into()), ..rule("^/fine", &format!("http://127.1:{}", up.port())) },
    ]);
    let (status, body) = get_json(&front.url("/loop")).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("PROXY_TARGET_REFUSED")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("would loop"), "{body}");
    let (status, body) = get_json(&front.url("/fine")).await;
    assert_eq!((status, body["path"].as_str()), (200, Some("/ok")), "{body}");
}

/// An upstream that answers `ok` on keep-alive connections and reports each connection it
/// accepts (`true`) and each one the client closes (`false`).
async fn counting_upstream() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = tx.send(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    }
                }
                let _ = tx.send(false);
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn connections_are_reused_per_host_and_closed_when_idle() {
    let (addr, mut events) = counting_upstream().await;
    let idle = Duration::from_millis(400);
    let front = Front::start(RemoteConfig { pool_idle_timeout: idle, ..RemoteConfig::default() }).await;
    front.set_rules(vec![rule("^/a", &format!("http://{addr}")), rule("^/b", &format!("http://{addr}"))]);
    let http = client();
    for path in ["/a", "/b", "/a/x", "/b/y"] {
        let resp = http.get(front.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    // One connection for all four: two rules, one host.
    assert_eq!(events.try_recv(), Ok(true));
    assert!(events.try_recv().is_err(), "requests one after the other must share one connection");
    // Left idle, it is closed within about twice the idle timeout (the sweep runs every half).
    let closed = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(closed, Ok(Some(false)), "the idle connection must be closed");
}
