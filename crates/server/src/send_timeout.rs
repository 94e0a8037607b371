//! `RUNTIME_SEND_TIMEOUT`: a client that stops reading its response cannot hold what the
//! response holds — a worker's in-flight slot, a `ttl: 0` process and its ephemeral gate slot, an
//! upstream connection — for longer than the timeout.
//!
//! The timeout is per stall, like nginx's `send_timeout`: it counts how long marina has been
//! waiting for the client to take more, never how long the whole response takes, so a slow
//! reader that keeps reading is served to the end. Two waits are watched:
//!
//! - **the connection**: the connection's writer ([`crate::zerocopy::Stream`]) notes when a
//!   write finds the socket full and when one goes through, and the watchdog also counts the
//!   socket's unsent bytes going down as progress ([`WriteClock`]; a blocked writer is only
//!   woken once a third of the kernel's send buffer is free). A socket that has taken nothing
//!   for the timeout means the client reads nothing on that connection: the
//!   response is dropped and the connection closed (HTTP/1.1 has nothing else to cut; on
//!   HTTP/2 every stream is stuck behind the same socket).
//! - **an HTTP/2 stream**: a client can stop one stream (its flow-control window stays shut)
//!   while reading the others. hyper then stops asking that stream's body for data, so the body
//!   is handed out in pieces of at most [`PIECE`] bytes and the watchdog measures how long a
//!   piece has waited for hyper to ask for the next one (at most a piece more for the client to
//!   take). Past the timeout the response is dropped — which releases the worker — and only that
//!   stream is reset (`RST_STREAM` with `CANCEL`); the connection and its other streams go on.
//!   hyper cannot reset a stream while it waits for flow-control capacity, so the reset reaches
//!   the client when it next opens that stream's window, or with the connection.
//!
//! A body that is waiting on its worker (an SSE stream between events) is not the client's
//! fault and is left alone. A small watchdog task per streaming response does the watching,
//! since nothing inside a body that is not being polled can run.

use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use marina_core::Body;
use marina_core::body::BoxError;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Bodies known to be at most this long fit in hyper's HTTP/1.1 write buffer: nothing to watch.
/// (On HTTP/2 a client can keep a stream's window shut, so every streaming body is watched.)
const SMALL: u64 = 64 * 1024;

/// The largest piece of an HTTP/2 body handed to hyper at once, so that the wait for hyper's next
/// poll measures the client taking at most this much more, not a whole large chunk.
pub const PIECE: usize = 16 * 1024;

/// When the connection's writes last found the socket full; shared by the connection's writer
/// and the watchdogs of its responses.
#[derive(Clone)]
pub struct WriteClock(Arc<Clock>);

struct Clock {
    start: Instant,
    /// Microseconds after `start` of the first write that found the socket full since the last
    /// one that went through (or since the client last took bytes); 0 while writes go through.
    blocked_since_us: AtomicU64,
    /// The connection's socket, to ask how much of what was written the client has not taken
    /// yet (`SIOCOUTQ`); -1 when there is none.
    fd: RawFd,
    /// That amount when last asked.
    unsent: AtomicU64,
}

impl Default for WriteClock {
    fn default() -> Self {
        Self::for_socket(-1)
    }
}

impl WriteClock {
    /// The clock of the connection on socket `fd`.
    pub fn for_socket(fd: RawFd) -> Self {
        Self(Arc::new(Clock {
            start: Instant::now(),
            blocked_since_us: AtomicU64::new(0),
            fd,
            unsent: AtomicU64::new(u64::MAX),
        }))
    }

