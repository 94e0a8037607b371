//! What the pool reports: one [`WorkerInfo`] row per worker for `GET /api/workers`, and the
//! pool-wide [`PoolMetrics`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::Inner;
use super::slots::Slot;
use super::worker::{Phase, Worker};

/// One worker as `GET /api/workers` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    /// Worker id (also its `WORKER_ID`); empty for a crash-looping app with no process.
    pub id: String,
    /// App name.
    pub app: String,
    /// App version.
    pub version: String,
    /// `static`, `js`, `process` or `wasm`.
    pub kind: &'static str,
    /// OS process id of the app (for a process app its group also holds marina's supervising shell);
    /// null for kinds that run inside marina.
    pub pid: Option<u32>,
    /// `starting`, `ready`, `busy`, `idle`, `draining` or `crashloop`.
    pub state: &'static str,
    /// Whether this is a one-request (`ttl: 0`) worker.
    pub ephemeral: bool,
    /// Requests forwarded to it.
    pub requests: u64,
    /// Requests that failed (5xx, crash, timeout).
    pub errors: u64,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Restarts of the app version's workers (crash, timeout, memory, maxRequests).
    pub restarts: u64,
    /// Why the last restart happened.
    pub last_restart_reason: Option<String>,
    /// Why the last live reload of its app version did not start (the worker kept serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
    /// Mean time to response headers over the last 100 requests.
    pub avg_latency_ms: f64,
    /// 99th percentile of the same.
    pub p99_latency_ms: f64,
    /// The highest memory use seen, bytes: the kernel's peak for a worker in a memory cgroup,
    /// else the highest sample.
    pub peak_rss_bytes: Option<u64>,
    /// Lines of its output not logged because it printed faster than the log rate limit.
    pub log_lines_dropped: u64,
    /// Memory of the worker, bytes (last sample): for a process, the resident memory of it and
    /// every process it started.
    pub rss_bytes: Option<u64>,
    /// Age of the worker.
    pub age_ms: u64,
    /// Time since it last started or finished a request.
    pub idle_ms: u64,
}

/// Pool-wide numbers, with Buntime's field names (buntime.md §3.8).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolMetrics {
    /// Live worker processes.
    pub active_workers: usize,
    /// Mean time to response headers over the last 100 requests.
    pub avg_response_time_ms: f64,
    /// The most ephemeral requests that may run at once (`RUNTIME_EPHEMERAL_CONCURRENCY` after
    /// clamping), as Buntime's metrics report it.
    pub ephemeral_concurrency: usize,
    /// Ephemeral requests running now (marina).
    pub ephemeral_active: usize,
    /// Ephemeral requests waiting now.
    pub ephemeral_queue_depth: usize,
    /// The ephemeral queue limit.
    pub ephemeral_queue_limit: usize,
    /// App versions evicted from the LRU.
    pub evictions: u64,
    /// `hits / (hits + misses)` in percent.
    pub hit_rate: f64,
    /// Requests that found a warm worker.
    pub hits: u64,
    /// Sum of the workers' resident memory, MiB.
    #[serde(rename = "memoryUsageMB")]
    pub memory_usage_mb: f64,
    /// Requests that had to start a worker.
    pub misses: u64,
    /// Requests per second since the previous metrics call (or since start).
    pub requests_per_second: f64,
    /// Requests forwarded.
    pub total_requests: u64,
    /// Workers started.
    pub total_workers_created: u64,
    /// Workers that failed to start.
    pub total_workers_failed: u64,
    /// Workers retired (ttl, maxRequests, memory, eviction, ephemeral completion).
    pub total_workers_retired: u64,
    /// Time since the pool was created.
    pub uptime_ms: u64,
}

/// What `/api/workers` shows of a slot on each of its rows: restarts, the last restart reason,
/// whether it is crash-looping, and why its last reload failed.
type SlotHistory = (u64, Option<String>, bool, Option<String>);

