//! `base` and `relativePaths` over real HTTP: a front on 127.0.0.1 forwards through `Remote` to
//! a real HTML upstream this file starts, which sends its pages in small pieces so that tags,
//! attributes and script strings arrive split across chunks.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marina_core::body::{self, Body};
use marina_proxy::RemoteConfig;
use marina_proxy::rules::RuleSpec;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const PAGE: &str = concat!(
    r#"<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="/app.css"></head>"#,
    r#"<body><a href="/docs/">d</a><a href="//cdn.example/x">c</a><a href="https://x.example/">x</a>"#,
    r#"<img src="/logo.png"><form action="/login"></form><script src="/app.js"></script>"#,
    r#"<script>fetch('/api/me'); const u = '//cdn/x'; const r = '/';</script>"#,
    r#"<p>'/not-in-a-script' and href="/text"</p><a href=/unquoted>u</a><base href="/keep"></body></html>"#
);

const REWRITTEN: &str = concat!(
    r#"<!doctype html><html><head><base href="/cp/"><meta charset="utf-8"><link rel="stylesheet" href="./app.css"></head>"#,
    r#"<body><a href="./docs/">d</a><a href="//cdn.example/x">c</a><a href="https://x.example/">x</a>"#,
    r#"<img src="./logo.png"><form action="./login"></form><script src="./app.js"></script>"#,
    r#"<script>fetch('./api/me'); const u = '//cdn/x'; const r = './';</script>"#,
    r#"<p>'/not-in-a-script' and href="/text"</p><a href="./unquoted">u</a><base href="/keep"></body></html>"#
);

const BIG_REPEAT: usize = 100_000;

/// The HTML upstream. It reports the `Accept-Encoding` it received in `x-seen-ae`.
async fn html_upstream() -> (SocketAddr, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let held = release.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let held = held.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let held = held.clone();
                async move { Ok::<_, Infallible>(page(req, held)) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc));
        }
    });
    (addr, release)
}

fn chunked(pieces: Vec<Bytes>) -> Body {
    body::boxed(StreamBody::new(futures_util::stream::iter(
        pieces.into_iter().map(|b| Ok::<_, Infallible>(Frame::data(b))),
    )))
}

