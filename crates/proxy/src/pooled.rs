//! Keep-alive HTTP/1.1 connections driven by the request that uses them.
//!
//! hyper's client connection is a future that does the I/O. The usual way is to spawn it as a
//! task, and then every request crosses tasks twice (the request goes over a channel to the
//! connection's task, the response comes back over another), plus a task per request that waits
//! for the connection to be reusable before pooling it: wake-ups, and often thread switches,
//! that a proxy hop does not need. Here nobody spawns anything on the hot path: the request's
//! own future polls the connection until the response head arrives ([`Conn::send`]), and the
//! response body ([`PooledBody`]) owns the connection and polls it in `poll_frame`. When the
//! body ends with the connection ready for another request, the connection goes back to its
//! [`Pool`] right there. A body dropped before its end (the client went away) drops its
//! connection at once, closing the socket, even when the rest of the answer has already arrived
//! and could be drained: the upstream stops sending an answer nobody reads, and no task is
//! spawned to read it. (That rest could not be taken for the next request's answer either way:
//! hyper itself drains or closes a connection whose response body was dropped.)
//!
//! An idle connection is polled by no one, so a close by the upstream is seen when the
//! connection is next taken: [`Pool::take`] polls it once and skips it if it has ended, which
//! it knows once the runtime's I/O driver has reported the close (the driver runs between
//! batches of tasks, so under traffic that is soon after the close arrives). A close that
//! arrives after a request was written over the connection fails that request.
//!
//! The channels inside hyper between the sender and the connection would still wake the task
//! that last polled the connection; those are polled with a no-op waker, which is sound
//! because they only change while the connection itself is being polled, here, right before.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, Write};
use marina_core::body::Body;
use parking_lot::Mutex;

/// One HTTP/1.1 connection: the handle requests are sent through and the connection future.
/// Boxed: hyper's connection state is large, and it moves between the pool, the request's
/// future and the response body on every request.
pub struct Conn<T: Read + Write + Unpin>(Box<Parts<T>>);

struct Parts<T: Read + Write + Unpin> {
    sender: SendRequest<Body>,
    conn: http1::Connection<T, Body>,
}

