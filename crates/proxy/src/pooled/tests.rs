//! The pool's own rules, over real socket pairs: an upstream's end that nothing serves, since
//! these tests only look at whether the pool keeps, hands out or closes a connection (the
//! upstream's end sees a close as end of file).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::{Conn, Pool};

type Io = TokioIo<UnixStream>;

/// A client connection and the upstream's end of it.
async fn conn() -> (Conn<Io>, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (Conn::handshake(TokioIo::new(ours)).await.unwrap(), theirs)
}

/// Waits (10 s at most) until the upstream's end sees its connection closed.
async fn closed(peer: &mut UnixStream, which: &str) {
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut buf)).await;
    let n = read.unwrap_or_else(|_| panic!("{which} was not closed within 10 s")).unwrap();
    assert_eq!(n, 0, "{which} sent {n} bytes where a close was expected");
}

/// Whether the upstream's end still sees its connection open: nothing to read, and no end.
fn open(peer: &UnixStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(peer.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn take_skips_a_connection_the_upstream_closed() {
    let pool = Arc::new(Pool::new(4, None));
    let (a, mut peer_a) = conn().await;
    let (b, peer_b) = conn().await;
    // Recycled as a response's end does it (settled, then put back); `b` is on top.
    pool.recycle(a);
    pool.recycle(b);
    assert_eq!(pool.idle(), 2, "both connections are idle and open, so both are pooled");
    drop(peer_b); // the upstream closes the one `take` would hand out first
    // The close is in the kernel now (a socket pair's close is synchronous), but tokio learns of
    // it when its I/O driver next runs, which one turn of this single-threaded runtime does;
    // under any traffic the driver runs before a request is even read.
    tokio::task::yield_now().await;
    let taken = pool.take().expect("the connection that is still open is handed out");
    assert_eq!(pool.idle(), 0, "the closed connection was skipped (dropped), and the open one taken");
    assert!(open(&peer_a));
    drop(taken);
    closed(&mut peer_a, "the connection handed out").await;
}
