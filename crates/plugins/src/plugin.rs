//! The plugin trait: one method per phase, declared in the order they run, each with a default
//! that does nothing (Pingora's `ProxyHttp`), so a plugin overrides only what it needs.
//!
//! ```text
//!            once ──► init (load order)
//! per request ──► early_request (load order) ──► on_request (load order) ──► route: handle (the plugin under whose base the
//!                 path falls) / an app / the shell ──► on_response (reverse order)
//!        once ──► shutdown (reverse load order)
//! ```
//!
//! A phase that returns `Err` with a client error (4xx: 401, 403, 429, ...) or an upstream's
//! failure it passes on (a proxied 502/504, [`marina_core::Source::Upstream`]) has answered on
//! purpose: the server renders it at its one error edge. Any other `Err`, a panic, or running
//! past the plugin's hook timeout is a *failure* of `on_request`, answered with 503
//! `PLUGIN_ONREQUEST_FAILED` unless the plugin opted into `onRequestFailOpen: true`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Request, Response};
use marina_apps::registry::Registry;
use marina_core::settings::RawSettings;
use marina_core::{Body, Error};
use marina_store::Store;
use marina_workers::WorkerPool;
use serde_json::{Map, Value};

use crate::context::RequestContext;

/// How an `on_request` phase ends.
#[derive(Debug)]
pub enum Outcome {
    /// Go on with the next plugin, then routing. Changes made through `&mut Request` (headers,
    /// URI, body) are what the later phases and the app see.
    Continue,
    /// Answer now with this response; later `on_request` hooks and routing are skipped, the
    /// `on_response` phases still run.
    Respond(Response<Body>),
}

/// What an admission hook ([`Plugin::early_request`]) decided, or the wait before it can.
pub enum Admission<'a> {
    /// Decided without waiting (most hooks, most requests).
    Decided(Result<Outcome, Error>),
    /// Has to wait first (a key fetched over the network); bounded by the hook timeout.
    Wait(futures_util::future::BoxFuture<'a, Result<Outcome, Error>>),
}

impl std::fmt::Debug for Admission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Decided(r) => f.debug_tuple("Decided").field(r).finish(),
            Admission::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// A plugin. Every method is a phase; see the module docs for the order.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// Once at load, after the `init` of every plugin it depends on. An error skips this plugin
    /// and the plugins that require it.
    async fn init(&self, _env: &PluginEnv) -> Result<(), Error> {
        Ok(())
    }

    /// Which per-request hooks this plugin implements. The pipeline calls only these, so a hook
    /// a plugin does not list costs its requests nothing (no call, no timer). The default lists
    /// all three: a plugin that overrides a hook is called without having to say so. Asked once,
    /// when the plugin set is built.
    fn phases(&self) -> Phases {
        Phases::ALL
    }

    /// Admission, the first phase of every request (Pingora's `early_request_filter`): every
    /// plugin's `early_request` runs, in load order, before any plugin's `on_request`, so its
    /// verdict does not depend on load order (a proxy rule answering in `on_request` cannot skip
    /// it). It sees requests that authentication refused as well (then
    /// [`RequestContext::refusal`] holds the 401/403 that will be answered once the phase ends):
    /// rate limits and address filters belong here; work on the caller's behalf does not.
    ///
    /// Synchronous first: a hook decides at once ([`Admission::Decided`]) or hands back the
    /// wait it needs ([`Admission::Wait`]: a JWKS fetch), which the pipeline bounds by the hook
    /// timeout. Admission runs on every request and almost never waits; a boxed future per
    /// call and plugin cost ~0.3k instructions of a ~30k-instruction request (callgrind).
    fn early_request<'a>(&'a self, _req: &'a mut Request<Body>, _ctx: &'a mut RequestContext) -> Admission<'a> {
        Admission::Decided(Ok(Outcome::Continue))
    }

    /// Every request, in load order, before routing. May inspect or rewrite the request, set
    /// [`RequestContext::identity`] or extensions, or answer.
    async fn on_request(&self, _req: &mut Request<Body>, _ctx: &mut RequestContext) -> Result<Outcome, Error> {
        Ok(Outcome::Continue)
    }

    /// Whether [`Plugin::handle`] answers requests under the plugin's base. Plugins with a base
    /// but no routes leave the base to their UI app (a worker), as in Buntime.
    fn has_routes(&self) -> bool {
        false
    }

    /// The app served at the plugin's base, if it has one (an external plugin's `entrypoint`,
    /// Buntime's plugin app): routing hands requests under the base to it through the worker
    /// pool, like any app's (`x-base` is the plugin's base), instead of calling
    /// [`Plugin::handle`]. `Some(Err)` when its files no longer load (the error is the answer).
    fn app(&self) -> Option<Result<Arc<marina_apps::App>, Error>> {
        None
    }

    /// A request under the plugin's base (longest base first). The URI has the base stripped
    /// (`/keyval/api/keys` arrives as `/api/keys`); the original path is [`RequestContext::path`].
    /// A 404 `Err` here is the answer: it does not fall through to the plugin's UI.
    async fn handle(&self, _req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        Err(Error::not_found(format!("nothing is served at '{}'", ctx.path)))
    }

    /// The app shell: for a request that matched no plugin route and no app, the app this
    /// plugin serves it with (at base `/`, path unchanged), if the request is the shell's by
    /// the plugin's rules (the gateway's `Sec-Fetch-Dest` rules). `None` leaves it to 404.
    fn shell(&self, _path: &str, _headers: &http::HeaderMap) -> Option<Arc<marina_apps::App>> {
        None
    }

    /// Every response (error responses included), in reverse load order: CORS headers, metrics.
    /// An error replaces the response with the error's.
    ///
    /// Synchronous, unlike the request phases: it edits the head on the way out, and runs for
    /// every answer, where a boxed future and the timer guard per call and plugin were ~0.2k
    /// instructions (callgrind) of a ~28k-instruction static request. A hook cannot wait here,
    /// so none is timed out; a plugin with slow work to do at the end of a request (storing a
    /// log line) spawns it.
    fn on_response(&self, _resp: &mut Response<Body>, _ctx: &mut RequestContext) -> Result<(), Error> {
        Ok(())
    }

    /// Once at shutdown or before a reload replaces this instance, in reverse load order.
    async fn shutdown(&self) {}
}

