//! Per-app request counters kept by the server for apps the pool does not run (static apps),
//! shown by `GET /api/workers` in the same shape as the pool's worker rows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// How many recent latencies feed the p99 (the pool uses the same window).
const WINDOW: usize = 100;

/// Counters for one `name@version`.
#[derive(Debug, Clone)]
struct Entry {
    kind: &'static str,
    name: String,
    version: String,
    requests: u64,
    errors: u64,
    /// The last `WINDOW` latencies in microseconds, as a ring.
    recent_us: Vec<u32>,
    next: usize,
    first_seen: Instant,
    last_seen: Instant,
}

/// A static app's row in `GET /api/workers`: the pool's worker fields, with the ones that only
/// make sense for a process (`pid`, `rssBytes`) null and no restarts, because marina itself
/// serves the files.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatsView {
    /// `name@version` (worker rows carry a worker id here).
    pub id: String,
    /// The app name.
    pub app: String,
    /// The resolved version.
    pub version: String,
    /// The worker kind (`static`).
    pub kind: &'static str,
    /// Always null: no process of its own.
    pub pid: Option<u32>,
    /// `ready`, or `idle` after a minute without requests.
    pub state: &'static str,
    /// Always false.
    pub ephemeral: bool,
    /// Requests answered.
    pub requests: u64,
    /// Responses with a 5xx status.
    pub errors: u64,
    /// Always 0: nothing to restart.
    pub restarts: u64,
    /// Always null.
    pub last_restart_reason: Option<String>,
    /// Mean latency over the last 100 requests, milliseconds.
    pub avg_latency_ms: f64,
    /// 99th percentile of the same.
    pub p99_latency_ms: f64,
    /// Always null: served in marina's own process.
    pub rss_bytes: Option<u64>,
    /// Time since the first request, milliseconds.
    pub age_ms: u64,
    /// Time since the last request, milliseconds.
    pub idle_ms: u64,
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
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut apps = self.apps.lock();
        let entry = match apps.get_mut(key) {
            Some(e) => e,
            None => apps.entry(key.to_string()).or_insert_with(|| Entry {
                kind,
                name: name.to_string(),
                version: version.to_string(),
                requests: 0,
                errors: 0,
                recent_us: Vec::with_capacity(WINDOW),
                next: 0,
                first_seen: now,
                last_seen: now,
            }),
        };
        entry.kind = kind;
        entry.requests += 1;
        if status >= 500 {
            entry.errors += 1;
        }
        if entry.recent_us.len() < WINDOW {
            entry.recent_us.push(micros);
        } else {
            entry.recent_us[entry.next] = micros;
        }
        entry.next = (entry.next + 1) % WINDOW;
        entry.last_seen = now;
    }

    /// A snapshot of the apps of one kind, sorted by key.
    pub fn snapshot(&self, kind: &str) -> Vec<AppStatsView> {
        let now = Instant::now();
        let apps = self.apps.lock();
        let mut out: Vec<_> = apps
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(key, e)| {
                let (avg, p99) = avg_and_p99_ms(&e.recent_us);
                let idle = now.duration_since(e.last_seen);
                AppStatsView {
                    id: key.clone(),
                    app: e.name.clone(),
                    version: e.version.clone(),
                    kind: e.kind,
                    pid: None,
                    state: if idle > Duration::from_secs(60) { "idle" } else { "ready" },
                    ephemeral: false,
                    requests: e.requests,
                    errors: e.errors,
                    restarts: 0,
                    last_restart_reason: None,
                    avg_latency_ms: avg,
                    p99_latency_ms: p99,
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

/// Mean and nearest-rank 99th percentile of microsecond samples, in milliseconds.
fn avg_and_p99_ms(samples: &[u32]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let avg = sorted.iter().map(|&u| f64::from(u)).sum::<f64>() / sorted.len() as f64 / 1000.0;
    let rank = (sorted.len() * 99).div_ceil(100).max(1) - 1;
    (avg, f64::from(sorted[rank]) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(avg_and_p99_ms(&samples), (50.5, 99.0));
        assert_eq!(avg_and_p99_ms(&[2000]), (2.0, 2.0));
        assert_eq!(avg_and_p99_ms(&[]), (0.0, 0.0));
    }

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
