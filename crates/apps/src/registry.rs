//! App discovery in the worker dirs and version resolution (buntime.md §2.1).
//!
//! Apps live in the worker dirs (`RUNTIME_WORKER_DIRS`), in three layouts that may be mixed:
//!
//! | layout | example | version |
//! |---|---|---|
//! | flat | `todo@1.2.3/`, `todo@latest/` | after the `@` |
//! | nested | `todo/1.2.3/`, `todo/latest/` | the subfolder |
//! | simple | `todo/` holding a manifest, `package.json` or an `index.*` file | `latest` |
//!
//! A folder name that is neither `latest` nor a canonical semver (`1.2.3`, `1.0.0-beta.1`; not
//! `v1.2.3` or `1.2`) is not a version and is skipped. A `todo/` folder that has version
//! subfolders is nested, never also simple. Every worker dir is scanned; when two give the same
//! `name@version`, the first dir wins.
//!
//! Resolving the URL segment `name[@range]`: no range (or an empty one) → the `latest` folder if
//! there is one, else the highest semver (prereleases included, as `semver.rsort` does);
//! `@latest` → only the `latest` folder; any other range → node-semver `maxSatisfying` with
//! `includePrerelease`, `latest` never matching a range. Segments starting with `.` are never
//! apps, and neither is `api` while the internal API sits at `/api` (with a `RUNTIME_API_PREFIX`
//! an app named `api` is served at `/api/`, as in Buntime).
//!
//! Within one worker dir a flat `todo@1.0.0/` wins over a nested `todo/1.0.0/` (Buntime's
//! resolver reads flat entries first); across dirs the first dir wins.
//!
//! **Decisions where Buntime is quirky.** A `package.json` `version` does *not* override the
//! folder's version: the version an app runs as is the one the URL addressed, so pool keys,
//! `x-base` and listings always agree. A disabled app (`enabled: false`) still *resolves* (so a
//! request to it is not mistaken for another route) but [`Registry::load`] answers 404
//! `APP_DISABLED`.
//!
//! **Caching.** Resolution runs on every request, so the directory scan and each app version's
//! parsed manifest are cached. The scan is redone when [`Registry::watch`]'s notify watcher sees
//! a relevant change (a folder added/removed/renamed near the top of a worker dir, or a
//! manifest, `.env`, `package.json` or `index.*` file changing), and in any case after
//! [`DEFAULT_CACHE_TTL`] (1 s, Buntime's resolver TTL), so a missed event heals quickly.
//!
//! A manifest is read once per change on disk, never per request or per TTL: each loaded app
//! version keeps a [`stamp`](crate::stamp) of its files (`lstat`/`stat` only), and
//! [`Registry::refresh`] re-reads it only when the stamp changed (or a watcher event says so).
//! With [`Registry::refresh_in_background`] (what `marina serve` does) a request never reads
//! or even stats an app's files once the app is loaded: the server's reload task refreshes on
//! watcher events and sweeps the stamps once a second. Only the first request to an app version
//! that appeared since start (and that the reload task has not loaded yet) reads its manifest,
//! through [`marina_core::app_file`] (size-bounded, never blocking on a FIFO), and without
//! holding a lock other apps' requests need.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use nodejs_semver::{Range, Version};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::{Value, json};

use marina_core::Error;

use crate::app::{App, WorkerKind};
use crate::manifest::{self, AppConfig, MANIFEST_FILES};
use crate::stamp::{self, Stamp};

/// How long a directory scan or a loaded app stays valid without a change event.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_millis(1000);

/// The entrypoints tried, in order, when the manifest names none (or names a missing file).
pub const DEFAULT_ENTRYPOINTS: [&str; 4] = ["index.html", "index.ts", "index.js", "index.mjs"];

/// Longest URL segment considered for resolution; longer ones are not apps.
const MAX_SEGMENT_LEN: usize = 256;

/// A URL segment resolved to one app version on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resolved {
    /// The app name (`todo`).
    pub name: String,
    /// `latest` or a canonical semver (`1.2.3`).
    pub version: String,
    /// The app version's directory (absolute).
    pub dir: PathBuf,
}

