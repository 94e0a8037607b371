//! The listener: accepting connections and handing each to hyper (HTTP/1.1 and HTTP/2
//! cleartext, detected per connection), watched by hyper-util's graceful shutdown so that the
//! exit ([`crate::shutdown`]) can close idle keep-alive connections (`Connection: close`,
//! HTTP/2 GOAWAY) while in-flight requests finish, and end what is left at the deadline.
//!
//! Clients cannot hold connections for free: at most `RUNTIME_MAX_CONNECTIONS` are open (one
//! more is closed at once), a connection must bring its first request's headers within
//! `RUNTIME_HEADER_TIMEOUT` (hyper's own header timeout covers later requests on HTTP/1.1, and
//! HTTP/2 keep-alive pings find dead peers), and failed `accept`s back off.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::Runtime;
use crate::conn_threads::ConnThreads;

/// The accept loop's state, shared by every connection it starts.
pub(crate) struct Listener {
    runtime: Arc<Runtime>,
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    api_router: axum::Router,
    /// Tells every connection to finish gracefully; its `shutdown` resolves when all have.
    pub graceful: GracefulShutdown,
    /// Ends every connection still open, whatever it is doing (the exit's deadline).
    pub hard_stop: CancellationToken,
    accept_errors: AcceptErrors,
    /// One permit per open connection (`RUNTIME_MAX_CONNECTIONS`).
    connections: Arc<Semaphore>,
    /// Connections closed because the cap was reached, logged at most once a second.
    refused: RateLog,
    /// Time to the first request's headers (`None`: no limit).
    first_request: Option<Duration>,
    /// Per-thread scheduling's connection threads; `None`: connections are tasks of the shared
    /// runtime.
    threads: Option<Arc<ConnThreads>>,
}

impl Listener {
    pub fn new(runtime: Arc<Runtime>, listener: TcpListener, threads: Option<Arc<ConnThreads>>) -> Self {
        let first_request = Some(runtime.config.header_timeout).filter(|t| !t.is_zero());
        let connections = Arc::new(Semaphore::new(runtime.config.max_connections));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // Also bounds how long an idle keep-alive connection may wait for its next request.
            .header_read_timeout(first_request)
            .max_buf_size(64 * 1024)
            // Queue body buffers instead of copying them into one: zero-copy file bodies
            // ([`crate::zerocopy`]) depend on their placeholder slices reaching the writer as they are.
            .writev(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        // Built once: the router holds the runtime and is cloned (cheaply) per API request.
        let api_router = crate::api::router(runtime.clone());
        Self {
            runtime,
            listener,
            builder: Arc::new(builder),
            api_router,
            graceful: GracefulShutdown::new(),
            hard_stop: CancellationToken::new(),
            accept_errors: AcceptErrors::default(),
            connections,
            refused: RateLog::default(),
            first_request,
            threads,
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts and serves connections until `stop` resolves.
    pub async fn accept_until(&mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.accept_errors.reset();
                        match self.connections.clone().try_acquire_owned() {
                            Ok(permit) => self.serve(stream, peer, permit),
                            Err(_) => {
                                // Closed before reading a byte: cheaper for marina than any
                                // answer, and the client sees at once that it must retry.
                                drop(stream);
                                if let Some(n) = self.refused.hit() {
                                    tracing::warn!(
                                        max = self.runtime.config.max_connections,
                                        refused = n,
                                        "RUNTIME_MAX_CONNECTIONS reached; closing new connections"
                                    );
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        let pause = self.accept_errors.failed(&e);
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = &mut stop => return,
                        }
                    }
                },
                () = &mut stop => return,
            }
        }
    }

    /// Stops listening: the port closes, new connections are refused by the kernel.
    pub fn close(self) -> (GracefulShutdown, CancellationToken) {
        (self.graceful, self.hard_stop)
    }

    fn serve(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            runtime: self.runtime.clone(),
            api_router: self.api_router.clone(),
            builder: self.builder.clone(),
            graceful: self.graceful.watcher(),
            close: self.hard_stop.child_token(),
            first_request: self.first_request,
            permit,
            peer,
        };
        match self.threads.as_ref().and_then(|t| t.pick()) {
            None => {
                tokio::spawn(conn.serve(stream));
            }
            Some((thread, open)) => {
                // Moved to the thread's own I/O driver: deregistered here, registered there.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(e) => return tracing::debug!(error = %e, %peer, "connection lost before it was served"),
                };
                thread.spawn(async move {
                    let _open = open;
                    match TcpStream::from_std(stream) {
                        Ok(stream) => conn.serve(stream).await,
                        Err(e) => tracing::debug!(error = %e, %peer, "connection lost before it was served"),
                    }
                });
            }
        }
    }
}

