//! App migrations before an app version's first worker starts.
//!
//! An app with a `migrations/` dir has its pending migrations applied to its own database
//! (`{state}/apps/{name}/app.db`, or schema `app_{name}` on PostgreSQL) the first time a request
//! reaches it, before any worker of it starts, under the store's migration lock (so several
//! marina instances apply each migration once). A failure answers 503 `APP_MIGRATION_FAILED`
//! for that app only, shows in `/api/apps`, and sticks until the app's files change (a fixed
//! migration is then retried). `autoMigrate: false` in the manifest opts out; `marina db
//! migrate --app NAME` remains the manual way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;
use marina_apps::{App, WorkerKind};
use marina_core::Error;
use marina_store::{MigrateOptions, MigrationSet, Migrator, Store};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::OnceCell;

/// The outcome of applying one app version's migrations: `Err` holds the 503 to answer.
type Outcome = Result<(), (String, serde_json::Value)>;

/// Per app version dir: applied once (or failed), until its files change.
///
/// A success also marks the `App` itself ([`marina_apps::MigratedMark`]) with the current
/// generation, so the requests after it check one atomic instead of hashing the app's dir into
/// this map (~0.75k instructions a request on the warm JS hop). Forgetting any app's outcome
/// moves the generation on, which voids every mark: the next request of each app takes the
/// map again once.
#[derive(Default)]
pub struct AppMigrations {
    done: Mutex<HashMap<PathBuf, Arc<OnceCell<Outcome>>>>,
    generation: AtomicU64,
}

impl AppMigrations {
    /// Apply `app`'s pending migrations unless that already happened (or failed) since its
    /// files last changed. Concurrent first requests wait for the one run.
    ///
    /// # Errors
    /// 503 `APP_MIGRATION_FAILED` with `data: {app, migration, error}`.
    pub async fn ensure(&self, app: &App, database_url: Option<&str>, state_dir: &Path) -> Result<(), Error> {
        if app.kind == WorkerKind::Static || !app.config.auto_migrate {
            return Ok(());
        }
        // Read before the map: a `forget` between here and the mark below leaves a stale mark.
        let generation = self.generation.load(Ordering::Acquire) + 1;
        if app.migrated.get() == generation {
            return Ok(());
        }
        // Known since the files last changed (this is on every request: no `stat` here). An app
        // without a `migrations` dir is remembered as done; creating one is a change to its
        // files, which forgets it.
        let known = self.done.lock().get(&app.dir).cloned();
        let cell = match known {
            Some(cell) => cell,
            None if !app.dir.join("migrations").is_dir() => {
                let none = Arc::new(OnceCell::new_with(Some(Ok(()))));
                self.done.lock().entry(app.dir.clone()).or_insert(none).clone()
            }
            None => self.done.lock().entry(app.dir.clone()).or_default().clone(),
        };
        let outcome = cell.get_or_init(|| apply(app, database_url, state_dir)).await;
        if outcome.is_ok() {
            app.migrated.set(generation);
        }
        outcome.clone().map_err(|(message, data)| {
            Error::new(StatusCode::SERVICE_UNAVAILABLE, "APP_MIGRATION_FAILED", message).with_data(data)
        })
    }

    /// Forget the outcome for an app version dir (its files changed): the next request applies
    /// whatever is pending then.
    pub fn forget(&self, dir: &Path) {
        let mut done = self.done.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        done.remove(dir);
    }

    /// Why the migrations of the app version in `dir` failed, if they did.
    pub fn failure(&self, dir: &Path) -> Option<serde_json::Value> {
        let cell = self.done.lock().get(dir).cloned()?;
        match cell.get() {
            Some(Err((message, data))) => Some(json!({ "message": message, "data": data })),
            _ => None,
        }
    }
}

async fn apply(app: &App, database_url: Option<&str>, state_dir: &Path) -> Outcome {
    let key = app.key();
    let fail = |migration: Option<&str>, error: String| {
        let message = match migration {
            Some(m) => format!("app '{key}': migration '{m}' failed, so the app is not started: {error}"),
            None => format!("app '{key}': its migrations could not be applied, so the app is not started: {error}"),
        };
        tracing::error!(app = %key, "{message}");
        Err((message, json!({ "app": key, "migration": migration, "error": error })))
    };
    // The migrations dir must be the app's own: a symlink leading out of the app dir would let
    // marina read (and run) files from anywhere. (Each file is then read beneath this dir.)
    let dir = app.dir.join("migrations");
    match (dir.canonicalize(), app.dir.canonicalize()) {
        (Ok(real), Ok(root)) if real.starts_with(&root) => {}
        _ => return fail(None, "its `migrations` dir resolves outside the app dir (a symlink); refused".to_string()),
    }
    let set = match MigrationSet::from_dir(&dir) {
        Ok(set) => set,
        Err(e) => return fail(None, e.message().to_string()),
    };
    // The database must be this app's own: another app whose name maps to it owns it.
    if let Err(e) = Store::claim_app(database_url, state_dir, &app.name) {
        return fail(None, e.message().to_string());
    }
    let store = match Store::open_app(database_url, state_dir, &app.name).await {
        Ok(s) => s,
        Err(e) => return fail(None, e.message().to_string()),
    };
    let report = match Migrator::new(&store, &set).migrate(&MigrateOptions::default()).await {
        Ok(r) => r,
        Err(e) => return fail(None, e.message().to_string()),
    };
    if let Some(f) = &report.failure {
        return fail(Some(&f.name), f.message.clone());
    }
    if !report.steps.is_empty() {
        let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(app = %key, database = %report.database, applied = ?names, "app migrations applied");
    }
    Ok(())
}