/// One app in `GET /api/apps`: `{"name", "path", "versions"}` as Buntime answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppListing {
    /// The app name.
    pub name: String,
    /// Where the app was first found: `<worker dir>/<name>` for nested and simple apps, the
    /// first version folder for flat ones.
    pub path: PathBuf,
    /// `latest` first (when present), then semver versions, highest first.
    pub versions: Vec<String>,
}

/// The app registry: discovery, resolution and a cache of loaded app versions.
pub struct Registry {
    dirs: Vec<PathBuf>,
    cache_ttl: Duration,
    /// Whether a folder named `api` is an app (only when the internal API is not at `/api`).
    api_app: bool,
    /// Bumped by the watcher (or [`Registry::invalidate`]); caches from an older generation are stale.
    generation: Arc<AtomicU64>,
    index: RwLock<Option<Cached<Arc<Index>>>>,
    /// Held while rescanning the worker dirs.
    rescan: Mutex<()>,
    apps: Mutex<HashMap<PathBuf, LoadedVersion>>,
    /// Whether loaded apps are refreshed by someone else (the server's reload task), so that
    /// [`Registry::load`] never touches an app's files once it is loaded.
    background: AtomicBool,
    /// How many times an app version was read from disk (its manifest and `.env`).
    reads: AtomicU64,
    /// What was last logged about each app version dir (its warnings and error), so a manifest's
    /// problems are logged once per change, not on every refresh.
    logged: Mutex<HashMap<PathBuf, String>>,
    /// Called with every changed path the watcher sees (see [`Registry::on_change`]).
    on_change: Mutex<Option<ChangeHook>>,
}

/// A function told about every changed path under the worker dirs.
pub type ChangeHook = Arc<dyn Fn(&Path) + Send + Sync>;

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

struct Cached<T> {
    at: Instant,
    generation: u64,
    value: T,
}

/// A loaded app version and the stamp of the files it was read from.
struct LoadedVersion {
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

/// Every app found in the worker dirs.
#[derive(Debug, Default)]
struct Index {
    apps: BTreeMap<String, AppEntry>,
}

#[derive(Debug)]
struct AppEntry {
    path: PathBuf,
    latest: Option<PathBuf>,
    /// Highest first.
    versions: Vec<(Version, PathBuf)>,
}

/// Keeps the file watcher of [`Registry::watch`] alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    /// The worker dirs actually watched (those that existed when watching started).
    pub watched: Vec<PathBuf>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").field("watched", &self.watched).finish()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dirs", &self.dirs).field("cache_ttl", &self.cache_ttl).finish()
    }
}

/// Whether `name` may be an app name: not empty, not starting with `.`, not `api`, and a
/// single path segment.
pub fn is_app_name(name: &str) -> bool {
    is_name(name, false)
}

/// [`is_app_name`], with `api` allowed when `api_app` (the internal API is elsewhere).
fn is_name(name: &str, api_app: bool) -> bool {
    !name.is_empty() && !name.starts_with('.') && (api_app || name != "api") && !name.contains(['/', '\\', '\0', '@'])
}

/// `Some(version)` when `s` is a canonical semver a folder may be named after.
pub fn folder_version(s: &str) -> Option<Version> {
    // nodejs-semver is loose (`v1.2.3`, `=1.2.3`, ` 1.2.3`); folders must be canonical so that a
    // version has exactly one folder name.
    let v = Version::parse(s).ok()?;
    (v.to_string() == s).then_some(v)
}

fn is_simple_app_dir(dir: &Path) -> bool {
    // A manifest of any file type makes an app (a FIFO manifest is then refused, not ignored).
    MANIFEST_FILES.iter().any(|f| marina_core::app_file::has_entry(dir, f))
        || ["package.json"].iter().chain(DEFAULT_ENTRYPOINTS.iter()).any(|f| dir.join(f).is_file())
}

fn sorted_dir_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    names
}

