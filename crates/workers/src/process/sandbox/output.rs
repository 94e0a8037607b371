//! A worker's stdout and stderr into marina's log, without letting the worker hurt marina.
//!
//! A worker is untrusted: it can print 200 MB without a newline, invalid UTF-8, or a million
//! lines a second. So lines are cut at [`MAX_LINE`] bytes (the rest of the line is skipped and
//! counted, never buffered), bytes are decoded lossily, the streams are always read to the end
//! (a worker never blocks on a full pipe or gets EPIPE because marina stopped reading), and a
//! per-worker rate limit (GCRA, the `governor` crate) drops lines past [`LINES_PER_SECOND`],
//! counting them and saying so in the log once the flood stops. The stderr tail kept for error
//! bodies is bounded in lines and bytes.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest line logged as is; longer ones are cut here and marked.
pub const MAX_LINE: usize = 16 * 1024;
/// How many lines a second one worker may log (both streams together) after its burst.
pub const LINES_PER_SECOND: u32 = 200;
/// How many lines a worker may log at once before the rate applies.
const BURST: u32 = 1000;
/// Lines kept in the stderr tail.
pub(crate) const TAIL_LINES: usize = 20;
/// Bytes kept of each tail line.
pub(crate) const TAIL_LINE_BYTES: usize = 2048;

/// The last lines a worker wrote to stderr, bounded by [`TAIL_LINES`] × [`TAIL_LINE_BYTES`].
#[derive(Debug, Default, Clone)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    pub fn push(&self, line: &str) {
        let mut t = self.0.lock();
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(truncate(line, TAIL_LINE_BYTES).to_string());
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().iter().cloned().collect()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The clock of every worker's line limiter. A new `quanta` clock probes the CPU with `cpuid`,
/// which in a virtual machine is a trap to the hypervisor: 55–114 µs for each worker's limiter
/// on the project's machine, on the start path of every `ttl: 0` request. Clones share the
/// probe's result.
static LIMITER_CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

/// What one worker's output goes through: its log tags, rate limit and drop counter.
#[derive(Clone)]
pub struct Output {
    app: Arc<str>,
    worker: Arc<str>,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// Lines not logged because of the rate limit, over the worker's life.
    pub dropped: Arc<AtomicU64>,
    pending_drops: Arc<AtomicU64>,
}

impl Output {
    /// The output of worker `worker` of app version `app` (the tags of its log lines).
    pub fn new(app: &str, worker: &str) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(LINES_PER_SECOND).expect("nonzero"))
            .allow_burst(NonZeroU32::new(BURST).expect("nonzero"));
        Self {
            app: app.into(),
            worker: worker.into(),
            limiter: Arc::new(RateLimiter::direct_with_clock(quota, LIMITER_CLOCK.clone())),
            dropped: Arc::default(),
            pending_drops: Arc::default(),
        }
    }

    /// Reads `stream` to its end, logging each line (and keeping stderr's tail when given).
    pub async fn pump(self, mut stream: impl AsyncRead + Unpin, name: &'static str, tail: Option<Tail>) {
        let mut buf = vec![0u8; 8 * 1024];
        let mut lines = LineWriter::new(self, name, tail);
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => lines.write(&buf[..n]),
            }
        }
        lines.finish();
    }

    fn emit(&self, bytes: &[u8], name: &'static str, tail: Option<&Tail>, whole: bool) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        if let Some(tail) = tail {
            tail.push(text);
        }
        if self.limiter.check().is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.pending_drops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.report_drops(name);
        let (app, worker) = (&*self.app, &*self.worker);
        if whole {
            tracing::info!(target: "marina::worker", app = %app, worker = %worker, stream = name, "{text}");
        } else {
            tracing::info!(target: "marina::worker", app = %app, worker = %worker, stream = name, "{text} …[line cut at {MAX_LINE} bytes]");
        }
    }

    fn report_drops(&self, name: &'static str) {
        let n = self.pending_drops.swap(0, Ordering::Relaxed);
        if n > 0 {
            let (app, worker) = (&*self.app, &*self.worker);
            tracing::warn!(
                target: "marina::worker", app = %app, worker = %worker, stream = name, dropped = n,
                "dropped {n} lines of worker output (more than {LINES_PER_SECOND} lines a second)"
            );
        }
    }
}

