//! `RUNTIME_SEND_TIMEOUT`: a client that stops reading its response cannot hold what the
//! response holds — a worker's in-flight slot, a `ttl: 0` process and its ephemeral gate slot, an
//! upstream connection — for longer than the timeout.
//!
//! When a client does not read, hyper stops asking the body for more (the socket buffer or the
//! HTTP/2 window is full), so nothing inside the body would ever run again; a small watchdog task
//! per streaming response notices that the body has handed out a frame and not been asked for the
//! next one within the timeout, drops the inner body (which releases the worker) and closes the
//! client's connection. A body that is waiting on its worker (an SSE stream between events) is not
//! the client's fault and is left alone.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use marina_core::Body;
use marina_core::body::BoxError;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Bodies known to be at most this long fit in the socket buffers: nothing to watch.
const SMALL: u64 = 64 * 1024;

/// Wraps `resp`'s body when it streams, so that a client not reading it for `limit` loses it
/// and its connection (`close`). Zero turns it off.
pub fn guard(resp: Response<Body>, limit: Duration, close: &CancellationToken) -> Response<Body> {
    let hint = resp.body().size_hint();
    if limit.is_zero()
        || resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || resp.body().is_end_stream()
        || hint.upper().is_some_and(|n| n <= SMALL)
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let shared =
        Arc::new(Shared { inner: Mutex::new(Some(body)), handed_out_at: AtomicU64::new(0), start: Instant::now() });
    tokio::spawn(watch(Arc::downgrade(&shared), limit, close.clone()));
    Response::from_parts(parts, marina_core::body::boxed(SendTimeoutBody { shared, hint }))
}

struct Shared {
    /// The response body; taken (and dropped) by the watchdog when the client stalls.
    inner: Mutex<Option<Body>>,
    /// Microseconds after `start` when the body last handed out a frame that has not been
    /// followed by the next poll; 0 while hyper is asking for more (or the body waits on its
    /// source).
    handed_out_at: AtomicU64,
    start: Instant,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
    }
}

struct SendTimeoutBody {
    shared: Arc<Shared>,
    hint: SizeHint,
}

impl HttpBody for SendTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = &self.shared;
        shared.handed_out_at.store(0, Ordering::Release);
        let mut inner = shared.inner.lock();
        let Some(body) = inner.as_mut() else {
            return Poll::Ready(Some(Err("the client did not read the response within RUNTIME_SEND_TIMEOUT".into())));
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                shared.handed_out_at.store(shared.now_us(), Ordering::Release);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                // Done: release what the body held now, not when hyper drops the wrapper.
                *inner = Some(marina_core::body::empty());
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Wakes up at most once per `limit` while the response lives; ends with it.
async fn watch(shared: Weak<Shared>, limit: Duration, close: CancellationToken) {
    let mut wait = limit;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = close.cancelled() => return,
        }
        let Some(shared) = shared.upgrade() else { return };
        let since = shared.handed_out_at.load(Ordering::Acquire);
        if since == 0 {
            wait = limit;
            continue;
        }
        let stalled = Duration::from_micros(shared.now_us().saturating_sub(since));
        if stalled < limit {
            wait = limit - stalled;
            continue;
        }
        let body = shared.inner.lock().take();
        drop(body);
        tracing::info!(
            stalled_ms = stalled.as_millis() as u64,
            "the client stopped reading its response; closing the connection (RUNTIME_SEND_TIMEOUT)"
        );
        close.cancel();
        return;
    }
}
