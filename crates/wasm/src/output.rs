//! A guest's stdout and stderr: into marina's log as the process kinds' output goes (tagged
//! lines cut at [`MAX_LINE`](marina_workers::output::MAX_LINE) bytes, a rate limit per worker,
//! dropped lines counted in `/api/workers`), never to marina's own stdout. Writes are taken
//! whole and at once, so a guest that prints without end costs CPU within its deadline but
//! no memory: at most one line per stream is held.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use marina_workers::output::{LineWriter, Output};
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much a guest may write in one call (wasi:io's `check-write` permit).
const PERMIT: usize = 64 * 1024;

/// The two streams of one worker (every instance of it, over its life).
#[derive(Clone)]
pub(crate) struct GuestOutput {
    out: Output,
    stdout: Arc<Mutex<LineWriter>>,
    stderr: Arc<Mutex<LineWriter>>,
}

impl GuestOutput {
    pub fn new(app: &str, worker: &str) -> Self {
        let out = Output::new(app, worker);
        Self {
            stdout: Arc::new(Mutex::new(LineWriter::new(out.clone(), "stdout", None))),
            stderr: Arc::new(Mutex::new(LineWriter::new(out.clone(), "stderr", None))),
            out,
        }
    }

    /// The guest's stdout, for a store's WASI context.
    pub fn stdout(&self) -> Stream {
        Stream(self.stdout.clone())
    }

    /// The guest's stderr, for a store's WASI context.
    pub fn stderr(&self) -> Stream {
        Stream(self.stderr.clone())
    }

    /// Lines not logged because of the rate limit.
    pub fn dropped(&self) -> u64 {
        self.out.dropped.load(Ordering::Relaxed)
    }

    /// The worker is gone: logs what is left of a last unfinished line.
    pub fn finish(&self) {
        self.stdout.lock().finish();
        self.stderr.lock().finish();
    }
}

/// One stream, as WASI sees it (both the wasi:io stream of WASI 0.2 and the async writer of
/// WASI 0.3 come from it).
#[derive(Clone)]
pub(crate) struct Stream(Arc<Mutex<LineWriter>>);

impl IsTerminal for Stream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Stream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.lock().write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.lock().write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
