//! Per-app request counters kept by the server, for apps the pool does not run (static apps)
//! and as the server's own view of every app in `GET /api/workers`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// Counters for one `name@version`.
#[derive(Debug, Clone)]
struct Entry {
    kind: &'static str,
    name: String,
    version: String,
    requests: u64,
    errors: u64,
    total_latency: Duration,
    first_seen: Instant,
    last_seen: Instant,
}

/// What `GET /api/workers` shows for a static app.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatsView {
    /// `name@version`.
    pub key: String,
    /// The app name.
    pub app: String,
    /// The resolved version.
    pub version: String,
    /// The worker kind (`static`).
    pub kind: &'static str,
    /// `ready` (static apps are always ready) or `idle` after a minute without requests.
    pub state: &'static str,
    /// Requests answered.
    pub requests: u64,
    /// Responses with a 5xx status.
    pub errors: u64,
    /// Mean latency in milliseconds.
    pub avg_latency_ms: f64,
    /// Time since the first request, in milliseconds.
    pub uptime_ms: u64,
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
                total_latency: Duration::ZERO,
                first_seen: now,
                last_seen: now,
            }),
        };
        entry.kind = kind;
        entry.requests += 1;
        if status >= 500 {
            entry.errors += 1;
        }
        entry.total_latency += latency;
        entry.last_seen = now;
    }

    /// A snapshot of the apps of one kind, sorted by key.
    pub fn snapshot(&self, kind: &str) -> Vec<AppStatsView> {
        let now = Instant::now();
        let apps = self.apps.lock();
        let mut out: Vec<_> = apps
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(key, e)| AppStatsView {
                key: key.clone(),
                app: e.name.clone(),
                version: e.version.clone(),
                kind: e.kind,
                state: if now.duration_since(e.last_seen) > Duration::from_secs(60) { "idle" } else { "ready" },
                requests: e.requests,
                errors: e.errors,
                avg_latency_ms: if e.requests == 0 {
                    0.0
                } else {
                    e.total_latency.as_secs_f64() * 1000.0 / e.requests as f64
                },
                uptime_ms: now.duration_since(e.first_seen).as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}
