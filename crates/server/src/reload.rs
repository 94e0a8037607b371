//! Live reload: changes on disk to an app version's files restart its workers.
//!
//! The registry's file watcher reports every changed path under the worker dirs. This task maps
//! each to the app version dir holding it, drops paths an app writes itself ([`is_app_output`]),
//! waits until the dir has been quiet for [`QUIET`] (editors and `cp -r` write in bursts), then
//! re-reads the app version and asks the pool to reload it: new workers start beside the old
//! ones, which keep serving until one is ready. A manifest that no longer loads is logged (once)
//! and the running workers keep serving the previous version. The app's migration state is
//! dropped too, so new migration files are applied before the new workers start.
//!
//! This task is also what keeps manifests off the request path: once it runs, the registry
//! hands requests the loaded app versions as they are ([`marina_apps::registry::Registry::refresh_in_background`]),
//! and a manifest is read here — on a watcher event, or when the once-a-second [`SWEEP`] of
//! file stamps (`stat` only) finds a change the watcher missed — never by a request.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Runtime;

/// How long an app version's files must be unchanged before it reloads.
pub const QUIET: Duration = Duration::from_millis(150);
/// The longest a reload waits for changes to stop.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// How often loaded app versions' file stamps are compared with the disk, for changes the
/// watcher did not report.
pub const SWEEP: Duration = Duration::from_secs(1);

/// Directory names whose contents an app (or `autoInstall`) writes: never a reason to reload.
const OUTPUT_DIRS: [&str; 8] = ["node_modules", "data", "tmp", "logs", ".git", "__pycache__", ".cache", ".marina"];
/// File suffixes of databases, logs and editor scratch files.
const OUTPUT_SUFFIXES: [&str; 11] =
    [".db", ".db-wal", ".db-shm", ".db-journal", ".sqlite", ".sqlite3", ".log", ".swp", ".swx", ".tmp", "~"];

/// Whether `rel` (relative to the app version dir) is something the app writes rather than
/// something it is made of: its data and logs, installed packages, caches, editor swap files.
pub fn is_app_output(rel: &Path) -> bool {
    let mut parts = rel.components().filter_map(|c| match c {
        Component::Normal(s) => s.to_str(),
        _ => None,
    });
    let Some(file) = rel.file_name().and_then(|f| f.to_str()) else { return false };
    parts.any(|p| OUTPUT_DIRS.contains(&p))
        || OUTPUT_SUFFIXES.iter().any(|s| file.ends_with(s))
        || file.starts_with(".#")
        || file == "4913" // vim's probe file
}

/// Start the reload task; it runs until the runtime is dropped.
pub fn start(rt: &Arc<Runtime>) {
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    rt.registry.on_change(Arc::new(move |p: &Path| {
        let _ = tx.send(p.to_path_buf());
    }));
    rt.registry.refresh_in_background();
    tokio::spawn(run(Arc::downgrade(rt), rx));
    tokio::spawn(sweep(Arc::downgrade(rt)));
}

/// Every [`SWEEP`], refresh the app versions whose files changed without a watcher event, on a
/// blocking thread (a slow disk never stalls the runtime's workers), and reload their workers.
async fn sweep(rt: Weak<Runtime>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(registry) = rt.upgrade().map(|rt| rt.registry.clone()) else { return };
        let Ok(changed) = tokio::task::spawn_blocking(move || registry.sweep()).await else { continue };
        let Some(rt) = rt.upgrade() else { return };
        for app in changed {
            rt.migrations.forget(&app.dir);
            rt.pool.reload(app, "its manifest or .env changed");
        }
    }
}

async fn run(rt: Weak<Runtime>, mut rx: mpsc::UnboundedReceiver<PathBuf>) {
    // App version dir → (first change seen, last change seen, one changed path for the log).
    let mut pending: HashMap<PathBuf, (Instant, Instant, PathBuf)> = HashMap::new();
    loop {
        let next = pending.values().map(|(first, last, _)| (*last + QUIET).min(*first + MAX_WAIT)).min();
        let received = match next {
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(Some(p)) => Received::Path(p),
                Ok(None) => Received::Closed,
                Err(_) => Received::Timeout,
            },
            None => match rx.recv().await {
                Some(p) => Received::Path(p),
                None => Received::Closed,
            },
        };
        let Some(rt) = rt.upgrade() else { return };
        match received {
            Received::Path(path) => {
                if let Some(dir) = app_dir_of(&rt, &path) {
                    let now = Instant::now();
                    let entry = pending.entry(dir).or_insert((now, now, path));
                    entry.1 = now;
                }
            }
            Received::Closed => return,
            Received::Timeout => {}
        }
        let now = Instant::now();
        let due: Vec<PathBuf> = pending
            .iter()
            .filter(|(_, (first, last, _))| now >= *last + QUIET || now >= *first + MAX_WAIT)
            .map(|(d, _)| d.clone())
            .collect();
        for dir in due {
            if let Some((_, _, path)) = pending.remove(&dir) {
                apply(&rt, &dir, &path);
            }
        }
    }
}

enum Received {
    Path(PathBuf),
    Closed,
    Timeout,
}

/// The app version dir that holds `path` (the deepest one, so `todo/1.0.0/` beats `todo/`), if
/// the change is one that should reload it.
fn app_dir_of(rt: &Runtime, path: &Path) -> Option<PathBuf> {
    let dir = rt
        .registry
        .all_versions()
        .into_iter()
        .map(|r| r.dir)
        .filter(|d| path.starts_with(d))
        .max_by_key(|d| d.components().count())?;
    let rel = path.strip_prefix(&dir).ok()?;
    if rel.as_os_str().is_empty() || is_app_output(rel) {
        return None;
    }
    Some(dir)
}

/// Reload one app version after its files changed.
fn apply(rt: &Runtime, dir: &Path, changed: &Path) {
    let Some(resolved) = rt.registry.all_versions().into_iter().find(|r| r.dir == dir) else { return };
    rt.migrations.forget(dir);
    let what = changed.strip_prefix(dir).unwrap_or(changed).display().to_string();
    match rt.registry.refresh(&resolved, true) {
        Ok(app) => rt.pool.reload(app, &format!("{what} changed")),
        Err(e) => {
            // The registry has logged the problem (once); say what happens to the running app.
            if rt.pool.serving(&format!("{}@{}", resolved.name, resolved.version)).is_some() {
                tracing::warn!(
                    app = %resolved.name,
                    version = %resolved.version,
                    code = e.code(),
                    "after a change to {what} the app does not load; its running workers keep serving the previous version"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_app_writes_does_not_reload_it() {
        for p in [
            "node_modules/x/index.js",
            "data/todo.db",
            "todo.db-wal",
            "server.log",
            ".git/index",
            "src/__pycache__/m.cpython-312.pyc",
            "index.ts.swp",
            "index.ts~",
            ".#index.ts",
        ] {
            assert!(is_app_output(Path::new(p)), "{p}");
        }
        for p in ["index.ts", "src/lib/db.ts", "manifest.yaml", ".env", "package.json", "public/app.css"] {
            assert!(!is_app_output(Path::new(p)), "{p}");
        }
    }
}