fn page(req: Request<Incoming>, release: Arc<Notify>) -> Response<Body> {
    let seen_ae = req.headers().get("accept-encoding").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let html =
        |ct: &str| Response::builder().header("content-type", ct.to_string()).header("x-seen-ae", seen_ae.clone());
    let path = req.uri().path().to_string();
    match path.as_str() {
        // Five bytes at a time: every tag and script string is split somewhere.
        "/page" => html("text/html; charset=utf-8")
            .header("content-length", PAGE.len())
            .header("etag", "\"v1\"")
            .body(chunked(PAGE.as_bytes().chunks(5).map(Bytes::copy_from_slice).collect()))
            .unwrap(),
        "/held" => {
            let first = Bytes::from_static(b"<html><head></head><body><a href=\"/first\">1</a>");
            let rest = async move {
                release.notified().await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"<a href=\"/second\">2</a></body></html>")))
            };
            let stream = futures_util::stream::iter([Ok(Frame::data(first))]).chain(futures_util::stream::once(rest));
            html("text/html").body(body::boxed(StreamBody::new(stream))).unwrap()
        }
        "/big" => {
            let piece = Bytes::from_static(b"<img src=\"/i.png\">");
            let all: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * BIG_REPEAT).collect();
            html("text/html").body(chunked(all.chunks(64 * 1024).map(Bytes::copy_from_slice).collect())).unwrap()
        }
        "/gz" => html("text/html").header("content-encoding", "gzip").body(body::full(GZIP_BYTES)).unwrap(),
        "/latin1" => html("text/html; charset=ISO-8859-1")
            .body(body::full(&b"<p>caf\xe9</p><img src=\"/caf\xe9.png\">"[..]))
            .unwrap(),
        "/json" => html("application/json").body(body::full(r#"{"href":"/x"}"#)).unwrap(),
        _ => html("text/html").status(404).body(body::full("<a href=\"/home\">no</a>")).unwrap(),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().no_brotli().build().unwrap()
}

async fn setup() -> (Front, Arc<Notify>) {
    let (up, release) = html_upstream().await;
    let front = Front::start(RemoteConfig::default()).await;
    let t = format!("http://{up}");
    front.set_rules(vec![
        RuleSpec {
            rewrite: Some("$1".into()),
            base: Some("/cp".into()),
            relative_paths: Some(true),
            ..rule("^/cp(/.*)?$", &t)
        },
        RuleSpec { rewrite: Some("$1".into()), base: Some("/b/".into()), ..rule("^/b(/.*)?$", &t) },
        RuleSpec { rewrite: Some("$1".into()), ..rule("^/plain(/.*)?$", &t) },
    ]);
    (front, release)
}

#[tokio::test]
async fn base_and_relative_paths_rewrite_a_page_split_into_small_chunks() {
    let (front, _) = setup().await;
    let resp = client().get(front.url("/cp/page")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none(), "the upstream's length no longer holds");
    assert_eq!(resp.headers()["etag"], "W/\"v1\"", "a strong validator becomes weak");
    assert_eq!(resp.headers()["x-seen-ae"], "identity", "a page request asks for an uncompressed answer");
    assert_eq!(resp.text().await.unwrap(), REWRITTEN);

    // `base` alone injects the tag and touches nothing else.
    let resp = client().get(front.url("/b/page")).send().await.unwrap();
    let want = PAGE.replacen("<head>", "<head><base href=\"/b/\">", 1);
    assert_eq!(resp.text().await.unwrap(), want);

    // A rule with neither passes the page through as it came, length included.
    let resp = client().get(front.url("/plain/page")).send().await.unwrap();
    assert_eq!(resp.headers()["content-length"], PAGE.len().to_string());
    assert_eq!(resp.headers()["etag"], "\"v1\"");
    assert_eq!(resp.text().await.unwrap(), PAGE);

    // Error pages are HTML too.
    let resp = client().get(front.url("/cp/missing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "<a href=\"./home\">no</a>");
}

#[tokio::test]
async fn what_is_not_uncompressed_html_passes_unchanged() {
    let (front, _) = setup().await;
    // Not a page request: the client's Accept-Encoding goes upstream as it was.
    let resp = client().get(front.url("/cp/json")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(resp.headers()["x-seen-ae"], "gzip");
    assert_eq!(resp.text().await.unwrap(), r#"{"href":"/x"}"#);

    // Compressed HTML cannot be rewritten without decoding it: the bytes pass untouched.
    let resp = client().get(front.url("/cp/gz")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(resp.bytes().await.unwrap(), GZIP_BYTES);

    // A Latin-1 page is rewritten in its own charset: the é byte stays one byte.
    let resp = client().get(front.url("/cp/latin1")).send().await.unwrap();
    assert_eq!(&resp.bytes().await.unwrap()[..], &b"<p>caf\xe9</p><img src=\"./caf\xe9.png\">"[..]);

    // HEAD: no body to rewrite, and no length that would be wrong.
    let resp = client().head(front.url("/cp/page")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
}

#[tokio::test]
async fn rewriting_streams_instead_of_buffering() {
    let (front, release) = setup().await;
    let resp = client().get(front.url("/cp/held")).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    // The upstream holds the end of the page until told; the start must arrive rewritten first.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&got).contains("href=\"./first\"") {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the first part arrives before the upstream finishes");
        got.extend_from_slice(&next.unwrap().unwrap());
    }
    assert!(String::from_utf8_lossy(&got).starts_with("<html><head><base href=\"/cp/\"></head>"));
    release.notify_one();
    while let Some(chunk) = tokio::time::timeout_at(deadline, stream.next()).await.unwrap() {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&got).ends_with("<a href=\"./second\">2</a></body></html>"));

    // A large page: every attribute rewritten, nothing lost at chunk boundaries.
    let body = client().get(front.url("/cp/big")).send().await.unwrap().bytes().await.unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    assert_eq!(text.matches("<img src=\"./i.png\">").count(), BIG_REPEAT);
    assert_eq!(text.len(), BIG_REPEAT * "<img src=\"./i.png\">".len());
}
