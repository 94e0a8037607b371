//! The ephemeral gate: how many `ttl: 0` requests may run at once, how many may wait, and who
//! goes next.
//!
//! At most `concurrency` requests hold a slot; at most `queue_limit` wait. A freed slot goes to
//! the app with the fewest running requests that has someone waiting (first come, first served
//! within an app), so one app's `ttl: 0` traffic cannot keep every slot from the others: another
//! app's request gets the next slot that frees, however many the busy app has queued. Likewise an
//! app with nobody waiting may always queue one request, even when the others filled the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use marina_core::Error;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::oneshot;

#[derive(Debug)]
pub(crate) struct Gate {
    state: Arc<Mutex<State>>,
    concurrency: usize,
    queue_limit: usize,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    running: usize,
    waiting: usize,
    seq: u64,
    apps: HashMap<Arc<str>, AppQueue>,
}

#[derive(Debug, Default)]
struct AppQueue {
    running: usize,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    /// A send means: the slot is yours (already counted as running for this app).
    grant: oneshot::Sender<()>,
}

/// A held slot; dropping it frees the slot for the next waiter.
#[derive(Debug)]
pub(crate) struct Permit {
    state: Arc<Mutex<State>>,
    app: Arc<str>,
    concurrency: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.state.lock();
        st.release(&self.app);
        st.grant_next(self.concurrency);
    }
}

impl State {
    fn release(&mut self, app: &Arc<str>) {
        self.running -= 1;
        if let Some(q) = self.apps.get_mut(app) {
            q.running -= 1;
            if q.running == 0 && q.waiters.is_empty() {
                self.apps.remove(app);
            }
        }
    }

    /// Hands free slots to waiters: the app running the fewest first, then the oldest waiter.
    fn grant_next(&mut self, concurrency: usize) {
        while self.running < concurrency && !self.closed {
            let next = self
                .apps
                .iter()
                .filter_map(|(name, q)| q.waiters.front().map(|w| (q.running, w.seq, name.clone())))
                .min_by_key(|(running, seq, _)| (*running, *seq));
            let Some((_, _, name)) = next else { return };
            let q = self.apps.get_mut(&name).expect("picked from the map");
            let w = q.waiters.pop_front().expect("has a front waiter");
            self.waiting -= 1;
            if w.grant.send(()).is_ok() {
                q.running += 1;
                self.running += 1;
            } else if q.running == 0 && q.waiters.is_empty() {
                self.apps.remove(&name);
            }
        }
    }

    /// A waiter that gave up (its request was cancelled) leaves the queue.
    fn forget(&mut self, app: &Arc<str>, seq: u64) {
        if let Some(q) = self.apps.get_mut(app)
            && let Some(i) = q.waiters.iter().position(|w| w.seq == seq)
        {
            q.waiters.remove(i);
            self.waiting -= 1;
            if q.running == 0 && q.waiters.is_empty() {
                self.apps.remove(app);
            }
        }
    }
}

/// Takes a waiter out of the queue when its request is cancelled, and gives back a slot it was
/// granted but never took.
struct Waiting {
    state: Arc<Mutex<State>>,
    app: Arc<str>,
    seq: u64,
    rx: Option<oneshot::Receiver<()>>,
    concurrency: usize,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut st = self.state.lock();
        rx.close();
        if rx.try_recv().is_ok() {
            st.release(&self.app);
            st.grant_next(self.concurrency);
        } else {
            st.forget(&self.app, self.seq);
        }
    }
}

impl Gate {
    pub fn new(concurrency: usize, queue_limit: usize) -> Self {
        Self { state: Arc::default(), concurrency, queue_limit }
    }

    /// Requests running now.
    pub fn active(&self) -> usize {
        self.state.lock().running
    }

    /// Requests waiting now.
    pub fn pending(&self) -> usize {
        self.state.lock().waiting
    }

