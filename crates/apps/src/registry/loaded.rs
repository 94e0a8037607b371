//! Loaded app versions: read once, kept up to date with the disk by stamps, watcher events and
//! sweeps, and their problems logged once per change.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use marina_core::Error;

use super::entrypoint::build_app;
use super::{Cached, Registry, Resolved};
use crate::app::App;
use crate::stamp::{self, Stamp};

/// How an app version looks to `GET /api/apps`: usable, refused by its manifest, or disabled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionState {
    /// `latest` or a semver.
    pub version: String,
    /// `ok`, `invalid` or `disabled`.
    pub state: &'static str,
    /// For `invalid`: the error code (`APP_MANIFEST_INVALID`, `APP_ENTRYPOINT_NOT_FOUND`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For `invalid`: every problem, `{path, message}` (`path` is the manifest key, or empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Value>,
}

/// A loaded app version, or the error loading it gave (cached too, so a broken app is not
/// re-read on every request).
type LoadResult = Result<Arc<App>, ErrorParts>;

/// A loaded app version and the stamp of the files it was read from.
pub(super) struct LoadedVersion {
    cached: Cached<LoadResult>,
    stamp: Stamp,
}

/// An [`Error`] kept in the cache (the error type is not `Clone`).
#[derive(Clone)]
struct ErrorParts {
    status: StatusCode,
    code: String,
    message: String,
    data: Option<Value>,
}

impl ErrorParts {
    fn of(e: &Error) -> Self {
        Self {
            status: e.status(),
            code: e.code().to_string(),
            message: e.message().to_string(),
            data: e.data().cloned(),
        }
    }

    fn to_error(&self) -> Error {
        let e = Error::new(self.status, self.code.clone(), self.message.clone());
        match &self.data {
            Some(d) => e.with_data(d.clone()),
            None => e,
        }
    }
}

impl Registry {
    /// The app version ready to dispatch to: manifest read and validated, entrypoint resolved,
    /// worker kind chosen. Cached: the files are read the first time, and again only when
    /// they changed (see [`Registry::refresh`]); with [`Registry::refresh_in_background`] a
    /// loaded app version is returned as it is, with no file-system access at all.
    ///
    /// # Errors
    /// 500 `APP_MANIFEST_INVALID` (bad manifest), 500 `APP_FILE_REFUSED` (the manifest or `.env`
    /// leads outside the app dir, is not a regular file or is over 1 MiB), 404 `APP_DISABLED`
    /// (`enabled: false`), 500 `APP_ENTRYPOINT_NOT_FOUND` / `APP_ENTRYPOINT_OUTSIDE` /
    /// `APP_ENTRYPOINT_UNSUPPORTED`.
    pub fn load(&self, resolved: &Resolved) -> Result<Arc<App>, Error> {
        let generation = self.generation.load(Ordering::Acquire);
        // In the background mode a loaded app is served without touching the disk; an app that
        // did not load is checked against its stamp (`stat` calls, no reads) on each request, so
        // the request right after a fix (`marina wasm build` writing the entrypoint, a corrected
        // manifest) is served, not the error cached until the watcher's event arrives.
        if let Some(c) = self.apps.lock().get(&resolved.dir)
            && same_version(&c.cached.value, resolved)
            && if self.background.load(Ordering::Relaxed) {
                c.cached.value.is_ok()
            } else {
                self.fresh(&c.cached, generation)
            }
        {
            return c.cached.value.clone().map_err(|e| e.to_error());
        }
        self.refresh(resolved, false)
    }

    /// Bring the cached app version up to date with the disk: its stamp is taken (`stat` calls
    /// only) and its files are read again only when the stamp changed, or when `force` (a
    /// watcher event named one of its files). An unchanged app keeps the same `Arc`.
    ///
    /// # Errors
    /// As [`Registry::load`].
    pub fn refresh(&self, resolved: &Resolved, force: bool) -> Result<Arc<App>, Error> {
        let stamp = self.stamp(resolved);
        self.refresh_with(resolved, force, stamp)
    }

    /// The current stamp of a version's files (with the entrypoint its manifest names).
    fn stamp(&self, resolved: &Resolved) -> Stamp {
        let entrypoint = match self.apps.lock().get(&resolved.dir) {
            Some(LoadedVersion { cached: Cached { value: Ok(app), .. }, .. }) => app.config.entrypoint.clone(),
            // The manifest's entrypoint that was not found: its appearance is the fix to notice.
            Some(LoadedVersion { cached: Cached { value: Err(e), .. }, .. }) => {
                e.data.as_ref().and_then(|d| d.get("entrypoint")).and_then(Value::as_str).map(str::to_string)
            }
            _ => None,
        };
        stamp::of(&resolved.dir, entrypoint.as_deref())
    }

