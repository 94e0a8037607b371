//! Apps and the workers that run them.
//!
//! - [`manifest`]: an app's `manifest.yaml` (or legacy `worker.config.json`) read into one
//!   typed [`manifest::AppConfig`], with Buntime's keys, defaults and cross-field rules.
//! - [`registry`]: which apps exist in the worker dirs, and which version a URL segment such as
//!   `todo@^1.2` resolves to.
//! - [`static_files`]: the `static` worker kind, served by the runtime itself.

pub mod manifest;
