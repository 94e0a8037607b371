//! A request body the answer did not wait for. When a response is ready while the client is
//! still sending the request's body (an error answered before reading it: 413 past
//! `maxBodySize`, 401, 404; or an app that answered without reading), hyper stops reading and
//! closes the HTTP/1.1 connection once the response is written. Unless that response says
//! `Connection: close`, a client that pools connections may send its next request on the
//! connection in the moment before the close reaches it, and that request fails (reqwest:
//! `IncompleteMessage`). RFC 9112 §9.6: a server that is going to close says so in the response.
//!
//! So the body is watched for its end, and a response made before it was seen says
//! `Connection: close`. An app that streams its answer while still reading the body (full
//! duplex) gets the header too: its connection closes after the exchange, which costs the
//! client a new connection, never a request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use marina_core::body::{self, Body};

/// Whether the watched body reached its end.
pub struct Ended(Arc<AtomicBool>);

impl Ended {
    /// Say `Connection: close` in `resp` when the body was not read to its end; `true` then
    /// (the connection lingers at its close: [`crate::linger`]).
    pub fn close_if_unread<B>(&self, resp: &mut Response<B>) -> bool {
        let unread = !self.0.load(Ordering::Acquire) && resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        if unread {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        unread
    }
}

/// `incoming` as marina's body, watched for its end when it is an HTTP/1.x body with bytes to
/// come (on HTTP/2 an unread body ends its stream only, and a request without a body has
/// nothing to wait for: neither is wrapped).
pub fn watch<B>(incoming: B, version: Version) -> (Body, Option<Ended>)
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<body::BoxError>,
{
    if incoming.is_end_stream() || !matches!(version, Version::HTTP_11 | Version::HTTP_10) {
        return (body::boxed(incoming), None);
    }
    let ended = Arc::new(AtomicBool::new(false));
    (body::boxed(Watched { inner: incoming, ended: ended.clone() }), Some(Ended(ended)))
}

struct Watched<B> {
    inner: B,
    ended: Arc<AtomicBool>,
}

impl<B: HttpBody + Unpin> HttpBody for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A reader may stop at the last frame when `is_end_stream` says so, or read to `None`.
        if matches!(polled, Poll::Ready(None)) || (polled.is_ready() && self.inner.is_end_stream()) {
            self.ended.store(true, Ordering::Release);
        }
        polled
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
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn answer() -> Response<()> {
        Response::new(())
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_keeps_the_connection() {
        let (b, ended) = watch(Full::new(Bytes::from_static(b"hello")), Version::HTTP_11);
        let ended = ended.expect("a body with bytes is watched");
        assert_eq!(b.collect().await.unwrap().to_bytes(), "hello");
        let mut resp = answer();
        ended.close_if_unread(&mut resp);
        assert!(resp.headers().get(header::CONNECTION).is_none());
    }

    #[tokio::test]
    async fn a_body_left_unread_or_half_read_closes_the_connection() {
        let chunks = || {
            let frames = (0..3).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"xx"))));
            StreamBody::new(futures_util::stream::iter(frames))
        };
        let (_b, ended) = watch(chunks(), Version::HTTP_11);
        let mut resp = answer();
        ended.unwrap().close_if_unread(&mut resp);
        assert_eq!(resp.headers()[header::CONNECTION], "close");

        let (mut b, ended) = watch(chunks(), Version::HTTP_11);
        b.frame().await.unwrap().unwrap();
        let mut resp = answer();
        ended.unwrap().close_if_unread(&mut resp);
        assert_eq!(resp.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn bodiless_and_http2_requests_are_not_watched() {
        assert!(watch(http_body_util::Empty::<Bytes>::new(), Version::HTTP_11).1.is_none());
        assert!(watch(Full::new(Bytes::from_static(b"x")), Version::HTTP_2).1.is_none());
    }

    #[test]
    fn an_upgrade_answer_is_left_alone() {
        let (_b, ended) = watch(Full::new(Bytes::from_static(b"x")), Version::HTTP_11);
        let mut resp = answer();
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        ended.unwrap().close_if_unread(&mut resp);
        assert!(resp.headers().get(header::CONNECTION).is_none());
    }
}
