//! The loaded plugins in load order, and the runners of their phases: per-hook timeout, panic
//! isolation, fail-closed by default, reverse order for `on_response` and `shutdown`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use marina_core::{Body, Error, Source};
use serde_json::json;

use crate::context::RequestContext;
use crate::plugin::{Outcome, Plugin, PluginSpec};

/// One loaded plugin.
#[derive(Clone)]
pub struct Loaded {
    /// Its manifest.
    pub spec: Arc<PluginSpec>,
    /// Its instance.
    pub plugin: Arc<dyn Plugin>,
    /// `spec.name`, shared with request contexts.
    pub name: Arc<str>,
}

impl Loaded {
    /// Pair a spec with its instance.
    pub fn new(spec: PluginSpec, plugin: Arc<dyn Plugin>) -> Self {
        let name: Arc<str> = Arc::from(spec.name.as_str());
        Self { spec: Arc::new(spec), plugin, name }
    }
}

/// The plugins of one load, in load order.
#[derive(Clone, Default)]
pub struct PluginSet {
    plugins: Vec<Loaded>,
    /// Indices of plugins with routes, longest base first.
    routed: Vec<usize>,
}

impl PluginSet {
    /// A set in the given (load) order.
    pub fn new(plugins: Vec<Loaded>) -> Self {
        let mut routed: Vec<usize> = (0..plugins.len())
            .filter(|&i| plugins[i].plugin.has_routes() && !plugins[i].spec.base.is_empty())
            .collect();
        routed.sort_by_key(|&i| std::cmp::Reverse(plugins[i].spec.base.len()));
        Self { plugins, routed }
    }

    /// The plugins in load order.
    pub fn plugins(&self) -> &[Loaded] {
        &self.plugins
    }

    /// True when nothing is loaded (the pipeline then skips every plugin phase).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The plugin with routes whose base holds `path` (longest base first), and the path below
    /// the base (always starting with `/`).
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Loaded, &'p str)> {
        self.routed.iter().map(|&i| &self.plugins[i]).find_map(|p| {
            let base = p.spec.base.as_str();
            if base == "/" {
                return Some((p, path));
            }
            match path.strip_prefix(base) {
                Some("") => Some((p, "/")),
                Some(rest) if rest.starts_with('/') => Some((p, rest)),
                _ => None,
            }
        })
    }

    /// The plugin and app that serve `path` as the app shell, if any plugin claims it.
    pub fn shell(&self, path: &str, headers: &http::HeaderMap) -> Option<(&Loaded, Arc<marina_apps::App>)> {
        self.plugins.iter().find_map(|p| p.plugin.shell(path, headers).map(|app| (p, app)))
    }

    /// Run the request phases: every plugin's `early_request` in load order, then the refusal
    /// authentication held back (if any), then every `on_request` in load order.
    /// `Ok(Some(response))` = a plugin answered.
    ///
    /// # Errors
    /// A plugin's deliberate client error (4xx) as it was returned (authentication's refusal
    /// included); 503 `PLUGIN_ONREQUEST_FAILED` when a hook failed, panicked or timed out and
    /// its plugin is not fail-open.
    pub async fn on_request(
        &self,
        req: &mut Request<Body>,
        ctx: &mut RequestContext,
    ) -> Result<Option<Response<Body>>, Error> {
        for early in [true, false] {
            for p in &self.plugins {
                let hook = if early { p.plugin.early_request(req, ctx) } else { p.plugin.on_request(req, ctx) };
                let hook = AssertUnwindSafe(hook).catch_unwind();
                let failure = match tokio::time::timeout(p.spec.hook_timeout, hook).await {
                    Ok(Ok(Ok(Outcome::Continue))) => continue,
                    Ok(Ok(Ok(Outcome::Respond(resp)))) => return Ok(Some(resp)),
                    // A client error is a deliberate answer; so is an upstream's failure that a
                    // hook passes on (the proxy plugin's 502/504): neither means the plugin failed.
                    Ok(Ok(Err(err))) if matches!(err.kind(), Source::Client | Source::Upstream) => return Err(err),
                    Ok(Ok(Err(err))) => Failure::Error(err),
                    Ok(Err(panic)) => Failure::Panic(panic_text(&panic)),
                    Err(_) => Failure::Timeout,
                };
                let detail = failure.to_string();
                let phase = if early { "early_request" } else { "on_request" };
                if p.spec.fail_open {
                    tracing::warn!(request_id = %ctx.request_id, plugin = %p.name, phase, error = %detail, "hook failed; the plugin is fail-open, going on");
                    continue;
                }
                tracing::error!(request_id = %ctx.request_id, plugin = %p.name, phase, error = %detail, "hook failed; answering 503");
                let timeout_ms = p.spec.hook_timeout.as_millis() as u64;
                let mut err = Error::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "PLUGIN_ONREQUEST_FAILED",
                    format!("plugin '{}' failed while checking the request: {detail}", p.name),
                )
                .with_data(json!({ "plugin": &*p.name, "reason": failure.reason(), "timeoutMs": timeout_ms }));
                if let Failure::Error(cause) = failure {
                    err = err.with_source(cause);
                }
                return Err(err);
            }
            if let Some(refusal) = ctx.refusal.take() {
                return Err(refusal);
            }
        }
        Ok(None)
    }

    /// Run every `on_response` in reverse load order (a panic or timeout counts as an error).
    ///
    /// # Errors
    /// The first failure, which replaces the response.
    pub async fn on_response(&self, resp: &mut Response<Body>, ctx: &mut RequestContext) -> Result<(), Error> {
        for p in self.plugins.iter().rev() {
            let hook = AssertUnwindSafe(p.plugin.on_response(resp, ctx)).catch_unwind();
            let failure = match tokio::time::timeout(p.spec.hook_timeout, hook).await {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(err))) => return Err(err),
                Ok(Err(panic)) => Failure::Panic(panic_text(&panic)),
                Err(_) => Failure::Timeout,
            };
            return Err(Error::internal(format!("plugin '{}' failed while finishing the response: {failure}", p.name))
                .with_data(json!({ "plugin": &*p.name, "reason": failure.reason() })));
        }
        Ok(())
    }

    /// Shut every plugin down, in reverse load order, each bounded by its hook timeout.
    pub async fn shutdown(&self) {
        for p in self.plugins.iter().rev() {
            let hook = AssertUnwindSafe(p.plugin.shutdown()).catch_unwind();
            match tokio::time::timeout(p.spec.hook_timeout, hook).await {
                Ok(Ok(())) => {}
                Ok(Err(panic)) => tracing::warn!(plugin = %p.name, panic = %panic_text(&panic), "shutdown panicked"),
                Err(_) => tracing::warn!(plugin = %p.name, "shutdown did not finish within the hook timeout"),
            }
        }
    }
}

enum Failure {
    Error(Error),
    Panic(String),
    Timeout,
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Error(_) => "error",
            Failure::Panic(_) => "panic",
            Failure::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "{e}"),
            Failure::Panic(p) => write!(f, "panicked: {p}"),
            Failure::Timeout => write!(f, "did not finish in time"),
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}
