//! The client's request body on its way to a worker, and whose turn it is while it streams.
//!
//! A worker's `timeout` counts the worker's own time: a request's time is the worker's except
//! while the worker has asked for the next piece of the body and the client has not sent it.
//! So a client uploading one byte a second does not get a shared warm worker killed as hung,
//! while a worker that never reads a large body (its socket fills, the body waits on it) is
//! timed like any hung worker: 504 and replaced. The client's waits are bounded by
//! `RUNTIME_BODY_TIMEOUT` (408), and a body that fails by the client's fault (too slow, or not
//! valid HTTP framing such as a malformed chunk) is remembered, so that the request is answered
//! 408 or 400 and the worker is neither blamed nor replaced.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use marina_core::Error;
use marina_core::body::{Body, BoxError};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

const FINE: u8 = 0;
const TOO_SLOW: u8 = 1;
const MALFORMED: u8 = 2;

/// Where a streaming body stands.
#[derive(Clone, Copy, Debug, Default)]
struct Turn {
    /// The whole body has been read (or it failed, or was dropped unread).
    done: bool,
    /// Since when the worker waits for a piece of the body that the client has not sent.
    client_since: Option<Instant>,
    /// The client's finished waits, added up.
    client_total: Duration,
}

impl Turn {
    /// The client's time so far, the wait in progress included.
    fn client_time(&self, now: Instant) -> Duration {
        self.client_total + self.client_since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Ends the client's wait in progress; whether there was one.
    fn end_wait(&mut self, now: Instant) -> bool {
        match self.client_since.take() {
            Some(since) => {
                self.client_total += now.saturating_duration_since(since);
                true
            }
            None => false,
        }
    }
}

/// What the pool learns about a request body while it streams.
#[derive(Clone)]
pub(crate) struct Upload {
    /// `None` for a request with no body to stream (most of them): nothing to watch, so no
    /// channel and no fault cell are made for it (a `watch` channel per request, created and
    /// closed, was ~650 instructions of the warm JS hop, callgrind on `bench/js-hop.sh`'s app).
    streaming: Option<Streaming>,
}

#[derive(Clone)]
struct Streaming {
    turn: watch::Receiver<Turn>,
    fault: Arc<AtomicU8>,
    limit: Duration,
}

impl Upload {
    /// For a request that has no body to stream: complete from the start.
    pub fn complete() -> Self {
        Self { streaming: None }
    }

    /// Resolves once the worker has used `timeout` of its own time since `started`: the time
    /// since then, less the time the worker spent waiting for the client's body.
    pub async fn worker_timeout(&self, started: Instant, timeout: Duration) {
        let Some(streaming) = &self.streaming else {
            // All of the time is the worker's.
            match started.checked_add(timeout) {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
            return;
        };
        let mut rx = streaming.turn.clone();
        loop {
            let turn = *rx.borrow_and_update();
            let now = Instant::now();
            let used = now.saturating_duration_since(started).saturating_sub(turn.client_time(now));
            let Some(left) = timeout.checked_sub(used).filter(|left| !left.is_zero()) else { return };
            if turn.client_since.is_some() {
                // The clock stands still until the client moves (RUNTIME_BODY_TIMEOUT bounds that).
                if rx.changed().await.is_err() {
                    // The body is gone, and with it the wait (its drop ended it).
                    tokio::time::sleep(left).await;
                    return;
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(left) => return,
                // The worker asked for more and waits on the client, or the body ended; a body
                // dropped without a word changes nothing.
                changed = rx.changed(), if !turn.done => {
                    if changed.is_err() {
                        tokio::time::sleep(left).await;
                        return;
                    }
                }
            }
        }
    }

    /// The client's fault, when the body failed because of it: 408 `REQUEST_BODY_TIMEOUT` or
    /// 400 `BAD_REQUEST_BODY`.
    pub fn client_error(&self) -> Option<Error> {
        let streaming = self.streaming.as_ref()?;
        match streaming.fault.load(Ordering::Acquire) {
            TOO_SLOW => Some(
                Error::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_BODY_TIMEOUT",
                    format!(
                        "the request body did not arrive within {} ms (RUNTIME_BODY_TIMEOUT)",
                        streaming.limit.as_millis()
                    ),
                )
                .with_data(json!({ "timeoutMs": streaming.limit.as_millis() as u64 })),
            ),
            MALFORMED => Some(Error::bad_request(
                "BAD_REQUEST_BODY",
                "the request body could not be read: its framing is invalid (a malformed chunk) or the client stopped sending it",
            )),
            _ => None,
        }
    }
}

/// The body wrapper that feeds an [`Upload`].
pub(crate) struct ClientBody {
    inner: Body,
    /// `RUNTIME_BODY_TIMEOUT`, zero for none: the most the worker may wait on the client, all
    /// waits together.
    limit: Duration,
    /// When the client's wait in progress runs out of `limit`.
    deadline: Option<Pin<Box<Sleep>>>,
    turn: watch::Sender<Turn>,
    /// A client's wait is in progress (saves touching `turn` for every piece that was there).
    in_wait: bool,
    fault: Arc<AtomicU8>,
}

impl ClientBody {
    /// Wraps `inner`; the worker may wait on the client for `limit` in all (zero: no limit).
    pub fn new(inner: Body, limit: Duration) -> (Self, Upload) {
        let (tx, rx) = watch::channel(Turn::default());
        let fault = Arc::new(AtomicU8::new(FINE));
        let upload = Upload { streaming: Some(Streaming { turn: rx, fault: fault.clone(), limit }) };
        (Self { inner, limit, deadline: None, turn: tx, in_wait: false, fault }, upload)
    }

