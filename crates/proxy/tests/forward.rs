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
        // No wait: the body's end puts the connection back before `collect` returns.
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

/// A raw HTTP/1.1 upstream on a Unix socket, where a write or a close has reached the other
/// end when it returns, so the tests need not wait for the network. Connections are numbered
/// from 1 as they are accepted and every answer names its own in `x-conn`; each connection's end
/// (marina closed it, or `close` did) is reported on `ended` with its number.
struct RawUpstream {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// Closes the connection waiting for its next request.
    close: Arc<tokio::sync::Notify>,
    /// Lets the pending `/split` answer send its second half, reported on `wrote` once written.
    go: Arc<tokio::sync::Notify>,
    wrote: tokio::sync::mpsc::UnboundedReceiver<()>,
    ended: tokio::sync::mpsc::UnboundedReceiver<usize>,
}

/// Starts a [`RawUpstream`]. Any request is answered `ok` (keep-alive), except `/split`: a
/// 10-byte body of which `first` goes with the head and `rest!` when `go` is notified.
async fn raw_upstream() -> RawUpstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (close, go) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let (wrote_tx, wrote) = tokio::sync::mpsc::unbounded_channel();
    let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
    let (c, g) = (close.clone(), go.clone());
    tokio::spawn(async move {
        for id in 1.. {
            let (mut s, _) = listener.accept().await.unwrap();
            let (close, go, wrote_tx, ended_tx) = (c.clone(), g.clone(), wrote_tx.clone(), ended_tx.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                'requests: loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        tokio::select! {
                            read = s.read(&mut chunk) => match read {
                                Ok(0) | Err(_) => break 'requests,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            },
                            () = close.notified() => break 'requests,
                        }
                    }
                    let split = buf.starts_with(b"GET /split ");
                    buf.clear();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nx-conn: {id}\r\ncontent-length: {}\r\n\r\n",
                        if split { 10 } else { 2 }
                    );
                    if split {
                        s.write_all(format!("{head}first").as_bytes()).await.unwrap();
                        go.notified().await;
                        s.write_all(b"rest!").await.unwrap();
                        let _ = wrote_tx.send(());
                    } else {
                        s.write_all(format!("{head}ok").as_bytes()).await.unwrap();
                    }
                }
                drop(s);
                let _ = ended_tx.send(id);
            });
        }
    });
    RawUpstream { path, _dir: dir, close, go, wrote, ended }
}

/// `GET path` through `up`, failing the test if it fails or takes 10 s.
async fn get(up: &Upstream, path: &str) -> Response<Body> {
    let req = Request::get(path).body(body::empty()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), up.forward(req)).await;
    resp.unwrap_or_else(|_| panic!("GET {path} took 10 s")).unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
}

