//! Fresh spares for `ttl: 0`: never-used workers started ahead of demand, so that a `ttl: 0`
//! request does not wait for its worker to start.
//!
//! An app whose `ttl: 0` requests keep coming gets up to `RUNTIME_EPHEMERAL_SPARES` workers
//! started ahead. A request takes one (a ready one first, else one still starting: it is
//! further along than a new start) and a replacement starts at once. Each spare is an ordinary
//! ephemeral worker: it serves exactly one request and is stopped when its response ends, so
//! `ttl: 0` still means a fresh process per request. Spares run outside the ephemeral gate
//! (the request that takes one still holds a gate slot), at most that many per app and for at
//! most [`MAX_SPARE_APPS`] apps at a time (the ones with the latest demand), so requests spread
//! over many `ttl: 0` apps cannot keep a crowd of idle processes alive; an app with no `ttl: 0`
//! request for [`SPARE_IDLE`] loses its spares, and so does an app whose files change (a
//! reload) or whose manifest is reloaded (a spare runs the app as it was loaded).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marina_apps::App;

use super::Inner;
use super::lifecycle::KILL_GRACE;
use super::worker::{Phase, Worker};

/// An app without a `ttl: 0` request for this long has its spares stopped.
pub(super) const SPARE_IDLE: Duration = Duration::from_secs(10);

/// Apps that keep spares at once; a new one takes the place of the one asked least recently.
pub(super) const MAX_SPARE_APPS: usize = 4;

/// The spares of one app version.
pub(super) struct AppSpares {
    /// The app as loaded when the spares were started.
    app: Arc<App>,
    workers: Vec<Arc<Worker>>,
    last_demand: Instant,
}

/// Spares by app key (`name@version`).
pub(super) type Spares = HashMap<String, AppSpares>;

impl Inner {
    /// The worker for one `ttl: 0` request of `app`: a spare when there is one (starting its
    /// replacement), else a new one (starting the app's spares too).
    pub(super) fn ephemeral_worker(&self, app: &Arc<App>) -> Arc<Worker> {
        let want = self.opts.ephemeral_spares;
        if want == 0 {
            return self.spawn_worker(app.clone(), true);
        }
        let (taken, stale, missing) = {
            let mut spares = self.spares.lock();
            let mut stale = Vec::new();
            let key = app.key();
            if !spares.contains_key(key) && spares.len() >= MAX_SPARE_APPS {
                let oldest = spares.iter().min_by_key(|(_, e)| e.last_demand).map(|(k, _)| k.clone());
                if let Some(evicted) = oldest.and_then(|k| spares.remove(&k)) {
                    stale = evicted.workers;
                }
            }
            let entry = spares.entry(key.to_string()).or_insert_with(|| AppSpares {
                app: app.clone(),
                workers: Vec::new(),
                last_demand: Instant::now(),
            });
            if !Arc::ptr_eq(&entry.app, app) {
                stale.append(&mut entry.workers);
                entry.app = app.clone();
            }
            entry.last_demand = Instant::now();
            entry.workers.retain(|w| w.usable());
            let pick = entry
                .workers
                .iter()
                .position(|w| w.phase() == Phase::Ready)
                .or_else(|| (!entry.workers.is_empty()).then_some(0));
            let taken = pick.map(|i| entry.workers.remove(i));
            (taken, stale, want.saturating_sub(entry.workers.len()))
        };
        for w in stale {
            stop_spare(w);
        }
        let worker = taken.unwrap_or_else(|| self.spawn_worker(app.clone(), true));
        let fresh: Vec<Arc<Worker>> = (0..missing).map(|_| self.spawn_worker(app.clone(), true)).collect();
        let mut spares = self.spares.lock();
        match spares.get_mut(app.key()).filter(|e| Arc::ptr_eq(&e.app, app)) {
            Some(entry) => entry.workers.extend(fresh),
            // Dropped (reload) or replaced meanwhile: these are not wanted.
            None => fresh.into_iter().for_each(stop_spare),
        }
        worker
    }

    /// Stops the spares of `key` (its files changed).
    pub(super) fn drop_spares(&self, key: &str) {
        let gone = self.spares.lock().remove(key);
        for w in gone.into_iter().flat_map(|e| e.workers) {
            stop_spare(w);
        }
    }

    /// Housekeeping: stops the spares of apps without a `ttl: 0` request for [`SPARE_IDLE`].
    pub(super) fn expire_spares(&self) {
        let idle: Vec<AppSpares> = {
            let mut spares = self.spares.lock();
            let keys: Vec<String> =
                spares.iter().filter(|(_, e)| e.last_demand.elapsed() >= SPARE_IDLE).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| spares.remove(k)).collect()
        };
        for w in idle.into_iter().flat_map(|e| e.workers) {
            stop_spare(w);
        }
    }
}

/// Stops a spare that will never serve (it gets `onTerminate` like any stopped worker).
fn stop_spare(w: Arc<Worker>) {
    if w.begin_drain() {
        tokio::spawn(async move { w.terminate(KILL_GRACE).await });
    }
}
