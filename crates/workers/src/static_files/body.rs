//! Bodies of files too large to hold in memory, and the zero-copy mark.
//!
//! A file is opened once when its cache entry is loaded (the entry's stamp guards against
//! serving a replaced file for longer than the revalidation interval), and every response reads
//! it with positional reads: no `open` per request, any number of responses at once.
//! A response for a large enough region also carries a [`FileRegion`] in its extensions, so
//! that on plain HTTP/1.1 the server can send it with `sendfile(2)` instead (see
//! [`marina_core::zerocopy`]); the body here is what HTTP/2 and every hook see.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use marina_core::Body;
use marina_core::body::BoxError;
use marina_core::zerocopy::{FileRegion, short_file};

/// Read size of a file body.
const READ_CHUNK: usize = 64 * 1024;

/// The bytes of `region`, read in 64 KiB positional reads on the blocking pool (nothing
/// happens until the body is polled). A file that turns out shorter than the region ends the
/// body with an error, never with fewer bytes than announced. The size hint is exact.
pub(crate) fn read_body(region: &FileRegion) -> Body {
    let state = (region.file.clone(), region.offset, region.len);
    let stream = futures_util::stream::try_unfold(state, |(file, offset, left)| async move {
        if left == 0 {
            return Ok::<_, BoxError>(None);
        }
        let want = (left as usize).min(READ_CHUNK);
        let (file, buf) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let n = read_full_at(&file, &mut buf, offset)?;
            buf.truncate(n);
            Ok::<_, io::Error>((file, buf))
        })
        .await
        .map_err(|e| -> BoxError { Box::new(e) })??;
        if buf.is_empty() {
            return Err(short_file().into());
        }
        let n = buf.len() as u64;
        Ok(Some((Frame::data(Bytes::from(buf)), (file, offset + n, left - n))))
    });
    marina_core::body::boxed(Exact { inner: http_body_util::StreamBody::new(Box::pin(stream)), left: region.len })
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A body of known length that says so in its size hint (a stream body cannot know it).
struct Exact<B> {
    inner: B,
    left: u64,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Exact<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            this.left = this.left.saturating_sub(d.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Opens a file for a cache entry's lifetime.
pub(crate) fn open(path: &std::path::Path) -> io::Result<Arc<File>> {
    File::open(path).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn reads_the_region_and_fails_on_a_short_file() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let file = Arc::new(f);
        let body = read_body(&FileRegion { file: file.clone(), offset: 1000, len: 150_000 });
        assert_eq!(body.size_hint().exact(), Some(150_000));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], &data[1000..151_000]);
        let short = read_body(&FileRegion { file, offset: 150_000, len: 60_000 });
        assert!(short.collect().await.is_err(), "a file shorter than announced is an error");
    }
}
