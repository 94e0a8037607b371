//! The workers layer: running apps.
//!
//! - [`pool`]: the worker pool — slots, picking, in-flight guards, the ephemeral gate,
//!   timeouts, crash back-off, recycling, stats — the same policy for every kind.
//! - [`backend`]: the seam under the pool: what a worker kind provides (start and readiness,
//!   calls, lifecycle events, stop and kill, memory, exit).
//! - the kinds: [`process`] (`js`, `process`) and [`static_kind`] (`static`, served by
//!   [`static_files`]).
//! - [`tokens`]: the scoped token each worker gets for the keyval and database plugins.
//! - [`html`]: `injectBase` / `envPrefix` injection into HTML responses of any kind.
//!
//! What an app is (manifests, the registry) is the apps layer's (`marina-apps`).

pub mod backend;
pub mod html;
pub mod pool;
pub mod process;
pub mod static_files;
pub mod static_kind;
pub mod tokens;

/// A worker's output into marina's log — lines cut at [`output::MAX_LINE`] bytes, a rate
/// limit per worker, drops counted — for kinds outside this crate (wasm guests) too.
pub mod output {
    pub use crate::process::sandbox::output::{LINES_PER_SECOND, LineWriter, MAX_LINE, Output, Tail};
}
pub use pool::{AppDatabaseFn, AppDatabasePath, PoolMetrics, PoolOptions, WorkerInfo, WorkerPool};
pub use tokens::WorkerTokens;
