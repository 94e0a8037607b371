//! Where `marina serve` writes its log: stderr, through one shared buffer.
//!
//! At `info` every request writes an access line; unbuffered, each line is a `write(2)` of its
//! own (~10% of static-file throughput on two cores). Lines are instead appended to a buffer
//! under a short lock and written out in one call when it holds [`FLUSH_AT`] bytes, by a
//! background thread at most [`FLUSH_EVERY`] after a line was appended, and by [`flush`] when
//! `marina serve` returns and when anything panics, so no line is lost on a normal or
//! panicking exit. (A SIGKILL loses at most the last [`FLUSH_EVERY`] of lines.)
//!
//! One buffer for all threads keeps lines whole and in order. A writer thread fed through a
//! channel per line was measured slower on two cores (a wake-up per line); here a line costs a
//! lock and a copy, and the thread wakes a few times a second at most.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Write out once the buffer holds this much.
const FLUSH_AT: usize = 32 * 1024;
/// The longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Most bytes kept while stderr refuses them (a full pipe whose reader is gone): beyond this,
/// lines are dropped rather than memory grown.
const MAX_PENDING: usize = 8 * 1024 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        // The flusher: sleeps, and writes out what accumulated.
        let _ = std::thread::Builder::new().name("marina-log".into()).spawn(|| {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            }
        });
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
        Shared { buf: Mutex::new(Vec::with_capacity(2 * FLUSH_AT)) }
    })
}

fn lock(s: &Shared) -> MutexGuard<'_, Vec<u8>> {
    s.buf.lock().unwrap_or_else(|p| p.into_inner())
}

/// Write every buffered line to stderr now.
pub fn flush() {
    if let Some(s) = SHARED.get() {
        write_out(&mut lock(s));
    }
}

fn write_out(buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let mut err = io::stderr().lock();
    let mut done = 0;
    while done < buf.len() {
        match err.write(&buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    buf.drain(..done);
    if buf.len() > MAX_PENDING {
        buf.clear();
    }
}

/// The `MakeWriter` for tracing-subscriber: stderr, buffered as the module docs say.
#[derive(Clone, Copy, Default)]
pub struct BufferedStderr;

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter(shared())
    }
}

/// Appends what tracing formatted (a whole line per `write_all`) to the shared buffer.
pub struct LineWriter(&'static Shared);

/// Appends whole lines to the shared buffer (the access log's own writer, [`crate::accesslog`]).
pub fn append(lines: &[u8]) {
    append_to(shared(), lines);
}

fn append_to(s: &Shared, data: &[u8]) {
    let mut buf = lock(s);
    buf.extend_from_slice(data);
    if buf.len() >= FLUSH_AT {
        write_out(&mut buf);
    }
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        append_to(self.0, data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_whole_and_in_order_until_flushed() {
        let mut w = BufferedStderr.make_writer();
        w.write_all(b"first line\n").unwrap();
        w.write_all(b"second line\n").unwrap();
        {
            let buf = lock(shared());
            let text = String::from_utf8_lossy(&buf);
            let (a, b) = (text.find("first line\n").unwrap(), text.find("second line\n").unwrap());
            assert!(a < b);
        }
        flush();
        assert!(lock(shared()).is_empty());
    }
}
