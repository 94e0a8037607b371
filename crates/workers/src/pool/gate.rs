//! The ephemeral gate: how many `ttl: 0` requests may run at once, and how many may wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use marina_core::Error;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `concurrency` holders at once, at most `queue_limit` waiting in FIFO order (tokio's
/// semaphore is fair); anyone beyond that is refused at once with 503 rather than queued
/// without bound.
#[derive(Debug)]
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    concurrency: usize,
    queue_limit: usize,
    waiting: AtomicUsize,
}

/// Decrements the waiting count even when the waiting request is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(concurrency: usize, queue_limit: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(concurrency)), concurrency, queue_limit, waiting: AtomicUsize::new(0) }
    }

    /// Requests running now.
    pub fn active(&self) -> usize {
        self.concurrency - self.slots.available_permits().min(self.concurrency)
    }

    /// Requests waiting now.
    pub fn pending(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// The most requests that may run at once.
    pub fn max_concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// Waits for a slot, or fails with `EPHEMERAL_WORKER_QUEUE_SATURATED` (503) when the queue is full.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Error> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if before >= self.queue_limit {
            return Err(Error::unavailable(
                "EPHEMERAL_WORKER_QUEUE_SATURATED",
                format!(
                    "Ephemeral worker queue is saturated: {} running and {} waiting (limits {} and {})",
                    self.active(),
                    before,
                    self.concurrency,
                    self.queue_limit
                ),
            )
            .with_data(json!({
                "active": self.active(),
                "maxConcurrency": self.concurrency,
                "maxQueue": self.queue_limit,
                "pending": before,
            })));
        }
        self.slots.clone().acquire_owned().await.map_err(|_| Error::shutting_down("the worker pool is shutting down"))
    }

    /// Refuses every waiter and future entry (shutdown).
    pub fn close(&self) {
        self.slots.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn admits_queues_then_refuses() {
        let gate = Arc::new(Gate::new(2, 1));
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        assert_eq!(gate.active(), 2);
        let g = gate.clone();
        let queued = tokio::spawn(async move { g.enter().await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(gate.pending(), 1);
        let err = gate.enter().await.unwrap_err();
        assert_eq!(err.code(), "EPHEMERAL_WORKER_QUEUE_SATURATED");
        assert_eq!(err.status(), 503);
        assert_eq!(err.data().unwrap()["pending"], 1);
        assert_eq!(err.data().unwrap()["maxConcurrency"], 2);
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), queued).await.unwrap().unwrap().unwrap();
        assert_eq!(gate.pending(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let gate = Gate::new(1, 5);
        let _a = gate.enter().await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), gate.enter()).await;
        assert!(r.is_err());
        assert_eq!(gate.pending(), 0);
    }
}
