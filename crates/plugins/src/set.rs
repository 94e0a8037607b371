//! The loaded plugins in load order, and the runners of their phases: per-hook timeout, panic
//! isolation, fail-closed by default, reverse order for `on_response` and `shutdown`.
//!
//! A request pays only for the hooks plugins implement ([`Plugin::phases`]), and a hook that
//! finishes without waiting (most do: a header check, a counter) arms no timer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use marina_core::{Body, Error, Source};
use serde_json::json;

use crate::context::RequestContext;
use crate::plugin::{Admission, Outcome, Plugin, PluginSpec};

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
    /// Indices of the plugins implementing `early_request`, in load order.
    early: Vec<usize>,
    /// Indices of the plugins implementing `on_request`, in load order.
    request: Vec<usize>,
    /// Indices of the plugins implementing `on_response`, in reverse load order.
    response: Vec<usize>,
}

impl PluginSet {
    /// A set in the given (load) order.
    pub fn new(plugins: Vec<Loaded>) -> Self {
        let mut routed: Vec<usize> = (0..plugins.len())
            .filter(|&i| plugins[i].plugin.has_routes() && !plugins[i].spec.base.is_empty())
            .collect();
        routed.sort_by_key(|&i| std::cmp::Reverse(plugins[i].spec.base.len()));
        let phases: Vec<_> = plugins.iter().map(|p| p.plugin.phases()).collect();
        let with =
            |has: fn(&crate::Phases) -> bool| (0..plugins.len()).filter(|&i| has(&phases[i])).collect::<Vec<_>>();
        let early = with(|p| p.early_request);
        let request = with(|p| p.on_request);
        let mut response = with(|p| p.on_response);
        response.reverse();
        Self { plugins, routed, early, request, response }
    }

    /// The plugins in load order.
    pub fn plugins(&self) -> &[Loaded] {
        &self.plugins
    }

