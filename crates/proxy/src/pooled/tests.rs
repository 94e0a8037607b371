//! The pool's own rules, over real socket pairs: an upstream's end that nothing serves, since
//! these tests only look at whether the pool keeps, hands out or closes a connection (the
//! upstream's end sees a close as end of file).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Waits until `deadline` has passed, by the same clock the pool stamps connections with.
async fn past(deadline: Instant) {
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

#[tokio::test]
async fn a_pool_of_max_idle_zero_keeps_nothing() {
    let pool = Arc::new(Pool::new(0, Some(Duration::from_secs(60))));
    let (a, mut peer) = conn().await;
    pool.recycle(a);
    assert_eq!(pool.idle(), 0);
    assert!(pool.take().is_none());
    closed(&mut peer, "the connection put back into a pool of max_idle 0").await;
}

#[tokio::test]
async fn a_connection_idle_past_its_expiry_is_not_handed_out() {
    // The same steps with a long expiry hand the connection out: what differs below is its age.
    let fresh = Arc::new(Pool::new(4, Some(Duration::from_secs(60))));
    let (a, peer_a) = conn().await;
    fresh.recycle(a);
    assert!(fresh.take().is_some(), "a connection within its idle time is handed out");
    drop(peer_a);

    const IDLE: Duration = Duration::from_millis(200);
    let pool = Arc::new(Pool::new(4, Some(IDLE)));
    let (b, mut peer_b) = conn().await;
    pool.recycle(b);
    let pooled_by = Instant::now(); // the pool's stamp is at or before this
    assert_eq!(pool.idle(), 1);
    past(pooled_by + IDLE).await;
    assert!(pool.take().is_none(), "a connection idle for longer than {IDLE:?} was handed out");
    assert_eq!(pool.idle(), 0);
    closed(&mut peer_b, "the expired connection").await;
}

#[tokio::test]
async fn putting_a_connection_back_drops_the_expired_ones_under_it() {
    const IDLE: Duration = Duration::from_millis(200);
    let pool = Arc::new(Pool::new(4, Some(IDLE)));
    let (a, mut peer_a) = conn().await;
    pool.recycle(a);
    let pooled_by = Instant::now();
    past(pooled_by + IDLE).await;
    let (b, peer_b) = conn().await;
    pool.recycle(b);
    // No `take` in between: a LIFO pool under steady traffic never reaches its bottom.
    assert_eq!(pool.idle(), 1, "the expired connection at the bottom is dropped when another is put back");
    closed(&mut peer_a, "the expired connection").await;
    assert!(open(&peer_b), "the connection just put back was closed");
}

#[tokio::test]
async fn a_full_pool_drops_its_oldest_connection() {
    let pool = Arc::new(Pool::new(2, None));
    let (a, mut peer_a) = conn().await;
    let (b, peer_b) = conn().await;
    let (c, peer_c) = conn().await;
    pool.recycle(a);
    pool.recycle(b);
    pool.recycle(c);
    assert_eq!(pool.idle(), 2, "a pool of max_idle 2 kept more");
    closed(&mut peer_a, "the oldest connection of a full pool").await;
    assert!(open(&peer_b) && open(&peer_c));
}

#[tokio::test]
async fn a_connection_is_only_taken_on_the_connection_thread_that_opened_it() {
    // Per-thread scheduling: a socket is registered with the I/O driver of the thread that
    // opened it, so another thread must open its own rather than take this one.
    let pool = Arc::new(Pool::new(4, None));
    marina_core::shard::enter(1);
    let (a, _peer) = conn().await;
    pool.recycle(a);
    assert_eq!(pool.idle(), 1);
    marina_core::shard::enter(2);
    assert!(pool.take().is_none(), "thread 2 was given thread 1's connection");
    assert_eq!(pool.idle(), 1, "looking did not drop it");
    marina_core::shard::enter(1);
    assert!(pool.take().is_some(), "thread 1 did not get its own connection back");
    marina_core::shard::enter(0);
}