    /// The most requests that may run at once.
    pub fn max_concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// Waits for a slot for `app`, or fails with `EPHEMERAL_WORKER_QUEUE_SATURATED` (503) when
    /// the queue is full, or `SHUTTING_DOWN` once the gate is closed.
    pub async fn enter(&self, app: &str) -> Result<Permit, Error> {
        let app: Arc<str> = Arc::from(app);
        let permit = |app: Arc<str>| Permit { state: self.state.clone(), app, concurrency: self.concurrency };
        let (seq, rx) = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(closed());
            }
            if st.running < self.concurrency {
                st.running += 1;
                st.apps.entry(app.clone()).or_default().running += 1;
                return Ok(permit(app));
            }
            let (active, waiting) = (st.running, st.waiting);
            let queued_here = st.apps.get(&app).map_or(0, |q| q.waiters.len());
            if waiting >= self.queue_limit && queued_here > 0 {
                return Err(Error::unavailable(
                    "EPHEMERAL_WORKER_QUEUE_SATURATED",
                    format!(
                        "Ephemeral worker queue is saturated: {active} running and {waiting} waiting (limits {} and {})",
                        self.concurrency, self.queue_limit
                    ),
                )
                .with_data(json!({
                    "active": active,
                    "maxConcurrency": self.concurrency,
                    "maxQueue": self.queue_limit,
                    "pending": waiting,
                })));
            }
            st.seq += 1;
            let seq = st.seq;
            let (tx, rx) = oneshot::channel();
            st.apps.entry(app.clone()).or_default().waiters.push_back(Waiter { seq, grant: tx });
            st.waiting += 1;
            (seq, rx)
        };
        let mut waiting =
            Waiting { state: self.state.clone(), app: app.clone(), seq, rx: Some(rx), concurrency: self.concurrency };
        let granted = waiting.rx.as_mut().expect("set above").await;
        waiting.rx = None;
        match granted {
            Ok(()) => Ok(permit(app)),
            Err(_) => Err(closed()),
        }
    }

    /// Refuses every waiter and future entry (shutdown).
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.waiting = 0;
        for q in st.apps.values_mut() {
            q.waiters.clear();
        }
    }
}

fn closed() -> Error {
    Error::shutting_down("the worker pool is shutting down")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn admits_queues_then_refuses() {
        let gate = Arc::new(Gate::new(2, 1));
        let a = gate.enter("a").await.unwrap();
        let _b = gate.enter("a").await.unwrap();
        assert_eq!(gate.active(), 2);
        let g = gate.clone();
        let queued = tokio::spawn(async move { g.enter("a").await.map(drop) });
        settle().await;
        assert_eq!(gate.pending(), 1);
        let err = gate.enter("a").await.unwrap_err();
        assert_eq!(err.code(), "EPHEMERAL_WORKER_QUEUE_SATURATED");
        assert_eq!(err.status(), 503);
        assert_eq!(err.data().unwrap()["pending"], 1);
        assert_eq!(err.data().unwrap()["maxConcurrency"], 2);
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), queued).await.unwrap().unwrap().unwrap();
        assert_eq!(gate.pending(), 0);
        assert_eq!(gate.active(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let gate = Gate::new(1, 5);
        let a = gate.enter("a").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), gate.enter("a")).await;
        assert!(r.is_err());
        assert_eq!(gate.pending(), 0);
        drop(a);
        assert_eq!(gate.active(), 0, "no slot leaked to the cancelled waiter");
        let _again = tokio::time::timeout(Duration::from_secs(1), gate.enter("a")).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_next_slot_goes_to_the_app_running_fewest_not_the_longest_queue() {
        let gate = Arc::new(Gate::new(2, 100));
        let a1 = gate.enter("busy").await.unwrap();
        let _a2 = gate.enter("busy").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..5 {
            let (g, tx) = (gate.clone(), tx.clone());
            tokio::spawn(async move {
                let p = g.enter("busy").await.unwrap();
                tx.send(format!("busy{i}")).unwrap();
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(p);
            });
            settle().await;
        }
        let (g, tx2) = (gate.clone(), tx.clone());
        tokio::spawn(async move {
            let _p = g.enter("other").await.unwrap();
            tx2.send("other".to_string()).unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        settle().await;
        assert_eq!(gate.pending(), 6);
        drop(a1);
        let first = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.unwrap().unwrap();
        assert_eq!(first, "other", "the app with nothing running goes before the busy app's queue");
    }

    #[tokio::test]
    async fn an_app_with_nobody_waiting_may_queue_past_a_full_queue() {
        let gate = Arc::new(Gate::new(1, 1));
        let _a = gate.enter("busy").await.unwrap();
        let g = gate.clone();
        let _queued = tokio::spawn(async move { g.enter("busy").await.map(drop) });
        settle().await;
        assert_eq!(gate.enter("busy").await.unwrap_err().code(), "EPHEMERAL_WORKER_QUEUE_SATURATED");
        let g = gate.clone();
        let other = tokio::spawn(async move { g.enter("other").await.map(drop) });
        settle().await;
        assert_eq!(gate.pending(), 2, "the other app got its place in the queue");
        gate.close();
        let err = other.await.unwrap().unwrap_err();
        assert_eq!((err.status().as_u16(), err.code()), (503, "SHUTTING_DOWN"));
    }
}
