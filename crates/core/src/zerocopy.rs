//! Zero-copy file bodies for plain HTTP/1.1 responses (`sendfile(2)` from the page cache).
//!
//! hyper writes a response from user-space buffers, so a static file is copied into the
//! socket byte by byte; nginx hands the kernel the file instead. hyper has no hook for that,
//! but with vectored writes it passes the body's `Bytes` to the connection's `write_vectored`
//! untouched (it queues them, it does not copy them). So a file body is sent as *placeholder*
//! chunks: slices of one static, never-written, all-zero region ([`SENTINEL`]). The
//! connection's writer recognises a placeholder by its address and, for exactly those bytes,
//! calls `sendfile` on the file the body registered in the connection's [`Sink`] when it
//! yielded the chunk. Headers and every other body are written as usual.
//!
//! Only the server decides to use it, at the very end of a request, for a response that a
//! static site marked with a [`FileRegion`] (and only on HTTP/1.x, after every hook ran): the
//! bytes that hooks and HTTP/2 see are always the real ones, read from the file
//! ([`FileRegion::read_body`]). The writer checks that each placeholder it meets is the next
//! one its sink expects and fails the connection otherwise: a mix-up can cost a connection,
//! never send wrong bytes silently.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::body::Body;

/// Size of the placeholder region: the largest chunk one placeholder frame stands for.
pub const SENTINEL_LEN: usize = 1 << 20;

/// The placeholder region. All zeros, so it lives in `.bss` and costs no memory until read,
/// which nothing does: its bytes are never sent.
static SENTINEL: [u8; SENTINEL_LEN] = [0; SENTINEL_LEN];

/// Where `slice` starts inside the placeholder region, if it lies in it.
pub fn placeholder_offset(slice: &[u8]) -> Option<usize> {
    let base = SENTINEL.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    (!slice.is_empty() && at >= base && at + slice.len() <= base + SENTINEL_LEN).then(|| at - base)
}

/// A byte range of an open file, the body of a response that may be sent with `sendfile`.
/// A static site puts it in the response's extensions next to a body that reads the same
/// bytes from the file and reports their exact length as its size hint.
#[derive(Debug, Clone)]
pub struct FileRegion {
    /// The open file (shared: reads are positional, so any number of responses may use it).
    pub file: Arc<File>,
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

/// The error for a file that ends before the bytes its response announced.
pub fn short_file() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the file is shorter than the response announced")
}

/// One file region queued on a connection: placeholder bytes stand for it on the wire.
#[derive(Debug)]
struct Job {
    file: Arc<File>,
    /// File offset of the region's first byte.
    offset: u64,
    len: u64,
    /// Bytes already sent.
    sent: u64,
}

/// A connection's queue of file regions, in the order their placeholders will be written.
/// The body side pushes ([`Sink::body`]), the connection's writer claims and advances.
#[derive(Debug, Clone, Default)]
pub struct Sink(Arc<Mutex<VecDeque<Job>>>);

/// What the writer should send for a placeholder slice: `len` bytes of `file` from `offset`.
#[derive(Debug)]
pub struct Claim {
    /// The file.
    pub file: Arc<File>,
    /// Where to read from.
    pub offset: u64,
    /// At most this many bytes (the rest of the slice).
    pub len: usize,
}

impl Sink {
    /// A body standing for `region` on this connection: placeholder chunks of up to
    /// [`SENTINEL_LEN`] bytes, each registering its part of the file as it is yielded.
    pub fn body(&self, region: FileRegion) -> Body {
        crate::body::boxed(PlaceholderBody { sink: self.clone(), region, yielded: 0 })
    }

    /// The file bytes a placeholder slice (at `placeholder` in the region, `len` bytes long)
    /// stands for. It must be the next unsent part of the oldest queued region.
    ///
    /// # Errors
    /// `InvalidData` when it is not: the connection must then be closed.
    pub fn claim(&self, placeholder: usize, len: usize) -> io::Result<Claim> {
        let jobs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mismatch = || io::Error::new(io::ErrorKind::InvalidData, "zero-copy body out of step with its writer");
        let job = jobs.front().ok_or_else(mismatch)?;
        // Each job's placeholder starts at the region's start; a partial write resumes inside it.
        if placeholder as u64 != job.sent || (len as u64) > job.len - job.sent {
            return Err(mismatch());
        }
        Ok(Claim { file: job.file.clone(), offset: job.offset + job.sent, len })
    }

    /// Record that `n` bytes of the oldest region were sent.
    pub fn advance(&self, n: usize) {
        let mut jobs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.front_mut() {
            job.sent += n as u64;
            if job.sent >= job.len {
                jobs.pop_front();
            }
        }
    }

    /// Regions queued and not fully sent (0 between responses).
    pub fn pending(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn push(&self, job: Job) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(job);
    }
}

struct PlaceholderBody {
    sink: Sink,
    region: FileRegion,
    yielded: u64,
}

impl http_body::Body for PlaceholderBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let left = self.region.len - self.yielded;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = (left as usize).min(SENTINEL_LEN);
        let job =
            Job { file: self.region.file.clone(), offset: self.region.offset + self.yielded, len: n as u64, sent: 0 };
        self.sink.push(job);
        self.yielded += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&SENTINEL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.yielded == self.region.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.region.len - self.yielded)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    fn region(len: u64) -> FileRegion {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; len as usize]).unwrap();
        FileRegion { file: Arc::new(f), offset: 0, len }
    }

    #[test]
    fn placeholders_are_recognised_by_address_only() {
        assert_eq!(placeholder_offset(&SENTINEL[10..20]), Some(10));
        assert_eq!(placeholder_offset(&[0u8; 16]), None);
        assert_eq!(placeholder_offset(&SENTINEL[..0]), None);
    }

    #[tokio::test]
    async fn placeholder_frames_are_claimed_in_order_and_resume_after_partial_writes() {
        let sink = Sink::default();
        let len = SENTINEL_LEN as u64 + 100;
        let mut body = sink.body(region(len));
        assert_eq!(body.size_hint().exact(), Some(len));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!((first.len(), sink.pending()), (SENTINEL_LEN, 1));
        let at = placeholder_offset(&first).unwrap();
        let c = sink.claim(at, 4096).unwrap();
        assert_eq!((c.offset, c.len), (0, 4096));
        sink.advance(4096);
        // The writer comes back with the rest of the same slice.
        let rest = &first[4096..];
        let c = sink.claim(placeholder_offset(rest).unwrap(), rest.len()).unwrap();
        assert_eq!(c.offset, 4096);
        // A slice that is not the next unsent part is refused.
        assert!(sink.claim(0, 10).is_err());
        sink.advance(rest.len());
        assert_eq!(sink.pending(), 0);
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second.len(), 100);
        let c = sink.claim(placeholder_offset(&second).unwrap(), 100).unwrap();
        assert_eq!(c.offset, SENTINEL_LEN as u64);
        assert!(sink.claim(0, 101).is_err(), "longer than the region");
        sink.advance(100);
        assert!(body.frame().await.is_none());
        assert!(sink.claim(0, 1).is_err(), "nothing queued");
    }
}