    fn refresh_with(&self, resolved: &Resolved, force: bool, stamp: Stamp) -> Result<Arc<App>, Error> {
        let generation = self.generation.load(Ordering::Acquire);
        let previous = match self.apps.lock().get_mut(&resolved.dir) {
            Some(c) if same_version(&c.cached.value, resolved) => {
                if !force && c.stamp.still_matches(&stamp) {
                    c.cached.at = Instant::now();
                    c.cached.generation = generation;
                    return c.cached.value.clone().map_err(|e| e.to_error());
                }
                c.cached.value.as_ref().ok().cloned()
            }
            _ => None,
        };
        // Read without holding the cache lock: other apps' requests never wait for this one.
        self.reads.fetch_add(1, Ordering::Relaxed);
        let (built, warnings) = build_app(resolved);
        self.log_once(resolved, &warnings, built.as_ref().err());
        // An unchanged app hands out the same `Arc`, so whatever callers keep per app (a static
        // site's file cache, a shared instance) survives the re-read.
        let result = built.map(|app| match previous {
            Some(prev) if prev.same_as(&app) => prev,
            _ => Arc::new(app),
        });
        let cached = result.as_ref().map(Arc::clone).map_err(ErrorParts::of);
        let mut apps = self.apps.lock();
        // Forget entries for dirs that are gone, so removed apps do not pile up; the others keep
        // their `Arc` across generations (an unchanged app stays the same `Arc`).
        apps.retain(|d, c| c.cached.generation == generation || d.is_dir());
        apps.insert(
            resolved.dir.clone(),
            LoadedVersion { cached: Cached { at: Instant::now(), generation, value: cached }, stamp },
        );
        result
    }

    /// Let [`Registry::load`] return loaded app versions without looking at the disk: the
    /// caller promises to call [`Registry::refresh`] on changes (watcher events) and
    /// [`Registry::sweep`] now and then (missed events). `marina serve` does.
    pub fn refresh_in_background(&self) {
        self.background.store(true, Ordering::Relaxed);
    }

    /// Refresh every loaded app version whose files changed on disk (stamps only for the
    /// others); returns the ones that now load as a different app (a new `Arc`), for the caller
    /// to restart their workers. Files changed less than a second ago are left for the next
    /// sweep: a watcher event for them is probably on its way, and one change should restart
    /// workers once.
    pub fn sweep(&self) -> Vec<Arc<App>> {
        let loaded: Vec<(Resolved, Option<Arc<App>>)> = self
            .all_versions()
            .into_iter()
            .filter_map(|r| {
                let apps = self.apps.lock();
                let c = apps.get(&r.dir)?;
                let app = c.cached.value.as_ref().ok().cloned();
                Some((r, app))
            })
            .collect();
        let mut changed = Vec::new();
        for (resolved, before) in loaded {
            let stamp = self.stamp(&resolved);
            if !stamp.settled() {
                continue;
            }
            if let Ok(after) = self.refresh_with(&resolved, false, stamp)
                && !before.is_some_and(|b| Arc::ptr_eq(&b, &after))
            {
                changed.push(after);
            }
        }
        changed
    }

    /// How many times an app version's files were read (for tests and diagnostics): once per
    /// load of a new version and once per change on disk.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Log an app version's manifest warnings and load error, once per distinct content: a
    /// forced refresh (any watcher event in the app dir) re-reads an unchanged manifest, and
    /// saying the same problem again each time would drown the log.
    fn log_once(&self, resolved: &Resolved, warnings: &[String], error: Option<&Error>) {
        let text = format!("{warnings:?}{:?}", error.map(|e| (e.code(), e.message())));
        let mut logged = self.logged.lock();
        if logged.get(&resolved.dir) == Some(&text) {
            return;
        }
        logged.insert(resolved.dir.clone(), text);
        drop(logged);
        for w in warnings {
            tracing::warn!(app = %resolved.name, version = %resolved.version, "{w}");
        }
        if let Some(e) = error.filter(|e| e.code() != "APP_DISABLED") {
            tracing::error!(app = %resolved.name, version = %resolved.version, code = e.code(), "{}", e.message());
        }
    }

    /// The state of one app version for `GET /api/apps` (loads it, so its problems are logged
    /// if they are new).
    pub fn version_state(&self, resolved: &Resolved) -> VersionState {
        let (state, code, errors) = match self.load(resolved) {
            Ok(_) => ("ok", None, Vec::new()),
            Err(e) if e.code() == "APP_DISABLED" => ("disabled", None, Vec::new()),
            Err(e) => {
                let errors = match e.data().and_then(|d| d.get("errors")).and_then(Value::as_array) {
                    Some(list) => list.clone(),
                    None => vec![json!({ "path": "", "message": e.message() })],
                };
                ("invalid", Some(e.code().to_string()), errors)
            }
        };
        VersionState { version: resolved.version.clone(), state, code, errors }
    }

    /// Every app version, loaded once: at start, so each manifest's problems are in the log
    /// before the first request.
    pub fn check_all(&self) -> Vec<(Resolved, VersionState)> {
        self.all_versions().into_iter().map(|r| (r.clone(), self.version_state(&r))).collect()
    }
}

/// Whether a cached load result is for this name and version (an error is, whatever it names).
fn same_version(value: &LoadResult, resolved: &Resolved) -> bool {
    match value {
        Ok(app) => app.name == resolved.name && app.version == resolved.version,
        Err(_) => true,
    }
}
