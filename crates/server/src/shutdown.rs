//! The exit after SIGTERM/SIGINT, the way Kubernetes expects it, all of it within
//! `RUNTIME_SHUTDOWN_TIMEOUT` counted from the signal:
//!
//! 1. `/api/health/ready` answers 503 at once, and marina keeps serving — new connections
//!    included — for `RUNTIME_SHUTDOWN_DELAY`, the time a load balancer takes to notice;
//! 2. the listener closes; idle keep-alive connections are closed gracefully (HTTP/1.1
//!    `Connection: close`, HTTP/2 GOAWAY: hyper-util's graceful shutdown) and in-flight
//!    requests run on;
//! 3. a short reserve before the deadline, requests still waiting for their response are
//!    answered 503 `SHUTTING_DOWN` (with `Retry-After`), not left to fail as crashed workers;
//!    connections still open a moment later are closed;
//! 4. plugins stop, then the workers: `onTerminate`, SIGTERM, SIGKILL by the deadline.

use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Runtime;

/// The longest time kept after the cut for the workers' `onTerminate` and stop.
const MAX_RESERVE: Duration = Duration::from_secs(5);
/// The shortest such time (a timeout below it leaves no room for requests at all).
const MIN_RESERVE: Duration = Duration::from_millis(100);

/// One exit in progress: its clock.
pub(crate) struct Exit {
    deadline: Instant,
    serve_until: Instant,
    cut_at: Instant,
}

impl Exit {
    /// The signal has arrived: readiness goes 503 now.
    pub fn begin(rt: &Runtime) -> Self {
        rt.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let timeout = rt.config.shutdown_timeout;
        let reserve = reserve(timeout);
        let delay = rt.config.shutdown_delay.min(timeout - reserve);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            timeout_ms = timeout.as_millis() as u64,
            "shutting down: readiness is 503; serving on during the delay"
        );
        Self { deadline: now + timeout, serve_until: now + delay, cut_at: now + timeout - reserve }
    }

    /// When marina stops accepting.
    pub fn serve_until(&self) -> Instant {
        self.serve_until
    }

    /// Phases 2 and 3: the listener is closed (`graceful` and `hard_stop` are what is left of
    /// it); in-flight requests run until they finish or the cut.
    pub async fn close_connections(&self, rt: &Runtime, graceful: GracefulShutdown, hard_stop: CancellationToken) {
        let open = graceful.count();
        tracing::info!(connections = open, "no longer accepting; closing idle connections, in-flight requests finish");
        // Plugins' event streams end now; they would otherwise hold their connections open.
        rt.plugin_env.closing.cancel();
        let closed = graceful.shutdown();
        tokio::pin!(closed);
        if tokio::time::timeout_at(self.cut_at, &mut closed).await.is_ok() {
            return;
        }
        tracing::warn!("requests still running at the shutdown timeout are answered 503 SHUTTING_DOWN");
        rt.cut.cancel();
        // Time to write those answers; a response body still streaming is then cut short.
        let flush = (self.deadline - self.cut_at) / 4;
        if tokio::time::timeout(flush, &mut closed).await.is_err() {
            tracing::warn!("closing connections that are still sending a response");
            hard_stop.cancel();
            let _ = tokio::time::timeout(flush, &mut closed).await;
        }
    }

    /// Phase 4: plugins, then workers, within what is left until the deadline.
    pub async fn stop(&self, rt: &Runtime) {
        let plugins_by = Instant::now() + self.deadline.saturating_duration_since(Instant::now()) / 4;
        if tokio::time::timeout_at(plugins_by, rt.plugins().shutdown()).await.is_err() {
            tracing::warn!("plugins did not stop in time");
        }
        rt.pool.shutdown(self.deadline.saturating_duration_since(Instant::now())).await;
    }
}

/// The part of the timeout kept for stopping workers after the cut: a fifth of it, between
/// [`MIN_RESERVE`] and [`MAX_RESERVE`] (never more than the timeout itself).
fn reserve(timeout: Duration) -> Duration {
    (timeout / 5).clamp(MIN_RESERVE, MAX_RESERVE).min(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_fifth_of_the_timeout_within_bounds() {
        assert_eq!(reserve(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(reserve(Duration::from_secs(2)), Duration::from_millis(400));
        assert_eq!(reserve(Duration::from_millis(300)), Duration::from_millis(100));
        assert_eq!(reserve(Duration::from_millis(50)), Duration::from_millis(50));
        assert_eq!(reserve(Duration::ZERO), Duration::ZERO);
    }
}
