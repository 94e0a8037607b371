//! Per-app request counters kept by the server for apps the pool does not run (static apps).
//! `GET /api/workers` shows them as the pool's own [`WorkerInfo`] rows, so clients read one
//! shape for every kind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use marina_pool::worker::{LatencyRing, WorkerInfo};
use parking_lot::Mutex;

/// How many recent latencies feed the average and p99 (the pool uses the same window).
const WINDOW: usize = 100;

/// Counters for one `name@version`.
#[derive(Debug, Clone)]
struct Entry {
    kind: &'static str,
    name: String,
    version: String,
    requests: u64,
    errors: u64,
    latency: LatencyRing,
    first_seen: Instant,
    last_seen: Instant,
}

/// All apps' counters.
#[derive(Debug, Default)]
pub struct Stats {
    apps: Mutex<HashMap<String, Entry>>,
}

impl Stats {
    /// Count one answered request.
    pub fn record(&self, key: &str, name: &str, version: &str, kind: &'static str, status: u16, latency: Duration) {
        let now = Instant::now();
        let mut apps = self.apps.lock();
        let entry = match apps.get_mut(key) {
            Some(e) => e,
            None => apps.entry(key.to_string()).or_insert_with(|| Entry {
                kind,
                name: name.to_string(),
                version: version.to_string(),
                requests: 0,
                errors: 0,
                latency: LatencyRing::new(WINDOW),
                first_seen: now,
                last_seen: now,
            }),
        };
        entry.kind = kind;
        entry.requests += 1;
        if status >= 500 {
            entry.errors += 1;
        }
        entry.latency.record(latency);
        entry.last_seen = now;
    }

    /// Rows for the apps of one kind, sorted by `name@version` (the row's `id`). Fields that
    /// only make sense for a process (`pid`, `rssBytes`) are null and there are no restarts,
    /// because marina serves these apps itself.
    pub fn snapshot(&self, kind: &str) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let apps = self.apps.lock();
        let mut out: Vec<_> = apps
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(key, e)| {
                let idle = now.duration_since(e.last_seen);
                WorkerInfo {
                    id: key.clone(),
                    app: e.name.clone(),
                    version: e.version.clone(),
                    kind: e.kind,
                    pid: None,
                    state: if idle > Duration::from_secs(60) { "idle" } else { "ready" },
                    ephemeral: false,
                    requests: e.requests,
                    errors: e.errors,
                    in_flight: 0,
                    restarts: 0,
                    last_restart_reason: None,
                    avg_latency_ms: e.latency.avg_ms(),
                    p99_latency_ms: e.latency.p99_ms(),
                    rss_bytes: None,
                    age_ms: now.duration_since(e.first_seen).as_millis() as u64,
                    idle_ms: idle.as_millis() as u64,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_hundred_requests() {
        let stats = Stats::default();
        for _ in 0..150 {
            stats.record("a@1", "a", "1", "static", 200, Duration::from_millis(50));
        }
        for _ in 0..100 {
            stats.record("a@1", "a", "1", "static", 503, Duration::from_millis(2));
        }
        let view = &stats.snapshot("static")[0];
        assert_eq!((view.requests, view.errors), (250, 100));
        assert_eq!((view.avg_latency_ms, view.p99_latency_ms), (2.0, 2.0));
        assert!(stats.snapshot("js").is_empty());
    }
}