impl Index {
    fn scan(dirs: &[PathBuf], api_app: bool) -> Index {
        let mut index = Index::default();
        for wd in dirs {
            let names = sorted_dir_names(wd);
            let dirs_named = |flat: bool| {
                names
                    .iter()
                    .filter(move |e| !e.starts_with('.') && e.contains('@') == flat)
                    .map(|e| (e, wd.join(e)))
                    .filter(|(_, p)| p.is_dir())
            };
            // Flat folders first: within one dir `todo@1.0.0/` wins over `todo/1.0.0/`.
            for (entry, path) in dirs_named(true) {
                let Some((name, version)) = entry.split_once('@') else { continue };
                if !is_name(name, api_app) {
                    continue;
                }
                if version == "latest" {
                    index.add(name, path.clone(), None, path);
                } else if let Some(v) = folder_version(version) {
                    index.add(name, path.clone(), Some(v), path);
                }
            }
            for (entry, path) in dirs_named(false) {
                if !is_name(entry, api_app) {
                    continue;
                }
                let mut nested = false;
                for sub in sorted_dir_names(&path) {
                    let sub_path = path.join(&sub);
                    if !sub_path.is_dir() {
                        continue;
                    }
                    if sub == "latest" {
                        index.add(entry, path.clone(), None, sub_path);
                        nested = true;
                    } else if let Some(v) = folder_version(&sub) {
                        index.add(entry, path.clone(), Some(v), sub_path);
                        nested = true;
                    }
                }
                if !nested && is_simple_app_dir(&path) {
                    index.add(entry, path.clone(), None, path);
                }
            }
        }
        index
    }

    /// Record one version; the first one seen (first worker dir) wins.
    fn add(&mut self, name: &str, app_path: PathBuf, version: Option<Version>, dir: PathBuf) {
        let entry = self.apps.entry(name.to_string()).or_insert_with(|| AppEntry {
            path: app_path,
            latest: None,
            versions: Vec::new(),
        });
        match version {
            None => {
                entry.latest.get_or_insert(dir);
            }
            Some(v) => {
                if let Err(pos) = entry.versions.binary_search_by(|(x, _)| v.cmp(x)) {
                    entry.versions.insert(pos, (v, dir));
                }
            }
        }
    }
}

impl AppEntry {
    fn pick(&self, range: Option<&str>) -> Option<(String, &PathBuf)> {
        let latest = || self.latest.as_ref().map(|d| ("latest".to_string(), d));
        let highest = || self.versions.first().map(|(v, d)| (v.to_string(), d));
        match range.map(str::trim) {
            None | Some("") => latest().or_else(highest),
            Some("latest") => latest(),
            Some(r) => {
                let range = Range::parse(r).ok()?;
                // `versions` is sorted highest first, so the first match is the max satisfying.
                self.versions
                    .iter()
                    .find(|(v, _)| range.satisfies_with_prerelease(v, true))
                    .map(|(v, d)| (v.to_string(), d))
            }
        }
    }
}

impl Registry {
    /// A registry over `dirs`, in priority order. Relative dirs are made absolute against the
    /// current directory. Nothing is read until the first call.
    pub fn new(dirs: Vec<PathBuf>) -> Registry {
        let dirs = dirs.into_iter().map(|d| std::path::absolute(&d).unwrap_or(d)).collect();
        Registry {
            dirs,
            cache_ttl: DEFAULT_CACHE_TTL,
            api_app: false,
            generation: Arc::new(AtomicU64::new(0)),
            index: RwLock::new(None),
            rescan: Mutex::new(()),
            apps: Mutex::new(HashMap::new()),
            background: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            logged: Mutex::new(HashMap::new()),
            on_change: Mutex::new(None),
        }
    }

