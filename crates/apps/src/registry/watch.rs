//! Watching the worker dirs: a changed folder or app file drops the caches, and every changed
//! path is handed to the live-reload hook.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;

use marina_core::Error;

use super::Registry;
use crate::manifest::MANIFEST_FILES;

/// A function told about every changed path under the worker dirs.
pub type ChangeHook = Arc<dyn Fn(&Path) + Send + Sync>;

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

impl Registry {
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

#[cfg(test)]
mod tests {
    use super::*;

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
