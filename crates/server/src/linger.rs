//! Lingering close (nginx's `lingering_close`). A connection that hyper closes while the client
//! is still sending (a request body answered before it was read: 413 past `maxBodySize`, 401,
//! 404) would, on `close(2)` with unread bytes in the socket or bytes still arriving, make the
//! kernel answer with RST, and a client that writes its whole body before it reads (Python's
//! `http.client`, most simple clients) gets "broken pipe" or "connection reset" instead of the
//! answer that was already sent. So after hyper has shut the connection's write side (the
//! answer and the FIN are out), what the client still sends is read and dropped until it
//! closes too, stalls for [`READ_WAIT`], or [`LINGER_TIME`] passes, and only then is the socket
//! closed.
//!
//! It is only done when a response said `Connection: close` because the request body was not
//! read to its end ([`Linger::request`]): not for a connection closed for misbehaving (an
//! HTTP/2 rapid reset or flood ends in GOAWAY with the flood still arriving, and lingering
//! would go on reading it). The lingering socket keeps its place in `RUNTIME_MAX_CONNECTIONS`
//! until it is closed, so a client cannot open lingering sockets without bound.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// How long the client may go silent before the lingering socket is closed (nginx's
/// `lingering_timeout` is 5 s).
const READ_WAIT: Duration = Duration::from_secs(2);
/// The most time a closed connection lingers (nginx's `lingering_time` is 30 s; a body that
/// takes longer than this to finish is cut with RST, as it would be without lingering).
const LINGER_TIME: Duration = Duration::from_secs(10);

/// Set by the request side when the client is known to be still sending.
#[derive(Clone, Default)]
pub struct Linger(Arc<AtomicBool>);

impl Linger {
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Called as a connection whose write side hyper shut is dropped: when the client is still
/// sending a body, a duplicate of the socket is kept open and drained on the current runtime, holding
/// `permit`, until the client closes, stalls or [`LINGER_TIME`] passes.
pub fn after_close(stream: &TcpStream, linger: &Linger, permit: Option<OwnedSemaphorePermit>) {
    if !linger.requested() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    // The duplicate shares the socket (and its non-blocking mode); the socket is closed when
    // both descriptors are.
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else { return };
    let socket = std::net::TcpStream::from(fd);
    runtime.spawn(async move {
        let _permit = permit;
        let Ok(socket) = TcpStream::from_std(socket) else { return };
        let _ = tokio::time::timeout(LINGER_TIME, drain(&socket)).await;
    });
}

/// Reads and drops until the client closes, fails, or sends nothing for [`READ_WAIT`].
async fn drain(socket: &TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(READ_WAIT, socket.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        match socket.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// The server answers and closes while the client is still writing 8 MiB; with lingering the
    /// client finishes writing and reads the answer; without, its write fails with a reset.
    async fn exchange(linger: bool) -> Result<String, std::io::Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await.unwrap();
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            s.shutdown().await.unwrap();
            let flag = Linger::default();
            if linger {
                flag.request();
            }
            after_close(&s, &flag, None);
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let body = vec![b'x'; 8 << 20];
        c.write_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 8388608\r\n\r\n").await?;
        server.await.unwrap();
        c.write_all(&body).await?;
        let mut answer = String::new();
        c.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_client_still_sending_gets_the_answer() {
        let answer = exchange(true).await.expect("the client's writes and read succeed");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    #[tokio::test]
    async fn without_lingering_the_client_is_reset() {
        // The control: the same exchange fails when the socket is simply closed.
        assert!(exchange(false).await.is_err());
    }

    #[tokio::test]
    async fn a_silent_client_is_let_go_after_the_read_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = permits.clone().try_acquire_owned().unwrap();
        let flag = Linger::default();
        flag.request();
        after_close(&s, &flag, Some(permit));
        drop(s);
        let started = Instant::now();
        // The lingering socket holds its connection slot until it closes.
        assert_eq!(permits.available_permits(), 0);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)));
        assert!(started.elapsed() >= READ_WAIT - Duration::from_millis(100));
        let deadline = Instant::now() + Duration::from_secs(5);
        while permits.available_permits() == 0 {
            assert!(Instant::now() < deadline, "the slot is given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