impl Inner {
    pub(super) fn workers(&self) -> Vec<WorkerInfo> {
        let all: Vec<Arc<Worker>> = self.all.lock().values().cloned().collect();
        let slots: Vec<(String, Arc<Slot>)> = self.slots.lock().iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        let history: HashMap<&str, SlotHistory> = slots
            .iter()
            .map(|(k, s)| {
                let st = s.st.lock();
                let looping = st.backoff_until.is_some_and(|t| t > Instant::now());
                let reload_error = st.failed_reload.as_ref().map(|f| f.message.clone());
                (k.as_str(), (st.restarts, st.last_reason.clone(), looping, reload_error))
            })
            .collect();
        let mut out: Vec<WorkerInfo> = all
            .iter()
            .map(|w| {
                let (restarts, last, looping, reload_error) = history.get(w.key.as_str()).cloned().unwrap_or_default();
                let state = match w.phase() {
                    Phase::Starting if looping => "crashloop",
                    Phase::Starting => "starting",
                    Phase::Draining => "draining",
                    Phase::Dead => "draining",
                    Phase::Ready if w.in_flight.load(Ordering::Acquire) > 0 => "busy",
                    Phase::Ready if w.idle_notified.load(Ordering::Acquire) => "idle",
                    Phase::Ready => "ready",
                };
                let lat = w.latency.lock();
                WorkerInfo {
                    id: w.id.clone(),
                    app: w.app.name.clone(),
                    version: w.app.version.clone(),
                    kind: w.app.kind.as_str(),
                    pid: w.pid(),
                    state,
                    ephemeral: w.ephemeral,
                    requests: w.requests.load(Ordering::Relaxed),
                    errors: w.errors.load(Ordering::Relaxed),
                    in_flight: w.in_flight.load(Ordering::Relaxed),
                    restarts,
                    last_restart_reason: last,
                    reload_error: reload_error.clone(),
                    avg_latency_ms: lat.avg_ms(),
                    p99_latency_ms: lat.p99_ms(),
                    rss_bytes: match w.rss.load(Ordering::Relaxed) {
                        0 => w.memory(),
                        r => Some(r),
                    },
                    peak_rss_bytes: w.peak_memory(),
                    log_lines_dropped: w.instance().map_or(0, |i| i.log_lines_dropped()),
                    age_ms: w.created.elapsed().as_millis() as u64,
                    idle_ms: w.idle_for().as_millis() as u64,
                }
            })
            .collect();
        for (key, slot) in &slots {
            let (restarts, last, looping, reload_error) = history[key.as_str()].clone();
            // A worker whose start just failed may not be forgotten yet: it does not count.
            let live = all.iter().any(|w| w.key == *key && w.phase() != Phase::Dead);
            if looping && !live {
                out.push(WorkerInfo {
                    id: String::new(),
                    app: slot.app.name.clone(),
                    version: slot.app.version.clone(),
                    kind: slot.app.kind.as_str(),
                    pid: None,
                    state: "crashloop",
                    ephemeral: false,
                    requests: 0,
                    errors: 0,
                    in_flight: 0,
                    restarts,
                    last_restart_reason: last,
                    reload_error: reload_error.clone(),
                    avg_latency_ms: 0.0,
                    p99_latency_ms: 0.0,
                    rss_bytes: None,
                    peak_rss_bytes: None,
                    log_lines_dropped: 0,
                    age_ms: 0,
                    idle_ms: 0,
                });
            }
        }
        out.sort_by(|a, b| (&a.app, &a.version, b.age_ms).cmp(&(&b.app, &b.version, a.age_ms)));
        let mut rows = self.shared.snapshot();
        rows.extend(out);
        rows
    }

    pub(super) fn metrics(&self) -> PoolMetrics {
        let c = &self.counters;
        let hits = c.hits.load(Ordering::Relaxed);
        let misses = c.misses.load(Ordering::Relaxed);
        let total = c.requests.load(Ordering::Relaxed);
        let all: Vec<Arc<Worker>> = self.all.lock().values().cloned().collect();
        let rss: u64 = all.iter().filter_map(|w| w.memory()).sum();
        let rps = {
            let mut last = self.last_rate.lock();
            let secs = last.0.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { (total - last.1) as f64 / secs } else { 0.0 };
            *last = (Instant::now(), total);
            rate
        };
        PoolMetrics {
            active_workers: all.iter().filter(|w| w.phase() != Phase::Dead).count(),
            avg_response_time_ms: self.latency.lock().avg_ms(),
            ephemeral_concurrency: self.gate.max_concurrency(),
            ephemeral_active: self.gate.active(),
            ephemeral_queue_depth: self.gate.pending(),
            ephemeral_queue_limit: self.gate.queue_limit(),
            evictions: c.evictions.load(Ordering::Relaxed),
            hit_rate: if hits + misses == 0 { 0.0 } else { hits as f64 * 100.0 / (hits + misses) as f64 },
            hits,
            memory_usage_mb: rss as f64 / (1024.0 * 1024.0),
            misses,
            requests_per_second: rps,
            total_requests: total,
            total_workers_created: c.created.load(Ordering::Relaxed),
            total_workers_failed: c.failed.load(Ordering::Relaxed),
            total_workers_retired: c.retired.load(Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_documented_ones() {
        let info = WorkerInfo {
            id: "x".into(),
            app: "a".into(),
            version: "1.0.0".into(),
            kind: "js",
            pid: Some(1),
            state: "ready",
            ephemeral: false,
            requests: 1,
            errors: 0,
            in_flight: 0,
            restarts: 0,
            last_restart_reason: None,
            reload_error: None,
            avg_latency_ms: 1.0,
            p99_latency_ms: 1.0,
            rss_bytes: Some(1),
            peak_rss_bytes: Some(1),
            log_lines_dropped: 0,
            age_ms: 1,
            idle_ms: 1,
        };
        let v = serde_json::to_value(info).unwrap();
        for k in ["inFlight", "lastRestartReason", "avgLatencyMs", "p99LatencyMs", "rssBytes", "ageMs"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
    }
}
