//! One resolved app version: what the registry hands to dispatch.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::AppConfig;

/// How an app version is run. Chosen from its manifest and entrypoint (DESIGN.md, worker kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerKind {
    /// The entrypoint is `.html`: files served by the runtime itself.
    Static,
    /// The entrypoint is `.ts`/`.js`/`.mjs`/`.cjs`: a Bun or Node process running the host shim.
    Js,
    /// The manifest has `command`: any program listening on the `PORT` it is given.
    Process,
    /// The entrypoint is `.wasm`: a `wasi:http/proxy` component run in-process by wasmtime.
    Wasm,
}

impl WorkerKind {
    /// The lower-case name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Static => "static",
            WorkerKind::Js => "js",
            WorkerKind::Process => "process",
            WorkerKind::Wasm => "wasm",
        }
    }
}

/// An app version ready to dispatch to: where it lives, its typed config and its kind.
#[derive(Debug, Clone)]
pub struct App {
    /// The app name, as addressed in the URL (`todo` in `/todo@1/...`).
    pub name: String,
    /// The resolved version: a semver string such as `1.2.3`, or `latest`.
    pub version: String,
    /// The app version's directory (absolute).
    pub dir: PathBuf,
    /// The absolute path of the entrypoint file (inside `dir`).
    pub entrypoint: PathBuf,
    /// How it runs.
    pub kind: WorkerKind,
    /// The typed manifest (defaults applied).
    pub config: Arc<AppConfig>,
    /// The manifest's `proxy` rules, compiled once per app version.
    pub proxy: Arc<marina_proxy::RuleSet>,
    /// `name@version` ([`App::key_of`]), the pool's key: kept here because the request path
    /// needs it several times per request (pool lookups, counters, public routes) and
    /// formatting it each time was a measurable share of a small request's cost. Whoever
    /// changes `name` or `version` of a copy sets it again.
    pub key: String,
    /// Whether this app version's migrations are known to be applied: the server's migration
    /// bookkeeping marks it, so that a request to an app whose migrations ran needs no lookup
    /// (that lookup hashed the app's dir on every request). `Default::default()` when building
    /// an `App`; a copy starts unmarked.
    pub migrated: MigratedMark,
}

/// A mark the server's migration bookkeeping sets on an [`App`] once its migrations are applied:
/// the bookkeeping's generation at that time (it moves on whenever an app's files change, which
/// voids every mark), plus one; 0 is unmarked. Cloning gives an unmarked copy: a copy may be
/// edited into another app version.
#[derive(Debug, Default)]
pub struct MigratedMark(AtomicU64);

impl MigratedMark {
    /// The mark: 0 when unmarked.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Set the mark.
    pub fn set(&self, mark: u64) {
        self.0.store(mark, Ordering::Release);
    }
}

impl Clone for MigratedMark {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl App {
    /// The pool key, `name@version`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key of app `name` at `version`, as [`App::key`] holds it.
    pub fn key_of(name: &str, version: &str) -> String {
        format!("{name}@{version}")
    }

    /// Whether two loads of an app version describe the same thing (same files, same config):
    /// a different `Arc` with the same content is not a change worth restarting workers for.
    pub fn same_as(&self, other: &App) -> bool {
        self.name == other.name
            && self.version == other.version
            && self.dir == other.dir
            && self.entrypoint == other.entrypoint
            && self.kind == other.kind
            && self.config == other.config
    }
}
