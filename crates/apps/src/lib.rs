//! The apps layer: what an app is, before anything runs it.
//!
//! - [`manifest`]: an app's `manifest.yaml` (or legacy `worker.config.json`) read into one
//!   typed [`manifest::AppConfig`], with Buntime's keys, defaults and cross-field rules.
//! - [`registry`]: which apps exist in the worker dirs, and which version a URL segment such as
//!   `todo@^1.2` resolves to; hands out [`app::App`] values.
//! - [`proxy_rules`]: the manifest's `proxy` rules, validated by the proxy layer.
//! - [`sandbox_key`]: the manifest's `sandbox.read`, the paths an app's workers may also read.
//! - [`outbound`]: `allowedOutboundHosts` patterns.
//! - [`check`]: `marina check`, the same reading with every problem reported at once.
//!
//! Running apps is the workers layer's job (`marina-workers`).

pub mod app;
pub mod check;
pub mod manifest;
pub mod outbound;
pub mod proxy_rules;
pub mod registry;
pub mod removal;
pub mod sandbox_key;
mod stamp;

pub use app::{App, MigratedMark, WorkerKind};