    /// True when nothing is loaded (the pipeline then skips every plugin phase).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// True when some plugin implements `on_response`.
    pub fn has_response_hooks(&self) -> bool {
        !self.response.is_empty()
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
            let phase = if early { &self.early } else { &self.request };
            for p in phase.iter().map(|&i| &self.plugins[i]) {
                let ran = if early {
                    let (r, c) = (&mut *req, &mut *ctx);
                    // Moved into the call (an `FnOnce`): the admission borrows them until it ends.
                    let admit = move || {
                        let (r, c) = (r, c);
                        p.plugin.early_request(r, c)
                    };
                    match std::panic::catch_unwind(AssertUnwindSafe(admit)) {
                        Ok(Admission::Decided(result)) => Some(Ok(result)),
                        Ok(Admission::Wait(wait)) => bounded(p.spec.hook_timeout, wait).await,
                        Err(panic) => Some(Err(panic)),
                    }
                } else {
                    bounded(p.spec.hook_timeout, p.plugin.on_request(req, ctx)).await
                };
                let failure = match ran {
                    Some(Ok(Ok(Outcome::Continue))) => continue,
                    Some(Ok(Ok(Outcome::Respond(resp)))) => return Ok(Some(resp)),
                    // A client error is a deliberate answer; so is an upstream's failure that a
                    // hook passes on (the proxy plugin's 502/504): neither means the plugin failed.
                    Some(Ok(Err(err))) if matches!(err.kind(), Source::Client | Source::Upstream) => return Err(err),
                    Some(Ok(Err(err))) => Failure::Error(err),
                    Some(Err(panic)) => Failure::Panic(panic_text(&panic)),
                    None => Failure::Timeout,
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

    /// Run every `on_response` in reverse load order (a panic counts as an error).
    ///
    /// # Errors
    /// The first failure, which replaces the response.
    pub fn on_response(&self, resp: &mut Response<Body>, ctx: &mut RequestContext) -> Result<(), Error> {
        for p in self.response.iter().map(|&i| &self.plugins[i]) {
            let failure = match std::panic::catch_unwind(AssertUnwindSafe(|| p.plugin.on_response(resp, ctx))) {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => return Err(err),
                Err(panic) => Failure::Panic(panic_text(&panic)),
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

/// Runs one hook isolated from panics and bounded by `limit` (`None`: it ran out of time), the
/// way `tokio::time::timeout` would; but the clock is read and the timer armed only once the
/// hook has to wait, counting from then, so a hook that finishes at its first poll (most do)
/// costs no clock read and never touches the timer wheel. What the first poll ran before it
/// waited is CPU work without a wait, a negligible part of a limit of seconds.
async fn bounded<F: Future>(limit: Duration, hook: F) -> Option<std::thread::Result<F::Output>> {
    let mut hook = std::pin::pin!(AssertUnwindSafe(hook).catch_unwind());
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = hook.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::plugin::Phases;

    /// Counts its `on_request` calls; panics in any hook it did not list.
    struct Listed(AtomicUsize);

    #[crate::async_trait]
    impl Plugin for Listed {
        fn phases(&self) -> Phases {
            Phases { on_request: true, ..Phases::NONE }
        }
        fn early_request<'a>(&'a self, _: &'a mut Request<Body>, _: &'a mut RequestContext) -> Admission<'a> {
            panic!("early_request is not listed")
        }
        async fn on_request(&self, _: &mut Request<Body>, _: &mut RequestContext) -> Result<Outcome, Error> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(Outcome::Continue)
        }
        fn on_response(&self, _: &mut Response<Body>, _: &mut RequestContext) -> Result<(), Error> {
            panic!("on_response is not listed")
        }
    }

    /// Lists nothing (the default: every hook), counts its `on_response` calls.
    struct Unlisted(AtomicUsize);

    #[crate::async_trait]
    impl Plugin for Unlisted {
        fn on_response(&self, _: &mut Response<Body>, _: &mut RequestContext) -> Result<(), Error> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn ctx() -> RequestContext {
        RequestContext::new("r", "127.0.0.1:1".parse().unwrap(), http::Method::GET, "/")
    }

    #[tokio::test]
    async fn only_the_hooks_a_plugin_lists_are_called() {
        let listed = Arc::new(Listed(AtomicUsize::new(0)));
        let unlisted = Arc::new(Unlisted(AtomicUsize::new(0)));
        let set = PluginSet::new(vec![
            Loaded::new(PluginSpec::new("listed", ""), listed.clone()),
            Loaded::new(PluginSpec::new("unlisted", ""), unlisted.clone()),
        ]);
        assert!(set.has_response_hooks());
        let mut req = Request::new(marina_core::body::empty());
        let mut ctx = ctx();
        assert!(set.on_request(&mut req, &mut ctx).await.unwrap().is_none());
        let mut resp = Response::new(marina_core::body::empty());
        set.on_response(&mut resp, &mut ctx).unwrap();
        assert_eq!(listed.0.load(Ordering::Relaxed), 1);
        assert_eq!(unlisted.0.load(Ordering::Relaxed), 1);
        let only_listed = PluginSet::new(vec![Loaded::new(PluginSpec::new("listed", ""), listed)]);
        assert!(!only_listed.has_response_hooks());
    }

    /// An admission hook that panics while deciding, or waits past its timeout.
    struct Admits(&'static str);

    #[crate::async_trait]
    impl Plugin for Admits {
        fn phases(&self) -> Phases {
            Phases { early_request: true, ..Phases::NONE }
        }
        fn early_request<'a>(&'a self, _: &'a mut Request<Body>, _: &'a mut RequestContext) -> Admission<'a> {
            match self.0 {
                "panics" => panic!("deciding failed"),
                "waits" => Admission::Wait(Box::pin(std::future::pending())),
                _ => {
                    Admission::Wait(Box::pin(async { Ok(Outcome::Respond(Response::new(marina_core::body::empty()))) }))
                }
            }
        }
    }

    #[tokio::test]
    async fn admission_fails_closed_when_deciding_panics_or_waiting_times_out() {
        for (how, reason) in [("panics", "panic"), ("waits", "timeout")] {
            let mut spec = PluginSpec::new(how, "");
            spec.hook_timeout = Duration::from_millis(20);
            let set = PluginSet::new(vec![Loaded::new(spec, Arc::new(Admits(how)))]);
            let mut req = Request::new(marina_core::body::empty());
            let err = set.on_request(&mut req, &mut ctx()).await.unwrap_err();
            assert_eq!(
                (err.status(), err.code()),
                (StatusCode::SERVICE_UNAVAILABLE, "PLUGIN_ONREQUEST_FAILED"),
                "{how}"
            );
            assert_eq!(err.data().unwrap()["reason"], reason, "{how}");
        }
        // A wait that ends in time answers.
        let set = PluginSet::new(vec![Loaded::new(PluginSpec::new("answers", ""), Arc::new(Admits("answers")))]);
        let mut req = Request::new(marina_core::body::empty());
        assert!(set.on_request(&mut req, &mut ctx()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_hook_is_bounded_once_it_waits() {
        // Finished at the first poll: no timer, whatever the limit.
        assert_eq!(bounded(Duration::ZERO, async { 7 }).await.map(|r| r.ok()), Some(Some(7)));
        // Waits past the limit: out of time.
        assert!(bounded(Duration::from_millis(20), std::future::pending::<()>()).await.is_none());
        // Waits, then answers within the limit.
        let late = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            8
        };
        assert_eq!(bounded(Duration::from_secs(5), late).await.map(|r| r.ok()), Some(Some(8)));
        // A panic is caught, not propagated.
        let panics = async { panic!("boom") };
        assert!(matches!(bounded::<_>(Duration::from_secs(5), panics).await, Some(Err(_))));
    }
}
