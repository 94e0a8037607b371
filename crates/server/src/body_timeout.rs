//! `RUNTIME_BODY_TIMEOUT` for the bodies marina reads itself: the internal API and the plugins'
//! own routes (`/keyval/api`, `/database/api`, `/redirects/api`, `/gateway/api`). A worker's
//! body has its own accounting in the pool; here the reader is marina, so the client's time is
//! every wait for a piece of the body it has not sent yet, all waits together. Past the limit
//! the body fails, and the request is answered 408 `REQUEST_BODY_TIMEOUT` whatever the handler
//! made of the failed read: a client sending one byte now and then cannot hold a connection
//! and a handler forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use marina_core::Error;
use marina_core::body::{self, Body, BoxError};
use serde_json::json;
use tokio::time::{Instant, Sleep};

/// Set when a body ran out of time.
#[derive(Clone, Default)]
pub struct Expired(Arc<AtomicBool>);

impl Expired {
    /// The 408 to answer instead of what the handler answered, when the body ran out of time.
    pub fn error(&self, limit: Duration) -> Option<Error> {
        self.0.load(Ordering::Acquire).then(|| timed_out(limit))
    }
}

fn timed_out(limit: Duration) -> Error {
    Error::new(
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_BODY_TIMEOUT",
        format!("the request body did not arrive within {} ms (RUNTIME_BODY_TIMEOUT)", limit.as_millis()),
    )
    .with_data(json!({ "timeoutMs": limit.as_millis() as u64 }))
}

/// `inner`, failing once the client has kept it waiting `limit` in total (zero: never).
pub fn wrap(inner: Body, limit: Duration) -> (Body, Expired) {
    let expired = Expired::default();
    if limit.is_zero() || inner.is_end_stream() {
        return (inner, expired);
    }
    let b = Timed { inner, limit, waited: Duration::ZERO, since: None, deadline: None, expired: expired.clone() };
    (body::boxed(b), expired)
}

struct Timed {
    inner: Body,
    limit: Duration,
    /// Finished waits, added up.
    waited: Duration,
    /// The wait in progress.
    since: Option<Instant>,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: Expired,
}

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.expired.0.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(timed_out(this.limit).message().to_string().into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.since.take() {
                    this.waited += since.elapsed();
                }
                this.deadline = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.since.get_or_insert(now);
                let limit = this.limit;
                let left = limit.saturating_sub(this.waited);
                let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(since + left)));
                if deadline.as_mut().poll(cx).is_ready() {
                    this.expired.0.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(timed_out(limit).message().to_string().into())));
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
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_body_that_stalls_fails_after_the_limit_and_says_so() {
        // A body that sends one piece and then nothing: its sender is kept.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let pending = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|o| o.map(|b| Ok::<_, BoxError>(Frame::data(b))))
        }));
        tx.send(Bytes::from_static(b"{")).await.unwrap();
        let limit = Duration::from_millis(300);
        let (b, expired) = wrap(body::boxed(pending), limit);
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(30), b.collect())
            .await
            .expect("the stalled body ends")
            .expect_err("the body fails");
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
        assert!(err.to_string().contains("RUNTIME_BODY_TIMEOUT"), "{err}");
        let e = expired.error(limit).expect("expired");
        assert_eq!((e.status().as_u16(), e.code()), (408, "REQUEST_BODY_TIMEOUT"));
        drop(tx);
    }

    #[tokio::test]
    async fn a_whole_body_is_untouched() {
        let (b, expired) = wrap(body::full("hello"), Duration::from_secs(5));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "hello");
        assert!(expired.error(Duration::from_secs(5)).is_none());
    }
}