impl<T> Conn<T>
where
    T: Read + Write + Unpin + Send + 'static,
{
    /// The HTTP/1.1 handshake over `io` (nothing is exchanged yet: this sets up the state).
    pub async fn handshake(io: T) -> hyper::Result<Self> {
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        Ok(Self(Box::new(Parts { sender, conn })))
    }

    /// Sends `req` and drives the connection until the response head arrives. The connection
    /// comes back with the response unless it ended; a request that was never written comes
    /// back in the error (`take_message`), so it can go over another connection. The third
    /// element is the connection's own error when it failed: the request may only see "closed"
    /// while the connection knows why (an answer head over hyper's bounds), see [`cause`].
    pub async fn send(
        mut self,
        req: Request<Body>,
    ) -> (Result<Response<Incoming>, TrySendError<Request<Body>>>, Option<Self>, Option<hyper::Error>) {
        let mut answer = std::pin::pin!(self.0.sender.try_send_request(req));
        let mut conn = Some(self);
        let mut ended = None;
        let result = poll_fn(|cx| {
            if let Some(c) = conn.as_mut()
                && let Poll::Ready(done) = Pin::new(&mut c.0.conn).poll(cx)
            {
                // Ended (closed, or failed). Dropping it answers a request still queued, with
                // the request given back.
                ended = done.err();
                conn = None;
            }
            let mut quiet = Context::from_waker(Waker::noop());
            match answer.as_mut().poll(if conn.is_some() { &mut quiet } else { cx }) {
                Poll::Ready(r) => Poll::Ready(r),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        (result, conn, ended)
    }

    /// Polls the connection once; `false` when it has ended (closed by the upstream, failed).
    fn alive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.0.conn).poll(cx).is_pending() && !self.0.sender.is_closed()
    }

    /// Lets the connection settle after a response and tells whether it can take another
    /// request now. Polled with a no-op waker: it sits in the pool with no task to wake.
    fn settle(&mut self) -> Settled {
        let mut quiet = Context::from_waker(Waker::noop());
        if !self.alive(&mut quiet) {
            Settled::Ended
        } else if self.0.sender.is_ready() {
            Settled::Ready
        } else {
            Settled::Busy
        }
    }
}

/// The error to report for a failed exchange: the connection's own when it is about the
/// upstream's answer (malformed, or over hyper's size bounds), since the request then often
/// sees only that the connection closed, which would blame a crash instead of a bad answer.
pub fn cause(ended: Option<hyper::Error>, request: hyper::Error) -> hyper::Error {
    match ended {
        Some(e)
            if (e.is_parse() || e.is_parse_too_large()) && !(request.is_parse() || request.is_parse_too_large()) =>
        {
            e
        }
        _ => request,
    }
}

enum Settled {
    Ready,
    Busy,
    Ended,
}

struct Idle<T: Read + Write + Unpin> {
    conn: Conn<T>,
    since: Instant,
    shard: usize,
}

/// Idle connections to one upstream: the most recently used is taken first (its buffers and
/// the upstream's side are the warmest), and the oldest go first when the pool is full.
///
/// Each idle connection is marked with the connection thread it was opened on
/// ([`marina_core::shard`]) and is only taken by a request on that thread: its socket belongs
/// to that thread's I/O driver.
pub struct Pool<T: Read + Write + Unpin> {
    idle: Mutex<Vec<Idle<T>>>,
    max_idle: usize,
    idle_timeout: Option<Duration>,
}

impl<T> Pool<T>
where
    T: Read + Write + Unpin + Send + 'static,
{
    /// A pool keeping up to `max_idle` idle connections, each for at most `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Option<Duration>) -> Self {
        Self { idle: Mutex::new(Vec::new()), max_idle, idle_timeout }
    }

    /// An idle connection that is still open, if there is one.
    pub fn take(&self) -> Option<Conn<T>> {
        let mut cx = Context::from_waker(Waker::noop());
        let shard = marina_core::shard::current();
        loop {
            let Idle { mut conn, since, .. } = {
                let mut idle = self.idle.lock();
                let i = idle.iter().rposition(|e| e.shard == shard)?;
                idle.remove(i)
            };
            if self.idle_timeout.is_some_and(|t| since.elapsed() >= t) {
                continue;
            }
            if conn.alive(&mut cx) && conn.0.sender.is_ready() {
                return Some(conn);
            }
        }
    }

    /// Puts a connection that can take another request back.
    ///
    /// The stack is in the order connections came back, so the oldest are at the bottom, where
    /// `take` (last in, first out) may never reach after a burst: expired ones are dropped from
    /// there (usually one clock read), so a socket the upstream closed does not stay open.
    fn put(&self, conn: Conn<T>) {
        if self.max_idle == 0 {
            return; // no pooling
        }
        let mut idle = self.idle.lock();
        if let Some(timeout) = self.idle_timeout {
            while idle.first().is_some_and(|e| e.since.elapsed() >= timeout) {
                idle.remove(0);
            }
        }
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle { conn, since: Instant::now(), shard: marina_core::shard::current() });
    }

    /// Drops the connections idle for longer than the idle timeout (all of them: `None`).
    pub fn expire(&self, older_than: Option<Duration>) {
        let now = Instant::now();
        self.idle.lock().retain(|e| older_than.is_some_and(|t| now.duration_since(e.since) < t));
    }

    /// How many connections are idle.
    pub fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    /// Pools `conn` if it can take another request now; otherwise a task drives it until it can
    /// (a request body still streaming after the response ended) and pools it then.
    fn recycle(self: &Arc<Self>, mut conn: Conn<T>) {
        match conn.settle() {
            Settled::Ready => self.put(conn),
            Settled::Ended => {}
            Settled::Busy => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
                let pool = self.clone();
                rt.spawn(async move {
                    let mut conn = conn;
                    let ready = poll_fn(|cx| {
                        let Parts { sender, conn } = &mut *conn.0;
                        if Pin::new(conn).poll(cx).is_ready() {
                            return Poll::Ready(false);
                        }
                        sender.poll_ready(cx).map(|r| r.is_ok())
                    })
                    .await;
                    if ready {
                        pool.recycle(conn);
                    }
                });
            }
        }
    }
}

/// A response body that drives its connection while it is read, and gives the connection back
/// to its pool when it ends.
pub struct PooledBody<T: Read + Write + Unpin + Send + 'static> {
    body: Incoming,
    conn: Option<Conn<T>>,
    pool: Arc<Pool<T>>,
}

impl<T> PooledBody<T>
where
    T: Read + Write + Unpin + Send + 'static,
{
    /// The body of a response that came over `conn`, which goes back to `pool` at its end.
    pub fn new(body: Incoming, conn: Conn<T>, pool: Arc<Pool<T>>) -> Self {
        Self { body, conn: Some(conn), pool }
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.recycle(conn);
        }
    }
}

impl<T> HttpBody for PooledBody<T>
where
    T: Read + Write + Unpin + Send + 'static,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        let mut quiet = Context::from_waker(Waker::noop());
        let mut frame = Pin::new(&mut this.body).poll_frame(&mut quiet);
        if frame.is_pending() {
            if Pin::new(&mut conn.0.conn).poll(cx).is_ready() {
                // The connection ended; what it left for the body is an end or an error.
                this.conn = None;
                return Pin::new(&mut this.body).poll_frame(cx);
            }
            frame = Pin::new(&mut this.body).poll_frame(&mut quiet);
        }
        match frame {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<T> Drop for PooledBody<T>
where
    T: Read + Write + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        // A body read to its last byte may be dropped without being asked for its end (hyper
        // stops at `is_end_stream`): its connection is reusable. One dropped earlier is closed
        // with it (see the module doc).
        if self.body.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests;