/// One stream of a worker cut into log lines as its bytes come: the state [`Output::pump`]
/// keeps between reads, usable by a kind whose output is pushed to marina rather than read from
/// a pipe (a WebAssembly guest's stdout). It holds at most one line ([`MAX_LINE`] bytes).
pub struct LineWriter {
    out: Output,
    name: &'static str,
    tail: Option<Tail>,
    line: Vec<u8>,
    /// Bytes of the current line skipped after the cut; > 0 means "cutting".
    skipped: u64,
}

impl LineWriter {
    /// Lines of stream `name` (`stdout`, `stderr`) through `out`, kept in `tail` when given.
    pub fn new(out: Output, name: &'static str, tail: Option<Tail>) -> Self {
        Self { out, name, tail, line: Vec::with_capacity(256), skipped: 0 }
    }

    /// Logs every line `chunk` completes; a partial line waits for the next write.
    pub fn write(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            let (part, rest, ends) = match newline {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            chunk = rest;
            if self.skipped > 0 {
                self.skipped += part.len() as u64;
            } else {
                let room = MAX_LINE - self.line.len();
                if part.len() > room {
                    self.line.extend_from_slice(&part[..room]);
                    self.skipped = (part.len() - room) as u64;
                    self.out.emit(&self.line, self.name, self.tail.as_ref(), false);
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if ends {
                if self.skipped > 0 {
                    self.skipped = 0;
                } else {
                    self.out.emit(&self.line, self.name, self.tail.as_ref(), true);
                    self.line.clear();
                }
            }
        }
    }

    /// The stream ended: logs the partial line left, and how many lines were dropped.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.out.emit(&self.line, self.name, self.tail.as_ref(), true);
            self.line.clear();
        }
        self.out.report_drops(self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded_in_lines_and_bytes() {
        let tail = Tail::default();
        for i in 0..100 {
            tail.push(&format!("{i}{}", "é".repeat(5000)));
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert!(lines.iter().all(|l| l.len() <= TAIL_LINE_BYTES), "a line is longer than the bound");
        assert!(lines[0].starts_with("80"), "{}", &lines[0][..10]);
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_invalid_utf8_replaced() {
        let out = Output::new("a@1", "w");
        let tail = Tail::default();
        let mut input = vec![b'x'; MAX_LINE * 10];
        input.extend_from_slice(b"\nok \xff\xfe done\nlast");
        out.clone().pump(&input[..], "stderr", Some(tail.clone())).await;
        let lines = tail.lines();
        assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(|l| l.len()).collect::<Vec<_>>());
        assert_eq!(lines[0].len(), TAIL_LINE_BYTES);
        assert_eq!(lines[1], "ok \u{fffd}\u{fffd} done");
        assert_eq!(lines[2], "last");
        assert_eq!(out.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_bound_is_not_cut() {
        let out = Output::new("a@1", "w");
        let tail = Tail::default();
        let mut input = vec![b'y'; MAX_LINE];
        input.extend_from_slice(b"\nnext\n");
        out.pump(&input[..], "stderr", Some(tail.clone())).await;
        assert_eq!(tail.lines().len(), 2);
        assert_eq!(tail.lines()[1], "next");
    }

    #[test]
    fn a_new_output_does_not_probe_the_cpu_again() {
        let _ = Output::new("a@1", "w");
        let started = std::time::Instant::now();
        for i in 0..1000 {
            std::hint::black_box(Output::new("a@1", &i.to_string()));
        }
        // With a clock of its own each took 55-114 µs in a VM (55-114 ms for these 1000); with the
        // shared clock they take microseconds together. The bound leaves room for a loaded machine.
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(30), "1000 outputs took {took:?}");
    }

    #[tokio::test]
    async fn a_flood_is_rate_limited_and_counted() {
        let out = Output::new("a@1", "w");
        let input = "line\n".repeat(5000);
        out.clone().pump(input.as_bytes(), "stdout", None).await;
        let dropped = out.dropped.load(Ordering::Relaxed);
        assert!(dropped >= 3000, "only {dropped} of 5000 lines dropped");
        assert!(dropped < 5000, "every line dropped");
    }
}
