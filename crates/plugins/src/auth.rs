//! [`AuthPlugin`]: authentication as the first phase of the request pipeline.
//!
//! It is built in and always loaded first, whatever the plugin dirs hold: the internal API's
//! key requirement must not depend on a manifest being present, and later hooks (the gateway's
//! rate limit by identity) need the identity it establishes. A valid key or token skips nothing:
//! every later hook still runs.
//!
//! It runs in the admission phase (`early_request`) and does not answer a refusal (401/403)
//! itself: it leaves it in [`RequestContext::refusal`], which the pipeline answers once every
//! admission hook has seen the request. So the gateway's rate limit counts refused requests too
//! (a flood of bad keys meets 429 like any flood), while no `on_request` hook, route or app ever
//! sees a refused request.

use std::sync::Arc;

use async_trait::async_trait;
use http::Request;
use marina_apps::registry::Registry;
use marina_auth::{AppRoute, Auth, Destination};
use marina_core::{Body, Error};
use percent_encoding::percent_decode_str;

use crate::{Admission, Outcome, Phases, Plugin, PluginSpec, RequestContext};

/// The name the plugin is listed under.
pub const NAME: &str = "@marina/auth";

/// The pipeline adapter around [`Auth`].
pub struct AuthPlugin {
    auth: Arc<Auth>,
    registry: Arc<Registry>,
    api_base: String,
}

impl AuthPlugin {
    /// Authentication for a server whose internal API lives at `api_base` and whose apps are in
    /// `registry` (to find an app's `publicRoutes`).
    pub fn new(auth: Arc<Auth>, registry: Arc<Registry>, api_base: String) -> Self {
        Self { auth, registry, api_base }
    }

    /// Its spec: hook-only (no base). The hook may fetch a JWKS (at most 5 s), so its timeout
    /// leaves room for that.
    pub fn spec() -> PluginSpec {
        let mut spec = PluginSpec::new(NAME, "");
        spec.hook_timeout = std::time::Duration::from_secs(15);
        spec
    }
}

#[async_trait]
impl Plugin for AuthPlugin {
    fn phases(&self) -> Phases {
        Phases { early_request: true, ..Phases::NONE }
    }

    fn early_request<'a>(&'a self, req: &'a mut Request<Body>, ctx: &'a mut RequestContext) -> Admission<'a> {
        // Without JWT verification an app route ignores credentials, and outside the internal
        // API only a marina key identifies anyone (a bearer token cannot be checked): a request
        // without a key has no identity and nothing needs looking up.
        if self.auth.jwt().is_none()
            && !matches!(marina_auth::presented(req.headers()), marina_auth::Presented::Key(..))
            && api_rest(req.uri().path(), &self.api_base).is_none()
        {
            marina_auth::identity::strip_incoming(req.headers_mut());
            return Admission::Decided(Ok(Outcome::Continue));
        }
        // A signed-in client's usual request: a token verified a moment ago, off the internal API
        // (the path as received: authentication is the first hook of all, so no plugin has
        // rewritten the URI yet).
        if api_rest(&ctx.path, &self.api_base).is_none()
            && let Some(identity) = self.auth.remembered_token(req.method(), req.headers())
        {
            marina_auth::identity::strip_incoming(req.headers_mut());
            ctx.identity = Some(identity);
            return Admission::Decided(Ok(Outcome::Continue));
        }
        Admission::Wait(Box::pin(self.check(req, ctx)))
    }
}

impl AuthPlugin {
    /// The full check: a key or a token not seen lately (a JWKS may have to be fetched).
    async fn check(&self, req: &mut Request<Body>, ctx: &mut RequestContext) -> Result<Outcome, Error> {
        let path: &str = &ctx.path;
        let api = api_rest(path, &self.api_base).is_some();
        // The internal API's Origin (CSRF) check compares with the request's own authority.
        let authority = api
            .then(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
            })
            .flatten();
        let method = req.method().clone();
        let conn = ctx.connection();
        // The app is looked up only if authentication asks (see `Auth::authorize_app`).
        let found = std::sync::OnceLock::new();
        let route = || {
            Ok(match found.get_or_init(|| self.app_of(path)) {
                None => AppRoute::NotAnApp,
                Some((app, rest)) => {
                    AppRoute::App { key: app.key(), public_routes: &app.config.public_routes.by_method, path: rest }
                }
            })
        };
        let destination = match api_rest(path, &self.api_base) {
            Some(rest) => Destination::Api { path: if rest.is_empty() { "/" } else { rest } },
            None => Destination::App { route: &route },
        };
        let identity =
            match self.auth.check_request(destination, &method, req.headers_mut(), authority.as_deref(), conn).await {
                Ok(identity) => identity,
                Err(refusal) if refusal.kind() == marina_core::Source::Client => {
                    ctx.refusal = Some(refusal);
                    return Ok(Outcome::Continue);
                }
                Err(e) => return Err(e),
            };
        if let Some(identity) = identity {
            if api {
                // The internal API's handlers read it (createdBy of a new key).
                req.extensions_mut().insert(Arc::clone(&identity));
            }
            ctx.identity = Some(identity);
        }
        Ok(Outcome::Continue)
    }
}

/// The path below the internal API's `base` when `path` is for it (`/api` → "", `/api/keys`
/// → "/keys"; `/apis` is not).
fn api_rest<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    path.strip_prefix(base).filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl AuthPlugin {
    /// The app the path's first segment resolves to, and the raw path below it. An app whose
    /// manifest is broken is left to routing, which answers with the manifest's error.
    fn app_of<'p>(&self, path: &'p str) -> Option<(Arc<marina_apps::App>, &'p str)> {
        let trimmed = path.strip_prefix('/')?;
        let (raw, rest) = match trimmed.find('/') {
            Some(i) => (&trimmed[..i], &trimmed[i..]),
            None => (trimmed, "/"),
        };
        if raw.is_empty() {
            return None;
        }
        let segment = percent_decode_str(raw).decode_utf8().ok()?;
        let resolved = self.registry.resolve(&segment)?;
        let app = self.registry.load(&resolved).ok()?;
        Some((app, rest))
    }
}
