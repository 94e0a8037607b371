//! marina's plugins: the trait every plugin implements, the per-request context its phases
//! share, the loaded set and the runners of its phases.
//!
//! The pipeline (DESIGN.md), with the phases a plugin can take part in:
//!
//! 1. accept — the server creates a [`RequestContext`];
//! 2. admission: [`Plugin::early_request`] of every loaded plugin, in load order (authentication
//!    first, then the gateway's CORS preflights and rate limits, which so count refused requests
//!    too); a refusal held by authentication is answered when this phase ends; then
//!    [`Plugin::on_request`] of every loaded plugin, in load order (fail-closed, per-hook
//!    timeout, see [`PluginSet::on_request`]);
//! 3. route — internal API → plugin routes ([`Plugin::handle`], or the plugin's app
//!    [`Plugin::app`], longest base first) → apps →
//!    app shell ([`Plugin::shell`]) → 404;
//! 4. dispatch to the app;
//! 5. errors become responses at the server's one edge;
//! 6. [`Plugin::on_response`] in reverse load order (error responses included);
//! 7. completion — the access log, owned by the server.
//!
//! Plugins answer API requests with axum routers through [`api::call`], which hands errors
//! back to the server's edge instead of rendering them.

pub mod api;
pub mod app_request;
pub mod auth;
pub mod context;
pub mod data;
pub mod external;
pub mod gateway;
pub mod loader;
pub mod manifest;
pub mod order;
pub mod plugin;
pub mod proxy;
pub mod set;
#[cfg(test)]
mod test_db;

pub use context::{Identity, RequestContext, Slots};
pub use loader::{Catalog, canonical};
pub use plugin::{Admission, DEFAULT_HOOK_TIMEOUT, Factory, Outcome, Phases, Plugin, PluginEnv, PluginSpec};
pub use set::{Loaded, PluginSet};

/// Re-exported so plugins implement [`Plugin`] with the same macro version.
pub use async_trait::async_trait;