/// The per-request hooks a plugin implements ([`Plugin::phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// [`Plugin::early_request`].
    pub early_request: bool,
    /// [`Plugin::on_request`].
    pub on_request: bool,
    /// [`Plugin::on_response`].
    pub on_response: bool,
}

impl Phases {
    /// Every per-request hook (the default).
    pub const ALL: Self = Self { early_request: true, on_request: true, on_response: true };
    /// None: the plugin only has routes, or only lifecycle hooks.
    pub const NONE: Self = Self { early_request: false, on_request: false, on_response: false };
}

/// A plugin as its manifest describes it (buntime.md §5.2).
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The manifest's `name` (`@buntime/plugin-gateway`).
    pub name: String,
    /// The base path (`/gateway`), empty for hook-only plugins.
    pub base: String,
    /// Required plugins, by name.
    pub dependencies: Vec<String>,
    /// Plugins loaded first when present.
    pub optional_dependencies: Vec<String>,
    /// cpanel sidebar entries, passed through.
    pub menus: Value,
    /// The manifest's `config` schema, passed through.
    pub config_schema: Value,
    /// Every other key: the plugin's options.
    pub options: Map<String, Value>,
    /// `onRequestFailOpen: true`: a failing hook is logged and skipped instead of answering 503.
    pub fail_open: bool,
    /// How long one hook may run (`hookTimeout`, default 5 s).
    pub hook_timeout: Duration,
    /// The plugin's directory, when it came from one.
    pub dir: Option<PathBuf>,
    /// `entrypoint`: the plugin's worker app, served at its base (external plugins).
    pub entrypoint: Option<String>,
    /// `version`, informational.
    pub version: Option<String>,
}

impl PluginSpec {
    /// A spec with defaults, for plugins registered in code.
    pub fn new(name: impl Into<String>, base: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base: base.into(),
            dependencies: Vec::new(),
            optional_dependencies: Vec::new(),
            menus: Value::Array(Vec::new()),
            config_schema: Value::Null,
            options: Map::new(),
            fail_open: false,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            dir: None,
            entrypoint: None,
            version: None,
        }
    }
}

/// How long one hook may run unless the manifest says `hookTimeout`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a plugin may use: marina's database, the apps, the workers and every configuration value.
#[derive(Clone)]
pub struct PluginEnv {
    /// marina's own database (SQLite or PostgreSQL).
    pub store: Store,
    /// Apps on disk.
    pub registry: Arc<Registry>,
    /// The worker pool.
    pub pool: Arc<WorkerPool>,
    /// Every configuration value as given (the plugin's own `GATEWAY_*`, ...).
    pub settings: RawSettings,
    /// The internal API's base, e.g. `/api`.
    pub api_base: String,
    /// Whether clients see only the code and request id of server-side errors.
    pub production: bool,
    /// The address marina listens on (a proxy rule may not point there).
    pub listen: std::net::SocketAddr,
    /// The pooled client for remote upstreams, with the SSRF policy (shared with app rules).
    pub remote: Arc<marina_proxy::Remote>,
    /// marina's authentication state (API keys, the root key): the one the pipeline uses.
    pub auth: Arc<marina_auth::Auth>,
    /// The live worker tokens (`LIBSQL_AUTH_TOKEN`), which the data plugins accept.
    pub tokens: marina_workers::WorkerTokens,
    /// `DATABASE_URL` as marina was started with (`None`: SQLite in the state dir).
    pub database_url: Option<String>,
    /// marina's state dir (resolved), where app databases live on SQLite.
    pub state_dir: PathBuf,
    /// Cancelled when marina stops accepting connections at shutdown: long-lived responses a
    /// plugin streams (event streams) end then, so the graceful close need not wait for the
    /// shutdown deadline. Plugins take a child token and cancel it in their own `shutdown`.
    pub closing: tokio_util::sync::CancellationToken,
}

/// Builds a plugin from its spec. Cheap and synchronous; async set-up belongs in
/// [`Plugin::init`].
pub type Factory = Arc<dyn Fn(&PluginSpec, &PluginEnv) -> Result<Arc<dyn Plugin>, Error> + Send + Sync>;
