//! Forwarding to one upstream (a worker's Unix socket or loopback port) over HTTP/1.1.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use marina_core::body::{self, Body};
use tokio::net::{TcpStream, UnixStream};

use crate::headers::{is_upgrade, strip_hop_by_hop};
use crate::limit::BodyTooLarge;
use crate::pooled::{Conn, Pool, PooledBody};
use crate::stream::Stream;

/// Where an upstream listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Unix domain socket path (JS workers).
    Unix(PathBuf),
    /// A TCP address, normally on 127.0.0.1 (process workers).
    Tcp(SocketAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// Why a forward failed.
#[derive(Debug)]
pub enum ProxyError {
    /// The upstream could not be reached at all.
    Connect(io::Error),
    /// The exchange failed after connecting (upstream closed, reset, bad response, or the
    /// request body failed — see [`ProxyError::is_body_too_large`]).
    Upstream(hyper::Error),
}

impl ProxyError {
    /// Whether the failure was the request body going over its size limit.
    pub fn is_body_too_large(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = match self {
            ProxyError::Connect(_) => return false,
            ProxyError::Upstream(e) => Some(e),
        };
        while let Some(e) = cur {
            if e.is::<BodyTooLarge>() {
                return true;
            }
            cur = e.source();
        }
        false
    }

    /// Whether the upstream answered with a response head hyper refuses: over its size or
    /// header-count bounds, or malformed. The upstream is alive; its answer is the problem.
    pub fn is_bad_response(&self) -> bool {
        matches!(self, ProxyError::Upstream(e) if e.is_parse() || e.is_parse_too_large())
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Connect(e) => write!(f, "could not connect: {e}"),
            ProxyError::Upstream(e) => {
                write!(f, "{e}")?;
                let mut cur = std::error::Error::source(e);
                while let Some(inner) = cur {
                    write!(f, ": {inner}")?;
                    cur = inner.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ProxyError {}

/// Whether `req` may be sent again after a kept-alive connection closed under it: an
/// idempotent method (RFC 9110 §9.2.2) and no body, so nothing was consumed that cannot be
/// rebuilt.
fn replayable(req: &Request<Body>) -> bool {
    use http::Method;
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE)
        && hyper::body::Body::size_hint(req.body()).exact() == Some(0)
}

/// A copy of a bodiless request's head (extensions are not carried: a forwarded request has
/// none the upstream exchange reads).
fn head_of(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// The connection ended before any answer came: what a kept-alive connection the upstream
/// closed meanwhile looks like (never a malformed or oversized answer).
fn closed_unanswered(err: &hyper::Error) -> bool {
    if err.is_parse() || err.is_parse_too_large() || err.is_timeout() {
        return false;
    }
    if err.is_incomplete_message() {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(io.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe);
        }
        cur = e.source();
    }
    false
}

/// A value the caller wants kept alive for as long as an upgraded connection (a WebSocket)
/// lasts: put it in the request's extensions and the splice task holds it until either side
/// closes. The worker pool uses it to count a WebSocket session as a request in flight, so a
/// worker is not retired under an open session.
#[derive(Clone)]
pub struct Hold(pub Arc<dyn std::any::Any + Send + Sync>);

/// Idle keep-alive connections kept per upstream; more than this are closed when they free up.
const MAX_IDLE: usize = 64;
/// How long an idle connection to a worker is kept: under the keep-alive timeouts of the
/// runtimes workers use (Node 5 s, Bun 10 s), so marina drops a connection before the worker
/// closes it, and closed ones do not linger at the bottom of the pool.
const WORKER_IDLE: std::time::Duration = std::time::Duration::from_secs(4);

/// An upstream with a pool of keep-alive HTTP/1.1 connections.
///
/// A request takes an idle connection (or dials) and drives it itself, and the response body
/// puts it back when it ends ([`crate::pooled`]): one lock and no task per request, no dial,
/// which is most of the cost of proxying to a local worker.
pub struct Upstream {
    target: Target,
    pool: Arc<Pool<TokioIo<Stream>>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("target", &self.target).field("idle", &self.pool.idle()).finish()
    }
}

impl Upstream {
    /// An upstream with no connections yet.
    pub fn new(target: Target) -> Self {
        Self { target, pool: Arc::new(Pool::new(MAX_IDLE, Some(WORKER_IDLE))) }
    }

    /// Where it listens.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Opens and closes one connection: used to tell when a worker has started listening.
    pub async fn probe(&self) -> io::Result<()> {
        self.dial().await.map(drop)
    }

    /// Drops every idle connection (the upstream is going away).
    pub fn close_idle(&self) {
        self.pool.expire(None);
    }

    async fn dial(&self) -> io::Result<Stream> {
        match &self.target {
            Target::Unix(p) => UnixStream::connect(p).await.map(Stream::Unix),
            Target::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
        }
    }

    async fn send_pooled(&self, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        // Sent again at most once, and then over a new connection: an upstream that drops the
        // connection on this request (rather than one that had closed it meanwhile) would
        // otherwise get it once per pooled connection, and every pooled one may be as stale.
        'pooled: while let Some(conn) = self.pool.take() {
            // A kept-alive connection the upstream closed just as it was taken (its FIN not seen
            // yet) takes the request and ends without an answer. RFC 9112 §9.3.1 lets a client
            // retry an idempotent request then; one without a body can be sent again as it was,
            // so its head is kept until the answer starts. The copy is paid on every such request
            // (callgrind, warm JS hop: dropping header maps 102 → 711 instructions per request;
            // the whole request 49,572 → 49,364, within run-to-run spread), for no spurious 502.
            let again = replayable(&req).then(|| head_of(&req));
            match conn.send(req).await {
                (Ok(resp), Some(conn), _) => return Ok(self.pooled(resp, conn)),
                (Ok(resp), None, _) => return Ok(resp.map(body::boxed)),
                (Err(mut e), _, ended) => match e.take_message() {
                    // Never written: the connection had closed meanwhile; try the next one.
                    Some(back) => req = back,
                    None => {
                        let err = crate::pooled::cause(ended, e.into_error());
                        match again {
                            Some(head) if closed_unanswered(&err) => {
                                req = head;
                                break 'pooled;
                            }
                            _ => return Err(ProxyError::Upstream(err)),
                        }
                    }
                },
            }
        }
        let io = self.dial().await.map_err(ProxyError::Connect)?;
        let conn = Conn::handshake(TokioIo::new(io)).await.map_err(ProxyError::Upstream)?;
        match conn.send(req).await {
            (Ok(resp), Some(conn), _) => Ok(self.pooled(resp, conn)),
            (Ok(resp), None, _) => Ok(resp.map(body::boxed)),
            (Err(e), _, ended) => Err(ProxyError::Upstream(crate::pooled::cause(ended, e.into_error()))),
        }
    }

    fn pooled(&self, resp: Response<Incoming>, conn: Conn<TokioIo<Stream>>) -> Response<Body> {
        resp.map(|b| body::boxed(PooledBody::new(b, conn, self.pool.clone())))
    }

    /// Forwards `req` (its URI already the upstream path and query) and returns the upstream's
    /// response with its body streaming.
    ///
    /// Hop-by-hop headers are removed both ways; repeated headers (several `Set-Cookie`) are
    /// kept as they are. A protocol upgrade (WebSocket) goes over a dedicated connection and,
    /// when the upstream answers 101, the client's and upstream's upgraded streams are spliced
    /// together in a background task; the client side's `OnUpgrade` must be in `req`'s
    /// extensions (hyper's server puts it there).
    pub async fn forward(&self, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let upgrade = is_upgrade(req.headers());
        strip_hop_by_hop(req.headers_mut(), upgrade);
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        *req.version_mut() = Version::HTTP_11;
        if upgrade {
            return self.forward_upgrade(req).await;
        }
        let mut resp = self.send_pooled(req).await?;
        strip_hop_by_hop(resp.headers_mut(), false);
        Ok(resp)
    }

    async fn forward_upgrade(&self, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let client_side = hyper::upgrade::on(&mut req);
        let hold = req.extensions_mut().remove::<Hold>();
        let io = self.dial().await.map_err(ProxyError::Connect)?;
        let (mut sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(ProxyError::Upstream)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut resp = sender.send_request(req).await.map_err(ProxyError::Upstream)?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (client, upstream) = tokio::join!(client_side, upstream_side);
                match (client, upstream) {
                    (Ok(client), Ok(upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    (c, u) => tracing::debug!(
                        client_ok = c.is_ok(),
                        upstream_ok = u.is_ok(),
                        "upgrade did not complete on both sides"
                    ),
                }
                drop(hold);
            });
            strip_hop_by_hop(resp.headers_mut(), true);
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        Ok(resp.map(body::boxed))
    }
}