/// One accepted connection and what serving it needs; [`Connection::serve`] is its whole life,
/// on whichever runtime it is spawned.
struct Connection {
    runtime: Arc<Runtime>,
    api_router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Watcher,
    /// Cancelled to close this connection at once (a client that stopped reading). A child of
    /// the hard stop, so that the connection's task waits on one token, not two: each wait is
    /// polled every time the task runs (~3 times a proxied request, ~150 instructions a poll,
    /// callgrind on `bench/proxy.sh`).
    close: CancellationToken,
    first_request: Option<Duration>,
    permit: OwnedSemaphorePermit,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let Connection { runtime: rt, api_router, builder, graceful, close, first_request, permit, peer } = self;
        let local = stream.local_addr().ok();
        let mut stream = crate::zerocopy::Stream::new(stream);
        stream.hold(permit);
        let sink = stream.sink();
        let clock = stream.clock();
        let linger = stream.linger();
        // Set by the first request's arrival: from then on hyper's timeouts apply.
        let spoke = Arc::new(AtomicBool::new(false));
        let heard = spoke.clone();
        let watch = crate::send_timeout::Conn { close: close.clone(), clock, linger };
        let service = service_fn(move |req| {
            heard.store(true, Ordering::Relaxed);
            crate::handle(rt.clone(), api_router.clone(), req, peer, local, watch.clone(), sink.clone())
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::pin!(conn);
        // Until the first request, nothing in hyper bounds the wait (HTTP/1.1 or HTTP/2 is
        // not even known yet): a connection that sends nothing, or only part of a request,
        // is closed here.
        let silent = async {
            match first_request {
                Some(limit) => {
                    tokio::time::sleep(limit).await;
                    if spoke.load(Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
            }
            () = silent => tracing::debug!(%peer, "no request within RUNTIME_HEADER_TIMEOUT; connection closed"),
            // Also the exit's deadline: `close` is a child of the hard stop.
            () = close.cancelled() => {}
        }
    }
}

/// Counts events and says when to log them: at most once a second, with how many happened
/// since the last line.
#[derive(Default)]
struct RateLog {
    unlogged: u64,
    last: Option<Instant>,
}

impl RateLog {
    const EVERY: Duration = Duration::from_secs(1);

    /// Records one event; `Some(count)` when a line is due.
    fn hit(&mut self) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Back-off after failed `accept`s (10 ms doubling to 1 s), and a log line at most once a second
/// saying how many failed since the last one: a full fd table must neither spin the loop nor
/// flood the log.
#[derive(Default)]
struct AcceptErrors {
    streak: u32,
    log: RateLog,
}

impl AcceptErrors {
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    fn reset(&mut self) {
        self.streak = 0;
    }

    /// Records a failure; returns how long to wait before accepting again.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        if let Some(failures) = self.log.hit() {
            tracing::warn!(error = %e, failures, "accept failed; backing off");
        }
        let pause = Duration::from_millis(10) * 2u32.pow(self.streak.min(7));
        self.streak += 1;
        pause.min(Self::MAX_PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_to_a_second_and_reset() {
        let mut errors = AcceptErrors::default();
        let e = std::io::Error::other("too many open files");
        let pauses: Vec<Duration> = (0..10).map(|_| errors.failed(&e)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), Duration::from_secs(1));
        // One line for the first failure; the other nine wait for the next second.
        assert_eq!(errors.log.unlogged, 9);
        errors.reset();
        assert_eq!(errors.failed(&e), Duration::from_millis(10));
    }
}
