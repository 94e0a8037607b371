//! The client's request body on its way to a worker. It tells the pool when the whole body has
//! arrived, because a worker's `timeout` counts the worker's own time only: a client uploading
//! one byte a second must not get a shared warm worker killed as hung. It also bounds the
//! upload (`RUNTIME_BODY_TIMEOUT`) and remembers when the body failed by the client's fault (too
//! slow, or not valid HTTP framing such as a malformed chunk), so that the request is answered
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
use tokio::time::Sleep;

const FINE: u8 = 0;
const TOO_SLOW: u8 = 1;
const MALFORMED: u8 = 2;

/// What the pool learns about a request body while it streams.
#[derive(Clone)]
pub(crate) struct Upload {
    complete: watch::Receiver<bool>,
    fault: Arc<AtomicU8>,
    limit: Duration,
}

impl Upload {
    /// For a request that has no body to stream: complete from the start.
    pub fn complete() -> Self {
        let (_, rx) = watch::channel(true);
        Self { complete: rx, fault: Arc::new(AtomicU8::new(FINE)), limit: Duration::ZERO }
    }

    /// Resolves once the whole body has been read from the client (or it failed, or was
    /// dropped unread).
    pub async fn finished(&self) {
        let mut rx = self.complete.clone();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// The client's fault, when the body failed because of it: 408 `REQUEST_BODY_TIMEOUT` or
    /// 400 `BAD_REQUEST_BODY`.
    pub fn client_error(&self) -> Option<Error> {
        match self.fault.load(Ordering::Acquire) {
            TOO_SLOW => Some(
                Error::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_BODY_TIMEOUT",
                    format!(
                        "the request body did not arrive within {} ms (RUNTIME_BODY_TIMEOUT)",
                        self.limit.as_millis()
                    ),
                )
                .with_data(json!({ "timeoutMs": self.limit.as_millis() as u64 })),
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
    deadline: Option<Pin<Box<Sleep>>>,
    complete: watch::Sender<bool>,
    fault: Arc<AtomicU8>,
}

impl ClientBody {
    /// Wraps `inner`; it must have arrived in full within `limit` (zero: no limit).
    pub fn new(inner: Body, limit: Duration) -> (Self, Upload) {
        let (tx, rx) = watch::channel(false);
        let fault = Arc::new(AtomicU8::new(FINE));
        let deadline = (!limit.is_zero()).then(|| Box::pin(tokio::time::sleep(limit)));
        let upload = Upload { complete: rx, fault: fault.clone(), limit };
        (Self { inner, deadline, complete: tx, fault }, upload)
    }

    fn finish(&self) {
        self.complete.send_replace(true);
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
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let _ = this.fault.compare_exchange(FINE, MALFORMED, Ordering::AcqRel, Ordering::Acquire);
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
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
        tokio::time::timeout(Duration::from_secs(1), upload.finished()).await.unwrap();
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

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
