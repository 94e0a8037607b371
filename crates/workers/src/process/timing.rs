//! How long each step of a worker start (and stop) took, logged at debug level under the one
//! target [`TARGET`] (`RUST_LOG=info,marina::worker_start=debug`; see docs/workers.md).
//!
//! The steps of a start, in order: `prepare` (its environment, dirs, cgroups and Landlock
//! ruleset, prepared in marina; `cgroup` and `landlock` are parts of it), `spawn` (`fork` to
//! `exec` as marina sees it, split by the child's own report into `fork`, `join` = joining the
//! cgroups, `confine` = ids, death signal and Landlock, and `exec`), then `ready` (the runtime
//! booted, imported the app and listens). The pool logs the first response and the stop.
//! Nothing is measured (not even the clock read) unless the target is enabled.

use std::time::{Duration, Instant};

use super::sandbox::{ChildTimes, monotonic_ns};

/// The tracing target of the per-step start and stop timing.
pub const TARGET: &str = "marina::worker_start";

/// Whether start timing is logged (the target is enabled at debug level).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// Microseconds, for log fields.
pub(crate) fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The steps of one start, filled in as it goes.
#[derive(Debug)]
pub(crate) struct StartTimes {
    begun: Instant,
    /// Preparing the start in marina: environment, dirs, cgroups, ruleset.
    pub prepare: Duration,
    /// Creating the cgroups and writing their limits (part of `jail`).
    pub cgroup: Duration,
    /// Building the Landlock ruleset (part of `jail`).
    pub landlock: Duration,
    /// `spawn` as marina sees it: from before `fork` until `exec` succeeded.
    pub spawn: Duration,
    /// The monotonic clock before `fork` and after `exec`, and the child's own report.
    pub child: Option<(u64, ChildTimes, u64)>,
}

impl StartTimes {
    pub fn new() -> Self {
        Self {
            begun: Instant::now(),
            prepare: Duration::ZERO,
            cgroup: Duration::ZERO,
            landlock: Duration::ZERO,
            spawn: Duration::ZERO,
            child: None,
        }
    }

    /// Logs the start once the worker is ready.
    pub fn log(&self, app: &str, worker: &str, pid: u32, ready: Duration) {
        let step = |a: u64, b: u64| b.saturating_sub(a) / 1000;
        let (fork, join, confine, exec) = match self.child {
            Some((before, c, after)) => (
                step(before, c.entered),
                step(c.entered, c.joined),
                step(c.joined, c.confined),
                step(c.confined, after),
            ),
            None => (0, 0, 0, 0),
        };
        tracing::debug!(
            target: TARGET,
            app, worker, pid,
            total_us = us(self.begun.elapsed()),
            prepare_us = us(self.prepare),
            cgroup_us = us(self.cgroup),
            landlock_us = us(self.landlock),
            spawn_us = us(self.spawn),
            fork_us = fork,
            join_us = join,
            confine_us = confine,
            exec_us = exec,
            ready_us = us(ready),
            "worker start steps"
        );
    }
}

/// The monotonic clock, in nanoseconds (the child's report is on the same clock).
pub(crate) fn now_ns() -> u64 {
    monotonic_ns()
}
