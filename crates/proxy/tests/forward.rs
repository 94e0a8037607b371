//! Forwarding over real loopback TCP and a real Unix socket to a hyper server.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marina_core::body::{self, Body};
use marina_proxy::{LimitedBody, Target, Upstream};

async fn echo(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let seen_conn = req.headers().contains_key("x-hop") || req.headers().contains_key("keep-alive");
    let method = req.method().clone();
    let path = req.uri().to_string();
    let mut resp = Response::builder()
        .header("set-cookie", "a=1")
        .header("set-cookie", "b=2")
        .header("x-path", path)
        .header("x-saw-hop", seen_conn.to_string())
        .header("x-method", method.as_str());
    if req.headers().contains_key("x-connection-header") {
        resp = resp.header("connection", "x-leak").header("x-leak", "1");
    }
    Ok(resp.body(body::boxed(req.into_body())).unwrap())
}

async fn serve_tcp() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), service_fn(echo)),
            );
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn reuses_connections_keeps_repeated_headers_and_strips_hop_by_hop() {
    let (addr, conns) = serve_tcp().await;
    let up = Upstream::new(Target::Tcp(addr));
    for i in 0..5 {
        let req = Request::post(format!("/p/{i}?q=1"))
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("x-connection-header", "1")
            .body(body::full(format!("body {i}")))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), up.forward(req)).await.unwrap().unwrap();
        assert_eq!(resp.headers()["x-path"], format!("/p/{i}?q=1").as_str());
        assert_eq!(resp.headers()["x-saw-hop"], "false");
        let cookies: Vec<_> =
            resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(cookies, vec!["a=1", "b=2"]);
        assert!(resp.headers().get("x-leak").is_none(), "a header named in Connection must not pass");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, format!("body {i}").as_bytes());
        // Give the recycle task a moment to return the connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "sequential requests must share one keep-alive connection");
}

#[tokio::test]
async fn streams_bodies_over_unix_socket_and_cuts_at_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), service_fn(echo)),
            );
        }
    });
    let up = Upstream::new(Target::Unix(path));

    // 64 MiB in 64 KiB chunks, generated lazily, echoed back and counted without buffering.
    let chunks = futures_util::stream::iter(
        (0..1024).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![7u8; 64 * 1024])))),
    );
    let req = Request::put("/big").body(body::boxed(StreamBody::new(chunks))).unwrap();
    let resp = up.forward(req).await.unwrap();
    let mut body = resp.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(total, 64 * 1024 * 1024);

    let chunks =
        futures_util::stream::iter((0..100).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![1u8; 1024])))));
    let (limited, tripped) = LimitedBody::new(body::boxed(StreamBody::new(chunks)), 10 * 1024);
    let req = Request::put("/big").body(body::boxed(limited)).unwrap();
    let outcome = match up.forward(req).await {
        Err(e) => Err(e),
        Ok(resp) => {
            resp.into_body().collect().await.map(|_| ()).map_err(|e| panic!("unexpected success path error {e}"))
        }
    };
    assert!(tripped.load(Ordering::Acquire));
    if let Err(e) = outcome {
        assert!(e.is_body_too_large(), "got {e}");
    }
}