    /// Change how long caches live without a change event (default [`DEFAULT_CACHE_TTL`]).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Registry {
        self.cache_ttl = ttl;
        self
    }

    /// Serve a folder named `api` as an app: right when the internal API is not at `/api`
    /// (`RUNTIME_API_PREFIX` is set), as Buntime does.
    pub fn with_api_app(mut self, api_app: bool) -> Registry {
        self.api_app = api_app;
        self
    }

    /// The worker dirs, absolute, in priority order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Drop every cache now (after an upload or removal through the API, for instance).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn fresh<T>(&self, c: &Cached<T>, generation: u64) -> bool {
        c.generation == generation && c.at.elapsed() < self.cache_ttl
    }

    fn index(&self) -> Arc<Index> {
        let generation = self.generation.load(Ordering::Acquire);
        // Only TTL-expired (not invalidated) scans may be served while another thread rescans.
        let expired = match self.index.read().as_ref() {
            Some(c) if self.fresh(c, generation) => return c.value.clone(),
            Some(c) if c.generation == generation => Some(c.value.clone()),
            _ => None,
        };
        // One rescan at a time: under load, the other requests keep the expired scan for the
        // few milliseconds a rescan takes instead of all scanning the disk at once.
        let _guard = match (self.rescan.try_lock(), expired) {
            (Some(guard), _) => guard,
            (None, Some(expired)) => return expired,
            (None, None) => self.rescan.lock(),
        };
        if let Some(c) = self.index.read().as_ref().filter(|c| self.fresh(c, generation)) {
            return c.value.clone();
        }
        let index = Arc::new(Index::scan(&self.dirs, self.api_app));
        *self.index.write() = Some(Cached { at: Instant::now(), generation, value: index.clone() });
        index
    }

    /// Resolve a URL segment (`todo`, `todo@1`, `todo@^1.2.0`, `todo@latest`; already
    /// percent-decoded) to an app version, or `None` when no app or version matches.
    pub fn resolve(&self, segment: &str) -> Option<Resolved> {
        if segment.len() > MAX_SEGMENT_LEN {
            return None;
        }
        let (name, range) = match segment.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (segment, None),
        };
        if !is_name(name, self.api_app) {
            return None;
        }
        let index = self.index();
        let (version, dir) = index.apps.get(name)?.pick(range)?;
        Some(Resolved { name: name.to_string(), version, dir: dir.clone() })
    }

    /// Every app and its versions, sorted by name: the body of `GET /api/apps`.
    pub fn list(&self) -> Vec<AppListing> {
        self.index()
            .apps
            .iter()
            .map(|(name, e)| AppListing {
                name: name.clone(),
                path: e.path.clone(),
                versions: e
                    .latest
                    .iter()
                    .map(|_| "latest".to_string())
                    .chain(e.versions.iter().map(|(v, _)| v.to_string()))
                    .collect(),
            })
            .collect()
    }

    /// Every `(name, version, dir)` known, for checks and listings.
    pub fn all_versions(&self) -> Vec<Resolved> {
        let index = self.index();
        let mut out = Vec::new();
        for (name, e) in &index.apps {
            if let Some(d) = &e.latest {
                out.push(Resolved { name: name.clone(), version: "latest".into(), dir: d.clone() });
            }
            for (v, d) in &e.versions {
                out.push(Resolved { name: name.clone(), version: v.to_string(), dir: d.clone() });
            }
        }
        out
    }

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
        if let Some(c) = self.apps.lock().get(&resolved.dir)
            && same_version(&c.cached.value, resolved)
            && (self.background.load(Ordering::Relaxed) || self.fresh(&c.cached, generation))
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

    /// Be told about every changed path under the worker dirs (any file, unfiltered), after the
    /// registry's own caches have been dropped for it. Used for live reload.
    pub fn on_change(&self, hook: ChangeHook) {
        *self.on_change.lock() = Some(hook);
    }

    /// Watch the worker dirs (recursively, with `notify`) and drop caches when something
    /// relevant changes. Worker dirs that do not exist yet are not watched; the cache TTL still
    /// picks up their apps.
    ///
    /// # Errors
    /// 500 `WATCH_FAILED` when no watcher can be created at all (watching a single dir failing
    /// is only logged).
    pub fn watch(self: &Arc<Self>) -> Result<WatchHandle, Error> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let generation = self.generation.clone();
        let dirs = self.dirs.clone();
        let me = Arc::downgrade(self);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                if ev.paths.is_empty() || ev.paths.iter().any(|p| is_relevant_change(&dirs, p)) {
                    generation.fetch_add(1, Ordering::Release);
                }
                let hook = me.upgrade().and_then(|r| r.on_change.lock().clone());
                if let Some(hook) = hook {
                    for p in &ev.paths {
                        hook(p);
                    }
                }
            }
            Err(_) => {
                generation.fetch_add(1, Ordering::Release);
            }
        })
        .map_err(|e| {
            Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "WATCH_FAILED",
                format!("cannot watch the worker dirs for changes: {e}"),
            )
            .with_source(e)
        })?;
        let mut watched = Vec::new();
        for d in &self.dirs {
            if !d.is_dir() {
                continue;
            }
            match watcher.watch(d, RecursiveMode::Recursive) {
                Ok(()) => watched.push(d.clone()),
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch worker dir; changes are seen within the cache TTL")
                }
            }
        }
        // Anything that happened before the watch began must not be hidden by a cache.
        self.invalidate();
        Ok(WatchHandle { _watcher: watcher, watched })
    }
}

