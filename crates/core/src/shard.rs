//! Which connection thread the caller runs on, for state that belongs to one thread's I/O.
//!
//! With `RUNTIME_SCHEDULER=per-thread`, marina serves connections on several single-threaded
//! tokio runtimes, each with its own I/O driver. A socket is registered with the driver of the
//! runtime that opened it, so a keep-alive connection to a worker opened on one thread and used
//! by a request on another would have every readiness event cross threads (the other thread
//! wakes, then wakes the request's thread). Pools of such connections keep one stack per shard.
//! Threads that are not connection threads (the shared runtime's workers) are shard 0.

use std::cell::Cell;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's shard: 0, or the 1-based index of a connection thread.
pub fn current() -> usize {
    SHARD.with(Cell::get)
}

/// Marks the calling thread as connection thread `index` (1-based); called once, as it starts.
pub fn enter(index: usize) {
    SHARD.with(|s| s.set(index));
}