    /// A blocked writer waits until the kernel's send buffer is a third empty, which can take a
    /// slow reader a while even though it keeps reading: the socket's unsent byte count going
    /// down is progress too, and restarts the count.
    // The one ioctl std, tokio and nix do not wrap (nix only offers macros that emit `unsafe`).
    #[allow(unsafe_code)]
    fn note_drain(&self) {
        if self.0.fd < 0 {
            return;
        }
        let mut unsent: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int through the pointer; a stale fd only fails the call.
        if unsafe { libc::ioctl(self.0.fd, libc::TIOCOUTQ, &mut unsent) } != 0 {
            return;
        }
        let unsent = u64::try_from(unsent).unwrap_or(0);
        let before = self.0.unsent.swap(unsent, Ordering::Relaxed);
        if unsent < before && self.0.blocked_since_us.load(Ordering::Relaxed) != 0 {
            self.0.blocked_since_us.store(self.now_us(), Ordering::Relaxed);
        }
    }

    /// A write found the socket full: the client has not taken what was already sent.
    pub fn blocked(&self) {
        let now = self.now_us();
        let _ = self.0.blocked_since_us.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A write went through: the client took more.
    pub fn moved(&self) {
        self.0.blocked_since_us.store(0, Ordering::Relaxed);
    }

    /// How long writes have been waiting for the client, if they are.
    fn blocked_for(&self) -> Option<Duration> {
        let since = self.0.blocked_since_us.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_micros(self.now_us().saturating_sub(since)))
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.0.start.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
    }
}

/// What a request needs of its connection: the response's watchdog, its close and clock; the
/// request side, whether to linger at the close ([`crate::linger`]).
#[derive(Clone)]
pub struct Conn {
    /// Cancelled to close the connection at once.
    pub close: CancellationToken,
    /// The connection writer's clock.
    pub clock: WriteClock,
    /// Set when the client is still sending the body of a request already answered.
    pub linger: crate::linger::Linger,
}

/// Wraps `resp`'s body when it streams, so that a client not taking more of it for `limit`
/// loses it: the connection is closed, or on HTTP/2 (`version`) only its stream is reset when
/// the connection itself still moves. Zero turns it off.
pub fn guard(resp: Response<Body>, limit: Duration, version: Version, conn: &Conn) -> Response<Body> {
    let per_stream = version == Version::HTTP_2;
    let hint = resp.body().size_hint();
    if limit.is_zero()
        || resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || resp.body().is_end_stream()
        || (!per_stream && hint.upper().is_some_and(|n| n <= SMALL))
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let shared = Arc::new(Shared {
        inner: Mutex::new(Some(body)),
        handed_out_at: AtomicU64::new(0),
        start: Instant::now(),
        cut: AtomicBool::new(false),
    });
    tokio::spawn(watch(Arc::downgrade(&shared), limit, per_stream, conn.clone()));
    let body = SendTimeoutBody { shared, hint, per_stream, rest: None };
    Response::from_parts(parts, marina_core::body::boxed(body))
}

struct Shared {
    /// The response body; taken (and dropped) by the watchdog when the client stalls.
    inner: Mutex<Option<Body>>,
    /// Microseconds after `start` when the body last handed out a frame that has not been
    /// followed by the next poll; 0 while hyper is asking for more (or the body waits on its
    /// source).
    handed_out_at: AtomicU64,
    start: Instant,
    /// The watchdog cut the response (its stream is reset at the next poll).
    cut: AtomicBool,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
    }
}

struct SendTimeoutBody {
    shared: Arc<Shared>,
    hint: SizeHint,
    /// HTTP/2: data is handed out in pieces of at most [`PIECE`] bytes.
    per_stream: bool,
    /// The part of the last data frame not handed out yet.
    rest: Option<Bytes>,
}

impl SendTimeoutBody {
    /// The next piece of `data` (all of it unless this is an HTTP/2 stream), keeping the rest.
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if self.per_stream && data.len() > PIECE {
            let first = data.split_to(PIECE);
            self.rest = Some(data);
            first
        } else {
            data
        }
    }

    /// The error that ends a cut response: on HTTP/2, hyper resets the stream with its reason.
    fn cut_error() -> BoxError {
        Box::new(CutByTimeout(h2_cancel()))
    }
}

