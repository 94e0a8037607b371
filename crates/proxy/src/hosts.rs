//! The remote client's connections: one [`Pool`] per upstream scheme and host, over a TLS-capable
//! connector, each connection driven by the request using it ([`crate::pooled`]) instead of a
//! task of its own. hyper-util's pooled client spawned a task per connection and handed every
//! request and response across tasks; on a 1 KiB proxied answer that was a large share of the
//! hop's CPU.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::rt::TokioIo;
use marina_core::body::{self, Body, BoxError};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::pooled::{Conn, Pool, PooledBody};

/// What the connector makes: TCP, with TLS for `https`/`wss` targets.
type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Why a request to a remote upstream failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made (refused, timed out, TLS failed, or the SSRF policy).
    Connect(BoxError),
    /// The exchange failed on a connection (reset, bad response, or the request body failed).
    Upstream(hyper::Error),
}

impl SendError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    /// The error as the start of a source chain.
    pub(crate) fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            SendError::Connect(e) => e.as_ref(),
            SendError::Upstream(e) => e,
        }
    }
}

/// Per-host pools and the connector that fills them.
pub(crate) struct Hosts<C> {
    connector: HttpsConnector<C>,
    /// Plain and TLS pools, by authority (looked up without cloning the request's). Hashed
    /// with FxHash, not SipHash: `Authority` hashes byte by byte (case-insensitively), which
    /// through SipHash was ~900 instructions a request (callgrind, `bench/proxy.sh`), and the
    /// keys are rule targets, written by operators and bounded by the rule count, never by a
    /// client, so there is no flood of chosen keys to resist.
    pools: Mutex<[FxHashMap<Authority, Arc<Pool<Stream>>>; 2]>,
    max_idle: usize,
    idle_timeout: Duration,
    sweeping: std::sync::atomic::AtomicBool,
}

impl<C> Hosts<C>
where
    C: Service<Uri, Response = TokioIo<TcpStream>> + Clone + Send + Sync + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    pub(crate) fn new(connector: HttpsConnector<C>, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            connector,
            pools: Mutex::new([FxHashMap::default(), FxHashMap::default()]),
            max_idle,
            idle_timeout,
            sweeping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sends `req` (an absolute URI) over a pooled connection to its host, or a new one, and
    /// returns the response with its body streaming; the connection goes back to the pool at
    /// the body's end.
    pub(crate) async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, SendError> {
        let (uri, mut req) = origin_form(req);
        let pool = self.pool(&uri);
        while let Some(conn) = pool.take() {
            match conn.send(req).await {
                (Ok(resp), Some(conn), _) => return Ok(pooled(resp, conn, &pool)),
                (Ok(resp), None, _) => return Ok(resp.map(body::boxed)),
                (Err(mut e), _, ended) => match e.take_message() {
                    // Never written: the upstream had closed it meanwhile; try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Upstream(crate::pooled::cause(ended, e.into_error()))),
                },
            }
        }
        let io = self.connect(uri).await?;
        let conn = Conn::handshake(io).await.map_err(SendError::Upstream)?;
        match conn.send(req).await {
            (Ok(resp), Some(conn), _) => Ok(pooled(resp, conn, &pool)),
            (Ok(resp), None, _) => Ok(resp.map(body::boxed)),
            (Err(e), _, ended) => Err(SendError::Upstream(crate::pooled::cause(ended, e.into_error()))),
        }
    }

    /// Sends an upgrade request over a connection of its own, run by a task with upgrades on.
    pub(crate) async fn upgrade(&self, req: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let (uri, req) = origin_form(req);
        let io = self.connect(uri).await?;
        let (mut sender, conn) = http1::Builder::new().handshake(io).await.map_err(SendError::Upstream)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender.send_request(req).await.map_err(SendError::Upstream)
    }

    async fn connect(&self, uri: Uri) -> Result<Stream, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(SendError::Connect)?;
        connector.call(uri).await.map_err(SendError::Connect)
    }

    fn pool(self: &Arc<Self>, uri: &Uri) -> Arc<Pool<Stream>> {
        let tls = usize::from(matches!(uri.scheme_str(), Some("https" | "wss")));
        let local = Authority::from_static("localhost");
        let authority = uri.authority().unwrap_or(&local);
        let mut pools = self.pools.lock();
        if let Some(pool) = pools[tls].get(authority) {
            return pool.clone();
        }
        let pool = Arc::new(Pool::new(self.max_idle, Some(self.idle_timeout)));
        pools[tls].insert(authority.clone(), pool.clone());
        drop(pools);
        if !self.sweeping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
        pool
    }
}

/// Closes connections idle for longer than the idle timeout, and forgets hosts with none left,
/// so an upstream no request goes to any more holds no sockets.
async fn sweep<C>(hosts: Weak<Hosts<C>>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hosts) = hosts.upgrade() else { return };
        for pools in hosts.pools.lock().iter_mut() {
            pools.retain(|_, pool| {
                pool.expire(Some(idle_timeout));
                pool.idle() > 0 || Arc::strong_count(pool) > 1
            });
        }
    }
}

/// The request with its URI in origin form (`/path?query`), as HTTP/1.1 sends it, and `Host`
/// set from the target when the client sent none (an HTTP/2 client sends `:authority`); and the
/// absolute URI, for connecting.
fn origin_form(mut req: Request<Body>) -> (Uri, Request<Body>) {
    let uri = std::mem::take(req.uri_mut());
    if !req.headers().contains_key(header::HOST)
        && let Some(host) = uri.host()
    {
        // The port only when it is not the scheme's default, as clients write it.
        let default = if matches!(uri.scheme_str(), Some("https" | "wss")) { 443 } else { 80 };
        let value = match uri.port_u16().filter(|p| *p != default) {
            Some(port) => header::HeaderValue::from_str(&format!("{host}:{port}")),
            None => header::HeaderValue::from_str(host),
        };
        if let Ok(value) = value {
            req.headers_mut().insert(header::HOST, value);
        }
    }
    let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    (uri, req)
}

fn pooled(resp: Response<Incoming>, conn: Conn<Stream>, pool: &Arc<Pool<Stream>>) -> Response<Body> {
    resp.map(|b| body::boxed(PooledBody::new(b, conn, pool.clone())))
}