/// Whether a cached load result is for this name and version (an error is, whatever it names).
fn same_version(value: &LoadResult, resolved: &Resolved) -> bool {
    match value {
        Ok(app) => app.name == resolved.name && app.version == resolved.version,
        Err(_) => true,
    }
}

/// Whether a changed path can change discovery or a loaded app: a folder near the top of a
/// worker dir (app, flat version, nested version), or a manifest / `.env` / `package.json` /
/// `index.*` file anywhere.
fn is_relevant_change(dirs: &[PathBuf], path: &Path) -> bool {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    if MANIFEST_FILES.contains(&file) || file == ".env" || file == "package.json" || file.starts_with("index.")
        // A WebAssembly app's component, rebuilt in place.
        || file.ends_with(".wasm")
    {
        return true;
    }
    dirs.iter().any(|d| path.strip_prefix(d).is_ok_and(|rel| rel.components().count() <= 2))
}

/// Load one app version: the app, or why not, and the warnings to log about it.
fn build_app(resolved: &Resolved) -> (Result<App, Error>, Vec<String>) {
    let loaded = match manifest::load(&resolved.dir) {
        Ok(l) => l,
        Err(e) => {
            let warnings = e.warnings.clone();
            return (Err(e.into()), warnings);
        }
    };
    let mut warnings = loaded.warnings.clone();
    if let Some(e) = loaded.config.entrypoint.as_deref().filter(|e| !resolved.dir.join(e).is_file()) {
        warnings.push(format!("the manifest's entrypoint {e:?} does not exist; trying index.*"));
    }
    (build_from(resolved, loaded), warnings)
}

fn build_from(resolved: &Resolved, loaded: manifest::LoadedManifest) -> Result<App, Error> {
    let config = loaded.config;
    if !config.enabled {
        let file = loaded.source.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            "APP_DISABLED",
            format!("app {}@{} is disabled (`enabled: false` in {file})", resolved.name, resolved.version),
        )
        .with_data(json!({ "app": resolved.name, "version": resolved.version })));
    }
    let (entrypoint, kind) = resolve_entrypoint(&resolved.dir, &config)?;
    let proxy = Arc::new(crate::proxy_rules::compile(&config.proxy)?);
    Ok(App {
        name: resolved.name.clone(),
        version: resolved.version.clone(),
        dir: resolved.dir.clone(),
        entrypoint,
        kind,
        config: Arc::new(config),
        proxy,
    })
}

