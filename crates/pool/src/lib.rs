//! Apps and the workers that run them.
//!
//! - [`manifest`]: an app's `manifest.yaml` (or legacy `worker.config.json`) read into one
//!   typed [`manifest::AppConfig`], with Buntime's keys, defaults and cross-field rules.
//! - [`registry`]: which apps exist in the worker dirs, and which version a URL segment such as
//!   `todo@^1.2` resolves to; hands out [`app::App`] values.
//! - [`static_files`]: the `static` worker kind, served by the runtime itself.
//! - [`html`]: `injectBase` / `envPrefix` injection into HTML responses of any kind.
//! - [`worker`]: the `js` and `process` worker kinds and their lifecycle (the pool).

pub mod app;
pub mod check;
pub mod html;
pub mod manifest;
pub mod registry;
pub mod static_files;
pub mod worker;

pub use app::{App, WorkerKind};