    /// A piece of the body (or its end, or an error) reached the worker: the clock is its again.
    fn moved(&mut self) {
        if std::mem::take(&mut self.in_wait) {
            self.turn.send_if_modified(|t| t.end_wait(Instant::now()));
        }
    }

    /// The worker asked for a piece the client has not sent. Whether the client has now used
    /// up `limit`.
    fn waiting(&mut self, cx: &mut Context<'_>) -> bool {
        if !std::mem::replace(&mut self.in_wait, true) {
            let now = Instant::now();
            let mut spent = Duration::ZERO;
            self.turn.send_modify(|t| {
                t.client_since = Some(now);
                spent = t.client_total;
            });
            if self.limit.is_zero() {
                return false;
            }
            let at = now + self.limit.saturating_sub(spent);
            match self.deadline.as_mut() {
                Some(d) => d.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }

    fn finish(&self) {
        self.turn.send_modify(|t| {
            t.end_wait(Instant::now());
            t.done = true;
        });
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.finish();
                } else {
                    this.moved();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let _ = this.fault.compare_exchange(FINE, MALFORMED, Ordering::AcqRel, Ordering::Acquire);
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                if this.waiting(cx) {
                    this.fault.store(TOO_SLOW, Ordering::Release);
                    this.finish();
                    return Poll::Ready(Some(Err("the client did not send the request body in time".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_whole_body_completes_the_upload() {
        let (body, upload) = ClientBody::new(marina_core::body::full("hello"), Duration::from_secs(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(upload.streaming.as_ref().unwrap().turn.borrow().done);
        assert!(upload.client_error().is_none());
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_as_the_clients_fault() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let (body, upload) = ClientBody::new(marina_core::body::boxed(stream), Duration::from_millis(50));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await.unwrap();
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("in time"), "{err}");
        let e = upload.client_error().unwrap();
        assert_eq!((e.status().as_u16(), e.code()), (408, "REQUEST_BODY_TIMEOUT"));
        drop(tx);
    }

    #[tokio::test]
    async fn a_failing_body_is_a_bad_request() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let (body, upload) = ClientBody::new(marina_core::body::boxed(stream), Duration::ZERO);
        tx.send(Err("invalid chunk size line".into())).await.unwrap();
        assert!(body.collect().await.is_err());
        let e = upload.client_error().unwrap();
        assert_eq!((e.status().as_u16(), e.code()), (400, "BAD_REQUEST_BODY"));
    }

    #[tokio::test]
    async fn a_body_nobody_pulls_is_the_workers_time() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let (body, upload) = ClientBody::new(marina_core::body::boxed(stream), Duration::from_secs(60));
        tx.send(Ok(Frame::data(Bytes::from_static(b"waiting for the worker")))).await.unwrap();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), upload.worker_timeout(started, Duration::from_millis(300)))
            .await
            .expect("the worker's clock runs while its body waits on it");
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        assert!(upload.client_error().is_none());
        drop((body, tx));
    }

    #[tokio::test]
    async fn the_clients_waits_are_not_the_workers_time_and_are_bounded_together() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        // The worker may take 2 s of its own time; it may wait 2 s in all on the client.
        let (mut body, upload) = ClientBody::new(marina_core::body::boxed(stream), Duration::from_secs(2));
        let started = Instant::now();
        let clock = upload.clone();
        let timer = tokio::spawn(async move { clock.worker_timeout(started, Duration::from_secs(2)).await });
        let client = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"late")))).await.unwrap();
            // Then nothing more: the body's deadline has to end it.
            std::future::pending::<()>().await;
        });
        // The worker pulls at once: 1.5 s on the client.
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"late"));
        assert!(started.elapsed() >= Duration::from_millis(1500));
        // Then 1 s of its own before it pulls again, which is not the client's time.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!timer.is_finished(), "2.5 s since the start, but 1 s of them the worker's");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("in time"), "{err}");
        let failed_at = started.elapsed();
        assert!(failed_at >= Duration::from_millis(3000), "1.5 + 0.5 s on the client, 1 s not: {failed_at:?}");
        let e = upload.client_error().unwrap();
        assert_eq!((e.status().as_u16(), e.code()), (408, "REQUEST_BODY_TIMEOUT"));
        assert!(!timer.is_finished(), "the worker has used about 1 s of its 2 s");
        // The body is done: the worker's clock runs again.
        tokio::time::timeout(Duration::from_secs(10), timer).await.unwrap().unwrap();
        assert!(started.elapsed() >= failed_at + Duration::from_millis(500), "{:?}", started.elapsed());
        client.abort();
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