/// The entrypoint file of the app in `dir` (buntime.md §2.2) and the worker kind it implies.
///
/// The manifest's `entrypoint` is used when that file exists; otherwise the first existing of
/// [`DEFAULT_ENTRYPOINTS`]. With `command` the kind is always `Process` and the entrypoint is
/// informational (the app dir itself when no file is found). Unlike Buntime, a missing
/// entrypoint is an error here, not a worker that fails later.
///
/// # Errors
/// 500 `APP_ENTRYPOINT_NOT_FOUND`, `APP_ENTRYPOINT_OUTSIDE` (the file resolves, through `..` or
/// a symlink, outside the app dir) or `APP_ENTRYPOINT_UNSUPPORTED` (an extension no worker
/// kind runs).
pub fn resolve_entrypoint(dir: &Path, config: &AppConfig) -> Result<(PathBuf, WorkerKind), Error> {
    let configured = config.entrypoint.as_deref().filter(|e| dir.join(e).is_file());
    let found = configured.or_else(|| DEFAULT_ENTRYPOINTS.iter().copied().find(|f| dir.join(f).is_file()));
    let Some(rel) = found else {
        if config.command.is_some() {
            return Ok((dir.to_path_buf(), WorkerKind::Process));
        }
        let tried = config
            .entrypoint
            .iter()
            .map(String::as_str)
            .chain(DEFAULT_ENTRYPOINTS)
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ");
        // A WebAssembly app whose component was not built yet (it is not committed).
        let hint = config
            .entrypoint
            .as_deref()
            .filter(|e| e.ends_with(".wasm"))
            .map(|e| dir.join(e).with_extension("wat"))
            .filter(|wat| wat.is_file())
            .map(|wat| format!("; build it with `marina wasm build {}`", wat.display()))
            .unwrap_or_default();
        return Err(Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "APP_ENTRYPOINT_NOT_FOUND",
            format!("app dir {} has no entrypoint: none of {tried} exists{hint}", dir.display()),
        )
        .with_data(json!({ "dir": dir.display().to_string() })));
    };
    let path = dir.join(rel);
    let outside = || {
        Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "APP_ENTRYPOINT_OUTSIDE",
            format!("entrypoint {rel:?} resolves outside the app dir {}", dir.display()),
        )
        .with_data(json!({ "dir": dir.display().to_string(), "entrypoint": rel }))
    };
    // `..` or a symlink may lead out of the dir: only the real paths can tell.
    let (Ok(real_dir), Ok(real_path)) = (dir.canonicalize(), path.canonicalize()) else {
        return Err(outside());
    };
    if !real_path.starts_with(&real_dir) {
        return Err(outside());
    }
    if config.command.is_some() {
        return Ok((path, WorkerKind::Process));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let kind = match ext.as_str() {
        "html" | "htm" => WorkerKind::Static,
        "ts" | "js" | "mjs" | "cjs" => WorkerKind::Js,
        "wasm" => WorkerKind::Wasm,
        _ => {
            return Err(Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "APP_ENTRYPOINT_UNSUPPORTED",
                format!(
                    "entrypoint {rel:?} cannot be run: expected a .html file (static), a .ts/.js/.mjs/.cjs file (js), a .wasm component (wasm), or a `command` in the manifest to run the app as a process"
                ),
            )
            .with_data(json!({ "dir": dir.display().to_string(), "entrypoint": rel })));
        }
    };
    Ok((path, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_versions_must_be_canonical() {
        for ok in ["1.2.3", "0.0.0", "1.0.0-beta.1", "10.20.30-rc.1", "1.0.0+build.5", "1.0.0-alpha+sha.1"] {
            assert!(folder_version(ok).is_some(), "{ok} should be a version folder");
        }
        for bad in ["v1.2.3", "=1.2.3", "1.2", "1", "latest", "01.2.3", " 1.2.3", "1.2.3 ", "notes", ""] {
            assert!(folder_version(bad).is_none(), "{bad:?} should not be a version folder");
        }
    }

    #[test]
    fn app_names() {
        for ok in ["todo", "my-app", "a_b", "x1"] {
            assert!(is_app_name(ok), "{ok}");
        }
        for bad in ["", "api", ".well-known", ".env", "a/b", "a\\b", "@scope", "a@b"] {
            assert!(!is_app_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn which_changes_invalidate() {
        let dirs = [PathBuf::from("/w")];
        let yes = [
            "/w/todo",
            "/w/todo@1.0.0",
            "/w/todo/1.0.0",
            "/w/todo/1.0.0/manifest.yaml",
            "/w/a/b/c/.env",
            "/w/todo/1.0.0/app.wasm",
        ];
        for p in yes {
            assert!(is_relevant_change(&dirs, Path::new(p)), "{p}");
        }
        let no = ["/w/todo/1.0.0/data.db", "/w/todo@1.0.0/node_modules/x/y.js", "/w/todo/1.0.0/src/app.ts"];
        for p in no {
            assert!(!is_relevant_change(&dirs, Path::new(p)), "{p}");
        }
    }
}
