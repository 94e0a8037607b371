//! The listener: accepting connections and handing each to hyper (HTTP/1.1 and HTTP/2
//! cleartext, detected per connection), watched by hyper-util's graceful shutdown so that the
//! exit ([`crate::shutdown`]) can close idle keep-alive connections (`Connection: close`,
//! HTTP/2 GOAWAY) while in-flight requests finish, and end what is left at the deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Runtime;

/// The accept loop's state, shared by every connection it starts.
pub(crate) struct Listener {
    runtime: Arc<Runtime>,
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    api_router: axum::Router,
    /// Tells every connection to finish gracefully; its `shutdown` resolves when all have.
    pub graceful: GracefulShutdown,
    /// Ends every connection still open, whatever it is doing (the exit's deadline).
    pub hard_stop: CancellationToken,
    accept_errors: AcceptErrors,
}

impl Listener {
    pub fn new(runtime: Arc<Runtime>, listener: TcpListener) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // Also bounds how long an idle keep-alive connection may wait for its next request.
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(64 * 1024);
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
            builder,
            api_router,
            graceful: GracefulShutdown::new(),
            hard_stop: CancellationToken::new(),
            accept_errors: AcceptErrors::default(),
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
                        self.serve(stream, peer);
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

    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let rt = self.runtime.clone();
        let api_router = self.api_router.clone();
        let service = service_fn(move |req| crate::handle(rt.clone(), api_router.clone(), req, peer));
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = self.graceful.watch(conn.into_owned());
        let hard_stop = self.hard_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                () = hard_stop.cancelled() => {}
            }
        });
    }
}

/// Back-off after failed `accept`s (10 ms doubling to 1 s), and a log line at most once a second
/// saying how many failed since the last one: a full fd table must neither spin the loop nor
/// flood the log.
#[derive(Default)]
struct AcceptErrors {
    streak: u32,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl AcceptErrors {
    const LOG_EVERY: Duration = Duration::from_secs(1);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    fn reset(&mut self) {
        self.streak = 0;
    }

    /// Records a failure; returns how long to wait before accepting again.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.unlogged += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(error = %e, failures = self.unlogged, "accept failed; backing off");
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
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
        assert_eq!(errors.unlogged, 9);
        errors.reset();
        assert_eq!(errors.failed(&e), Duration::from_millis(10));
    }
}
