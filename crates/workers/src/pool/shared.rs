//! Apps run with [`Policy::Shared`](crate::backend::Policy::Shared) (static): one instance per
//! app version, kept while the registry hands out the same `App`, and its request counters.
//! `GET /api/workers` shows them as the same [`WorkerInfo`] rows as pooled workers, so clients
//! read one shape for every kind.

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marina_apps::App;
use parking_lot::Mutex;

use super::WorkerInfo;
use super::stats::LatencyRing;
use crate::backend::Instance;

/// How many recent latencies feed the average and p99 (the pool uses the same window).
const WINDOW: usize = 100;

/// One `name@version`: the app it was started for, its instance and its counters.
struct Entry {
    app: Arc<App>,
    instance: Arc<dyn Instance>,
    kind: &'static str,
    name: String,
    version: String,
    requests: u64,
    errors: u64,
    latency: LatencyRing,
    /// Its files changed on disk: the next request starts a new instance.
    stale: bool,
    first_seen: Instant,
    last_seen: Instant,
}

/// Every shared instance, by `name@version` (looked up twice per request: FxHash, since the
/// keys are app names, not attacker-chosen).
#[derive(Default)]
pub(crate) struct Shared {
    apps: Mutex<FxHashMap<String, Entry>>,
}

impl Shared {
    /// The instance started for exactly this `App` (the registry hands out a new `Arc<App>`
    /// only when the app really changed, which retires the old instance).
    pub fn get(&self, app: &Arc<App>) -> Option<Arc<dyn Instance>> {
        let apps = self.apps.lock();
        let e = apps.get(app.key())?;
        (Arc::ptr_eq(&e.app, app) && !e.stale).then(|| e.instance.clone())
    }

    /// Keeps `instance` for `app`, replacing one started for an older `App` (its counters stay).
    pub fn insert(&self, app: &Arc<App>, instance: Arc<dyn Instance>) -> Arc<dyn Instance> {
        let now = Instant::now();
        let mut apps = self.apps.lock();
        let key = app.key();
        if let Some(e) = apps.get_mut(key) {
            if Arc::ptr_eq(&e.app, app) && !e.stale {
                return e.instance.clone(); // another request started it first
            }
            e.stale = false;
            e.app = app.clone();
            e.instance = instance.clone();
            return instance;
        }
        apps.insert(
            key.to_string(),
            Entry {
                app: app.clone(),
                instance: instance.clone(),
                kind: app.kind.as_str(),
                name: app.name.clone(),
                version: app.version.clone(),
                requests: 0,
                errors: 0,
                latency: LatencyRing::new(WINDOW),
                stale: false,
                first_seen: now,
                last_seen: now,
            },
        );
        instance
    }

    /// The files of `key` changed: its next request gets a new instance (counters stay).
    pub fn forget(&self, key: &str) {
        if let Some(e) = self.apps.lock().get_mut(key) {
            e.stale = true;
        }
    }

    /// Count one answered request.
    pub fn record(&self, app: &App, status: u16, latency: Duration) {
        let now = Instant::now();
        let mut apps = self.apps.lock();
        let Some(entry) = apps.get_mut(app.key()) else { return };
        entry.requests += 1;
        if status >= 500 {
            entry.errors += 1;
        }
        entry.latency.record(latency);
        entry.last_seen = now;
    }

    /// One row per app version, sorted by `name@version` (the row's `id`). Fields that only
    /// make sense for a process (`pid`, `rssBytes`) are null and there are no restarts,
    /// because marina serves these apps itself.
    pub fn snapshot(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let apps = self.apps.lock();
        let mut out: Vec<_> = apps
            .iter()
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
                    reload_error: None,
                    avg_latency_ms: e.latency.avg_ms(),
                    p99_latency_ms: e.latency.p99_ms(),
                    rss_bytes: None,
                    peak_rss_bytes: None,
                    log_lines_dropped: 0,
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
    use crate::backend::{Backend, StartSpec};
    use crate::static_kind::StaticBackend;
    use marina_apps::WorkerKind;

    #[tokio::test]
    async fn the_window_keeps_the_last_hundred_requests_and_a_new_app_replaces_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let app = |version: &str| {
            Arc::new(App {
                name: "a".into(),
                version: version.into(),
                dir: dir.path().into(),
                entrypoint: dir.path().join("index.html"),
                kind: WorkerKind::Static,
                config: Default::default(),
                proxy: Default::default(),
                key: App::key_of("a", version),
                migrated: Default::default(),
            })
        };
        let start = |app: &Arc<App>| {
            StaticBackend.start(StartSpec {
                app: app.clone(),
                worker_id: String::new(),
                ephemeral: false,
                cancel: Default::default(),
            })
        };
        let shared = Shared::default();
        let a1 = app("1");
        assert!(shared.get(&a1).is_none());
        let first = shared.insert(&a1, start(&a1).await.unwrap());
        assert!(Arc::ptr_eq(&shared.get(&a1).unwrap(), &first));
        for _ in 0..150 {
            shared.record(&a1, 200, Duration::from_millis(50));
        }
        for _ in 0..100 {
            shared.record(&a1, 503, Duration::from_millis(2));
        }
        let view = &shared.snapshot()[0];
        assert_eq!((view.id.as_str(), view.kind), ("a@1", "static"));
        assert_eq!((view.requests, view.errors), (250, 100));
        assert_eq!((view.avg_latency_ms, view.p99_latency_ms), (2.0, 2.0));
        // The same version changed on disk: a new `App`, a new instance, the counters kept.
        let changed = app("1");
        assert!(shared.get(&changed).is_none());
        let second = shared.insert(&changed, start(&changed).await.unwrap());
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(shared.snapshot()[0].requests, 250);
    }
}