async fn next<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, what: &str) -> T {
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    got.unwrap_or_else(|_| panic!("{what}: nothing within 10 s")).expect("the upstream is gone")
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used() {
    let mut raw = raw_upstream().await;
    let up = Upstream::new(Target::Unix(raw.path.clone()));
    // Two requests over one connection: it went back to the pool between them.
    for _ in 0..2 {
        let resp = get(&up, "/").await;
        assert_eq!(resp.headers()["x-conn"], "1");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    // Now the upstream closes it while it sits in the pool (as a keep-alive timeout does).
    raw.close.notify_one();
    assert_eq!(next(&mut raw.ended, "the upstream's close").await, 1);
    // The next request does not fail on it: it goes over a new connection. Two things see to
    // that: `Pool::take` skips a connection that has ended (pinned by the unit test
    // `pooled::tests::take_skips_a_connection_the_upstream_closed`), and a request that was
    // never written is given back and sent over another connection (`Upstream::send_pooled`).
    // With both disabled this test fails; with either one, it passes.
    let resp = get(&up, "/").await;
    assert_eq!(resp.headers()["x-conn"], "2", "the request went over the closed connection");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
}

#[tokio::test]
async fn a_response_dropped_before_its_end_does_not_return_its_connection() {
    let mut raw = raw_upstream().await;
    let up = Upstream::new(Target::Unix(raw.path.clone()));
    let resp = get(&up, "/split").await;
    assert_eq!(resp.headers()["x-conn"], "1");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    // The rest of the answer arrives, so the connection could be drained and reused; but the
    // client goes away without reading it.
    raw.go.notify_one();
    next(&mut raw.wrote, "the rest of the answer").await;
    drop(body);
    // The next request goes over a new connection, and the upstream sees the first one closed.
    let resp = get(&up, "/next").await;
    assert_eq!(resp.headers()["x-conn"], "2", "the connection of a response dropped before its end was reused");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(next(&mut raw.ended, "the close of the dropped response's connection").await, 1);
}

#[tokio::test]
async fn upgrades_are_spliced_over_a_dedicated_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Upstream: answers an upgrade with 101 and then echoes bytes upper-cased.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let svc = service_fn(|mut req: Request<Incoming>| async move {
                if !req.headers().contains_key("upgrade") {
                    return Ok::<_, Infallible>(Response::new(body::full("plain")));
                }
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(on.await.unwrap());
                    let mut buf = [0u8; 64];
                    loop {
                        let n = io.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        io.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                    }
                });
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .body(body::empty())
                        .unwrap(),
                )
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).with_upgrades(),
            );
        }
    });
    // Front: a hyper server forwarding everything to the upstream.
    let up = Arc::new(Upstream::new(Target::Tcp(up_addr)));
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = front.accept().await.unwrap();
            let up = up.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let up = up.clone();
                async move { Ok::<_, Infallible>(up.forward(req.map(body::boxed)).await.unwrap()) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).with_upgrades(),
            );
        }
    });
    let mut c = tokio::net::TcpStream::connect(front_addr).await.unwrap();
    // A plain request first, then the upgrade on the same client connection.
    let mut buf = [0u8; 1024];
    let mut read_until = async |c: &mut tokio::net::TcpStream, end: &str| {
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(end) {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "front closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    };
    c.write_all(b"GET /plain HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let got = read_until(&mut c, "plain").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    c.write_all(b"GET /ws HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n").await.unwrap();
    let got = read_until(&mut c, "\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    c.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"HELLO");
}

/// An upstream that answers the first request on each connection and, on its second, reads the
/// request and closes without a word: what a kept-alive connection the upstream closed just as
/// marina reused it looks like (the FIN crossing the request), made deterministic.
/// Also counts the requests it read.
async fn closes_on_second_request() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut id = 0;
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            id += 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0..2 {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.clear();
                    seen.fetch_add(1, Ordering::SeqCst);
                    if n == 1 {
                        return; // the second request: closed unanswered
                    }
                    let head = format!("HTTP/1.1 200 OK\r\nx-conn: {id}\r\ncontent-length: 2\r\n\r\nok");
                    s.write_all(head.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn a_bodiless_idempotent_request_is_sent_again_when_a_reused_connection_closes_unanswered() {
    let up = Upstream::new(Target::Tcp(closes_on_second_request().await.0));
    let resp = get(&up, "/").await;
    assert_eq!(resp.headers()["x-conn"], "1");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    // Connection 1 is pooled; it takes the next GET and closes: the GET goes again over a new one.
    let resp = get(&up, "/again").await;
    assert_eq!(resp.headers()["x-conn"], "2", "answered over a new connection");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    // A request with a body is not sent twice (it may have been consumed): the error is the answer.
    let post = Request::post("/write").body(body::full("data")).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), up.forward(post)).await.unwrap().unwrap_err();
    assert!(!err.is_bad_response(), "a closed connection, not a bad answer: {err}");
}

#[tokio::test]
async fn a_fresh_connection_that_closes_unanswered_is_an_error_not_a_retry_loop() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut chunk = [0u8; 1024];
            let _ = s.read(&mut chunk).await; // the request, then closed unanswered
        }
    });
    let up = Upstream::new(Target::Tcp(addr));
    let req = Request::get("/").body(body::empty()).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), up.forward(req)).await.unwrap();
    assert!(got.is_err(), "an upstream that never answers is an error");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "sent once");
}

#[tokio::test]
async fn a_request_is_sent_again_once_and_over_a_new_connection_whatever_the_pool_holds() {
    let (addr, requests) = closes_on_second_request().await;
    let up = Upstream::new(Target::Tcp(addr));
    // Three connections at once, all pooled once their answers are read.
    let (a, b, c) = tokio::join!(get(&up, "/a"), get(&up, "/b"), get(&up, "/c"));
    for resp in [a, b, c] {
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    // Each pooled connection would drop the next request: it is sent twice, not once per
    // pooled connection — the second time over a new connection, which answers.
    let resp = get(&up, "/again").await;
    assert_eq!(resp.headers()["x-conn"], "4", "answered over a new connection");
    assert_eq!(requests.load(Ordering::SeqCst), 5, "sent twice in all");
}