/// The body error of a response cut by `RUNTIME_SEND_TIMEOUT`; its source is the HTTP/2 reason
/// hyper resets the stream with.
#[derive(Debug)]
struct CutByTimeout(h2::Error);

impl std::fmt::Display for CutByTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client did not read the response within RUNTIME_SEND_TIMEOUT")
    }
}

impl std::error::Error for CutByTimeout {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn h2_cancel() -> h2::Error {
    h2::Error::from(h2::Reason::CANCEL)
}

impl HttpBody for SendTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.shared.handed_out_at.store(0, Ordering::Release);
        if this.shared.cut.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(Self::cut_error())));
        }
        if let Some(rest) = this.rest.take() {
            let piece = this.piece(rest);
            this.shared.handed_out_at.store(this.shared.now_us(), Ordering::Release);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let polled = {
            let mut inner = this.shared.inner.lock();
            let Some(body) = inner.as_mut() else {
                return Poll::Ready(Some(Err(Self::cut_error())));
            };
            let polled = Pin::new(body).poll_frame(cx);
            if matches!(polled, Poll::Ready(None)) {
                // Done: release what the body held now, not when hyper drops the wrapper.
                *inner = Some(marina_core::body::empty());
            }
            polled
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => Frame::data(this.piece(data)),
                    Err(frame) => frame,
                };
                this.shared.handed_out_at.store(this.shared.now_us(), Ordering::Release);
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Wakes up a few times per `limit` while the response lives; ends with it.
async fn watch(shared: Weak<Shared>, limit: Duration, per_stream: bool, conn: Conn) {
    // A stall is seen within a quarter of the limit after it reaches the limit.
    let tick = (limit / 4).max(Duration::from_millis(10));
    let mut wait = tick;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = conn.close.cancelled() => return,
        }
        let Some(shared) = shared.upgrade() else { return };
        // The socket has taken nothing for `limit`: the client reads nothing on this connection.
        conn.clock.note_drain();
        let blocked = conn.clock.blocked_for().unwrap_or_default();
        if blocked >= limit {
            drop(shared.inner.lock().take());
            tracing::info!(
                stalled_ms = blocked.as_millis() as u64,
                "the client stopped reading its response; closing the connection (RUNTIME_SEND_TIMEOUT)"
            );
            conn.close.cancel();
            return;
        }
        wait = tick.min(limit - blocked);
        if !per_stream {
            continue;
        }
        // HTTP/2: this stream alone may be stuck behind its shut window.
        let since = shared.handed_out_at.load(Ordering::Acquire);
        if since == 0 {
            continue;
        }
        let stalled = Duration::from_micros(shared.now_us().saturating_sub(since));
        if stalled < limit {
            wait = wait.min(limit - stalled);
            continue;
        }
        shared.cut.store(true, Ordering::Release);
        drop(shared.inner.lock().take());
        tracing::info!(
            stalled_ms = stalled.as_millis() as u64,
            "the client stopped reading an HTTP/2 response; resetting its stream (RUNTIME_SEND_TIMEOUT)"
        );
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_counts_from_the_first_blocked_write_until_one_goes_through() {
        let clock = WriteClock::default();
        let since = || clock.0.blocked_since_us.load(Ordering::Relaxed);
        assert_eq!(clock.blocked_for(), None);
        clock.blocked();
        let first = since();
        assert_ne!(first, 0);
        // A second blocked write does not restart the count.
        clock.blocked();
        assert_eq!(since(), first);
        assert!(clock.blocked_for().is_some());
        clock.moved();
        assert_eq!(clock.blocked_for(), None);
    }

    #[test]
    fn a_cut_stream_is_reset_with_cancel() {
        let err = SendTimeoutBody::cut_error();
        let reason = err.source().and_then(|s| s.downcast_ref::<h2::Error>()).and_then(h2::Error::reason);
        assert_eq!(reason, Some(h2::Reason::CANCEL));
    }
}
