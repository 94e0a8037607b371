//! Per-thread scheduling (`RUNTIME_SCHEDULER=per-thread`): connections served on single-threaded
//! runtimes, one per thread, instead of on the shared work-stealing runtime.
//!
//! Why: on a small machine the shared runtime's threads hand work to each other. A request that
//! wakes on one thread often has its next step stolen by another, idle threads spin looking for
//! work before they sleep, and every hand-off is a wake-up of a sleeping thread (measured: 1.6–2.9
//! context switches per request to a JS app with two threads on 2 CPUs, and ~30% more CPU per static
//! request than one thread; BENCHMARKS.md, "One async thread on 2 CPUs"). Here a connection
//! stays on the thread it was given, with everything it starts (the hop to a worker, its
//! timers), and a thread sleeps only in its own `epoll_wait`. The cost is no stealing: a thread
//! busy with one slow request delays the other connections on it.
//!
//! The accept loop (on the main thread) hands each connection to the thread with the fewest
//! open connections. Work a request starts stays on its thread too: a worker process booted
//! for it is spawned, watched and its output read there. marina's own background work (the
//! reload watcher, the worker pool's housekeeping tick, plugins' timers) runs on the shared runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One connection thread: its runtime's handle and how many connections it serves.
struct Thread {
    handle: Handle,
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

/// The connection threads; stopped (their runtimes shut down) when dropped.
pub(crate) struct ConnThreads {
    threads: Vec<Thread>,
}

/// Held by a connection's task: counts the connection as open on its thread until dropped.
pub(crate) struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnThreads {
    /// Starts `n` connection threads.
    pub fn start(n: usize) -> std::io::Result<Self> {
        // Built into `this`, so that a failure half way stops the threads already started.
        let mut this = Self { threads: Vec::with_capacity(n) };
        // tokio's cap on blocking threads (512) is per runtime: split, so that N connection
        // threads cannot grow N times the shared runtime's ceiling under a flood of file reads.
        let blocking = (512 / n).max(8);
        for index in 1..=n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(blocking)
                // Its blocking threads (file reads, SQLite calls) run in this runtime's context:
                // a socket opened there would be this thread's, so they are in its shard too.
                .thread_name(format!("marina-blk-{index}"))
                .on_thread_start(move || marina_core::shard::enter(index))
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let join = std::thread::Builder::new().name(format!("marina-conn-{index}")).spawn(move || {
                marina_core::shard::enter(index);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // What is still running (a connection past the exit's deadline) is abandoned,
                // as on the shared runtime.
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?;
            this.threads.push(Thread { handle, open: Arc::default(), stop: Some(stop), join: Some(join) });
        }
        Ok(this)
    }

    /// How many threads serve connections.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// The thread with the fewest open connections, and the connection counted on it. A
    /// future spawned there must create its sockets when first polled (an async block does), so
    /// that they register with that thread's I/O driver.
    pub fn pick(&self) -> Option<(&Handle, Open)> {
        let thread = self.threads.iter().min_by_key(|t| t.open.load(Ordering::Relaxed))?;
        thread.open.fetch_add(1, Ordering::Relaxed);
        Some((&thread.handle, Open(thread.open.clone())))
    }
}

impl Drop for ConnThreads {
    fn drop(&mut self) {
        for t in &mut self.threads {
            drop(t.stop.take());
        }
        for t in &mut self.threads {
            if let Some(join) = t.join.take() {
                let _ = join.join();
            }
        }
    }
}
