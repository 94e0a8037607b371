//! The connection side of zero-copy file responses (see [`marina_core::zerocopy`]): a TCP
//! stream whose writer sends placeholder slices with `sendfile(2)` and everything else as
//! usual, and the swap of a marked response's body, made once every hook has run. The writer
//! also keeps the connection's [`WriteClock`], which `RUNTIME_SEND_TIMEOUT` reads.
//!
//! The bytes written just before a file region (the response head) go out with `MSG_MORE`, so
//! the kernel holds them for the file's first bytes instead of sending a segment of their own
//! (nginx gets the same with `tcp_nopush`, i.e. `TCP_CORK`, at two more system calls per
//! response). Without it, on loopback, the lone head segment left the file's bytes queued
//! behind it, and they went out in small pieces from the *client's* ACKs: 38–40 TCP segments
//! per 1 MiB response instead of 21–26, and 450–480 µs of CPU per response (server and client
//! together) instead of 150–240 (BENCHMARKS.md, "Static files: where the time goes").

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Response, Version, header};
use http_body::Body as _;
use marina_core::Body;
use marina_core::zerocopy::{FileRegion, Sink, placeholder_offset, short_file};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use tokio::sync::OwnedSemaphorePermit;

use crate::linger::{self, Linger};
use crate::send_timeout::WriteClock;

/// An accepted connection. Reads pass through; writes of placeholder slices become
/// `sendfile` calls for the file regions queued in [`Stream::sink`].
pub struct Stream {
    inner: TcpStream,
    sink: Sink,
    clock: WriteClock,
    /// Whether hyper shut the write side (an orderly close, after which [`linger`] may run).
    shut: bool,
    linger: Linger,
    /// The connection's place in `RUNTIME_MAX_CONNECTIONS`, kept while the socket lingers.
    permit: Option<OwnedSemaphorePermit>,
}

impl Stream {
    pub fn new(inner: TcpStream) -> Self {
        let clock = WriteClock::for_socket(std::os::fd::AsRawFd::as_raw_fd(&inner));
        Self { inner, sink: Sink::default(), clock, shut: false, linger: Linger::default(), permit: None }
    }

    /// Holds `permit` until the socket is closed, lingering included.
    pub fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    /// Where the request side says the client is still sending (see [`linger`]).
    pub fn linger(&self) -> Linger {
        self.linger.clone()
    }

    /// When the connection's writes last found the socket full (for `RUNTIME_SEND_TIMEOUT`).
    pub fn clock(&self) -> WriteClock {
        self.clock.clone()
    }

    /// Notes on the clock whether a write went through or must wait for the client.
    fn timed(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &written {
            Poll::Pending => self.clock.blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.clock.moved(),
            Poll::Ready(_) => {}
        }
        written
    }

    /// The connection's queue of file regions (for [`use_sendfile`]).
    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// Writes the bytes that precede a placeholder (a response head) with `MSG_MORE`: the
    /// kernel keeps a partial segment for the file bytes the next write sends. The placeholder
    /// is always written next by the same flush, which ends the hold.
    fn poll_send_more(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(&self.inner).send_vectored_with_flags(bufs, libc::MSG_MORE | libc::MSG_NOSIGNAL)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_sendfile(&self, cx: &mut Context<'_>, placeholder: usize, len: usize) -> Poll<io::Result<usize>> {
        let claim = self.sink.claim(placeholder, len)?;
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                let mut offset = claim.offset as i64;
                nix::sys::sendfile::sendfile64(&self.inner, &*claim.file, Some(&mut offset), claim.len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Poll::Ready(Err(short_file())),
                Ok(n) => {
                    self.sink.advance(n);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = match placeholder_offset(buf) {
            Some(at) => self.poll_sendfile(cx, at, buf.len()),
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        };
        self.timed(written)
    }

    /// Writes the slices before the first placeholder with one `sendmsg` (`MSG_MORE`: they wait
    /// for the file's bytes), or, when a placeholder comes first, sends its file bytes; the
    /// caller comes back for the rest.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().position(|b| placeholder_offset(b).is_some());
        let written = match first {
            Some(0) => {
                let at = placeholder_offset(&bufs[0]).unwrap_or_default();
                self.poll_sendfile(cx, at, bufs[0].len())
            }
            Some(i) => self.poll_send_more(cx, &bufs[..i]),
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        };
        self.timed(written)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        self.shut = shut.is_ok();
        Poll::Ready(shut)
    }
}

impl Drop for Stream {
    /// After an orderly close, lingers while the client is still sending a body; a connection
    /// closed at once (the exit's deadline, a client that stopped reading) does not.
    fn drop(&mut self) {
        if self.shut {
            linger::after_close(&self.inner, &self.linger, self.permit.take());
        }
    }
}

/// Replace the body of a response a static site marked with a [`FileRegion`] by placeholders
/// sent with `sendfile` — on HTTP/1.x only (HTTP/2 frames the bytes itself), and only when the
/// body is still the one the site made: the same exact length as the region and as
/// `Content-Length` (a hook that replaced or reframed it keeps its own body). The mark is
/// removed either way.
pub fn use_sendfile(sink: &Sink, version: Version, head: bool, resp: &mut Response<Body>) {
    let Some(region) = resp.extensions_mut().remove::<FileRegion>() else { return };
    if !matches!(version, Version::HTTP_11 | Version::HTTP_10) || head {
        return;
    }
    let declared = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body_len = resp.body().size_hint().exact();
    if declared == Some(region.len) && body_len == Some(region.len) && region.len > 0 {
        *resp.body_mut() = sink.body(region);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use marina_core::zerocopy::FileRegion;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// The head written before a file region waits in the kernel for the file's first bytes
    /// (`MSG_MORE`), so that they share segments. Before, on loopback, the head reached the
    /// client on its own as soon as it was written (and the file's bytes trailed behind in
    /// small pieces sent from the client's ACKs).
    #[tokio::test]
    async fn a_head_before_a_file_waits_for_the_file_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A plain socket: its reads are system calls, not tokio's cached readiness.
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        let mut stream = Stream::new(server);

        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        let region = FileRegion { file: Arc::new(file), offset: 0, len: data.len() as u64 };
        let mut body = stream.sink().body(region);
        let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 4096\r\n\r\n";

        let n = stream.write_vectored(&[IoSlice::new(head), IoSlice::new(&chunk)]).await.unwrap();
        assert_eq!(n, head.len(), "the head alone is written first");
        let mut buf = vec![0u8; 16 * 1024];
        let early = client.read(&mut buf);
        assert!(
            matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the head reached the client before the file's bytes: {early:?}"
        );

        stream.write_all(&chunk).await.unwrap();
        stream.flush().await.unwrap();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < head.len() + data.len() {
            assert!(std::time::Instant::now() < deadline, "only {} bytes arrived", got.len());
            match client.read(&mut buf) {
                Ok(0) => panic!("closed after {} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                Err(e) => panic!("read failed: {e}"),
            }
        }
        assert_eq!(&got[..head.len()], head);
        assert_eq!(&got[head.len()..], &data[..]);
    }
}
