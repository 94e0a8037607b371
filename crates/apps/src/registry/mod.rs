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
//!
//! The code is split along those lines: `discover` scans the worker dirs and picks versions,
//! `loaded` keeps the loaded app versions up to date with the disk, `entrypoint` turns a
//! version's manifest into an [`App`], and `watch` drops caches on file-system events.

mod discover;
mod entrypoint;
mod loaded;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use serde::Serialize;

use discover::{Index, is_name};
use loaded::LoadedVersion;

pub use discover::{folder_version, is_app_name};
pub(crate) use discover::{has_version_folders, is_app_dir, is_simple_app_dir};
pub use entrypoint::{DEFAULT_ENTRYPOINTS, resolve_entrypoint};
pub use loaded::VersionState;
pub use watch::{ChangeHook, WatchHandle};

/// How long a directory scan or a loaded app stays valid without a change event.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_millis(1000);

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
    /// Loaded app versions by dir. Looked up on every request, so hashed with FxHash rather
    /// than SipHash (the keys are the operator's app dirs, not attacker-chosen).
    apps: Mutex<FxHashMap<PathBuf, LoadedVersion>>,
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

struct Cached<T> {
    at: Instant,
    generation: u64,
    value: T,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dirs", &self.dirs).field("cache_ttl", &self.cache_ttl).finish()
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
            apps: Mutex::new(FxHashMap::default()),
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
}
