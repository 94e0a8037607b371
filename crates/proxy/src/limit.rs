//! A request body that enforces a size limit while it streams.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use marina_core::body::{Body, BoxError};

/// The error a [`LimitedBody`] yields once more than its limit has passed through.
#[derive(Debug, Clone, Copy)]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body is larger than the limit of {} bytes", self.limit)
    }
}

impl std::error::Error for BodyTooLarge {}

/// Wraps a body and fails it as soon as more than `limit` bytes have been read, so a huge
/// upload is cut off mid-stream instead of being buffered or forwarded whole. The shared flag
/// lets the caller tell "the body was too large" apart from "the upstream failed" after the
/// upstream connection has been aborted by the failing body.
pub struct LimitedBody {
    inner: Body,
    seen: u64,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl LimitedBody {
    /// Wraps `inner`; returns the body and a flag that turns true when the limit is exceeded.
    pub fn new(inner: Body, limit: u64) -> (Self, Arc<AtomicBool>) {
        let tripped = Arc::new(AtomicBool::new(false));
        (Self { inner, seen: 0, limit, tripped: tripped.clone() }, tripped)
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
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
    async fn passes_small_bodies_and_cuts_large_ones() {
        let (ok, flag) = LimitedBody::new(marina_core::body::full(vec![0u8; 10]), 10);
        assert_eq!(ok.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!flag.load(Ordering::Acquire));

        let (big, flag) = LimitedBody::new(marina_core::body::full(vec![0u8; 11]), 10);
        let err = big.collect().await.expect_err("the limit must fail the body");
        assert!(err.to_string().contains("limit of 10 bytes"));
        assert!(flag.load(Ordering::Acquire));
    }
}
