//! External plugins (buntime.md §5.2, §5.7): a plugin dir that marina has no built-in plugin
//! for, whose manifest names an `entrypoint`. The entrypoint is an app like any other (a Bun or
//! Node module, a `command` process, a `.wasm` component, static files), run by the worker pool
//! with the plugin's manifest as its app manifest (`ttl`, `env`, `timeout`, ...), and served at
//! the plugin's `base` — Buntime's "plugin app".
//!
//! `hooks: { onRequest: /check }` makes it a forward-auth gate ([`hook`]): before routing, marina
//! asks the plugin's worker about each request in its scope, without the body; a 2xx answer lets
//! the request go on (with the headers listed in `hooks.authResponseHeaders` copied from the
//! answer), any other answer is what the client gets. The hook is an `on_request` phase like any
//! other, so the pipeline's per-hook timeout (`hookTimeout`) and fail-closed policy (503
//! `PLUGIN_ONREQUEST_FAILED` unless `onRequestFailOpen: true`) hold for it: a worker that cannot
//! start, crashes, throws or runs past the timeout fails the hook.
//!
//! The hook's scope is every request that reached the `on_request` phase (authentication
//! refusals, rate-limited requests and CORS preflights were answered before it; plugins loaded
//! earlier may have answered too), except the internal API and `/.well-known` (marina's own,
//! guarded by its keys: a broken gate must not lock the operator out of `/api/plugins/reload`)
//! and the plugin's own base (its login page must be reachable without logging in). The
//! manifest narrows it further with `hooks.paths` and `hooks.excludePaths` ([`paths`]).

pub mod hook;
pub mod paths;

use std::sync::Arc;

use http::{Request, Response};
use marina_apps::App;
use marina_apps::registry::{Registry, Resolved};
use marina_core::{Body, Error};
use marina_workers::WorkerPool;
use serde_json::json;

use crate::async_trait;
use crate::context::RequestContext;
use crate::plugin::{Factory, Outcome, Phases, Plugin, PluginEnv, PluginSpec};

/// A loaded external plugin.
pub struct External {
    spec_name: String,
    base: String,
    resolved: Resolved,
    registry: Arc<Registry>,
    pool: Arc<WorkerPool>,
    hook: Option<hook::Hook>,
    api_base: String,
}

/// The name the plugin's app runs under in the worker pool: `@plugin-<name>` (`/api/workers`
/// shows `@plugin-forward-auth@latest`). App dirs can never be named with an `@`, so the plugin's
/// workers never share a slot with an app's.
pub fn app_name(plugin: &str) -> String {
    let name: String = crate::canonical(plugin)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    format!("@plugin-{}", name.trim_matches('-'))
}

impl External {
    /// The plugin for `spec`: its app is loaded now (manifest read, entrypoint resolved), so a
    /// plugin whose app cannot run stops start-up (or the reload) instead of serving its apps
    /// without the gate it was meant to be.
    ///
    /// # Errors
    /// A bad `hooks` key, naming it; the app's own error when it does not load.
    pub fn configure(spec: &PluginSpec, env: &PluginEnv) -> Result<Self, Error> {
        let dir = spec.dir.clone().ok_or_else(|| {
            Error::internal(format!("external plugin '{}' has no directory to run its entrypoint from", spec.name))
        })?;
        let hook = hook::Hook::from_options(&spec.options)?;
        let resolved = Resolved { name: app_name(&spec.name), version: "latest".into(), dir };
        // `refresh`, not `load`: a reload after an edit must see the plugin's files as they are.
        env.registry.refresh(&resolved, false).map_err(|e| {
            Error::internal(format!("its entrypoint does not load: {}", e.message()))
                .with_data(json!({ "code": e.code(), "dir": resolved.dir }))
        })?;
        Ok(Self {
            spec_name: spec.name.clone(),
            base: spec.base.clone(),
            resolved,
            registry: env.registry.clone(),
            pool: env.pool.clone(),
            hook,
            api_base: env.api_base.clone(),
        })
    }

    /// The loader's factory for plugin dirs with an `entrypoint` and no built-in plugin.
    pub fn factory() -> Factory {
        Arc::new(|spec: &PluginSpec, env: &PluginEnv| Ok(Arc::new(External::configure(spec, env)?) as Arc<dyn Plugin>))
    }

    /// The plugin's app as it is on disk now (cached by the registry).
    fn load_app(&self) -> Result<Arc<App>, Error> {
        self.registry.load(&self.resolved)
    }

    /// Whether `path` is the hook's to check (see the module docs).
    fn in_scope(&self, hook: &hook::Hook, path: &str) -> bool {
        let under = |base: &str| path == base || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'));
        !(under(&self.api_base) || path.starts_with("/.well-known/") || (!self.base.is_empty() && under(&self.base)))
            && hook.paths.allows(path)
    }
}

#[async_trait]
impl Plugin for External {
    fn phases(&self) -> Phases {
        // Only a forward-auth hook makes it a gate.
        Phases { on_request: self.hook.is_some(), ..Phases::NONE }
    }

    async fn on_request(&self, req: &mut Request<Body>, ctx: &mut RequestContext) -> Result<Outcome, Error> {
        let Some(hook) = &self.hook else { return Ok(Outcome::Continue) };
        // First, whatever the outcome: headers the hook may set are never the client's, so an app
        // can trust them even when the hook failed open or the request is out of its scope.
        let sent = hook.strip_trusted(req.headers_mut());
        if !self.in_scope(hook, req.uri().path()) {
            return Ok(Outcome::Continue);
        }
        let app = self.load_app().map_err(|e| hook::failed(&self.spec_name, "its app does not load", e))?;
        let base = if self.base.is_empty() { "/" } else { self.base.as_str() };
        let ask = hook.request(req, &sent, base, ctx)?;
        let answer = self
            .pool
            .dispatch(app.clone(), ask)
            .await
            .map_err(|e| hook::failed(&self.spec_name, "its worker failed", e))?;
        if crate::app_request::is_worker_error(&answer) {
            let thrown = crate::app_request::worker_error(app.key(), answer.into_body()).await;
            return Err(hook::failed(&self.spec_name, "its worker threw", thrown));
        }
        hook.apply(answer, req, ctx, &self.spec_name)
    }

    fn has_routes(&self) -> bool {
        !self.base.is_empty()
    }

    fn app(&self) -> Option<Result<Arc<App>, Error>> {
        (!self.base.is_empty()).then(|| self.load_app())
    }

    async fn handle(&self, _req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        // Routing sends the plugin's base to its app (`Plugin::app`); nothing else comes here.
        Err(Error::not_found(format!("nothing is served at '{}'", ctx.path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_cannot_be_an_apps() {
        assert_eq!(app_name("@acme/Forward-Auth"), "@plugin-acme-forward-auth");
        assert_eq!(app_name("@buntime/plugin-sso"), "@plugin-sso");
        assert!(!marina_apps::registry::is_app_name(&app_name("x")));
    }
}
