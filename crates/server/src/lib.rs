//! The HTTP front of marina: one listener speaking HTTP/1.1 and HTTP/2 (cleartext, detected per
//! connection), the request pipeline, the internal API and dispatch to apps.
//!
//! Request pipeline, in order (DESIGN.md; the plugin phases are drawn in `marina_plugins`):
//! 1. accept: a [`RequestContext`] (request id echoed or a new UUIDv7, start time, the
//!    real client address ([`client_ip`]: `X-Forwarded-For` only from `RUNTIME_TRUSTED_PROXIES`),
//!    identity and extension slots); an incoming `x-identity` is dropped; the request's transfer
//!    codings are checked ([`transfer_coding`]: `chunked` once, or none) and its host is settled
//!    once ([`host`]: one valid `Host`, the target's authority winning);
//! 2. the plugins' admission hooks (`early_request`: authentication, then the gateway's rate
//!    limits, which count refused requests too), then their `on_request` hooks, in load order
//!    (fail-closed, per-hook timeout);
//! 3. route: the ordered table of [`route`] — internal API → plugin routes → apps → app shell → 404;
//! 4. dispatch: the worker pool answers for the app, whatever its kind;
//! 5. errors from any layer become responses only in [`edge`];
//! 6. the plugins' `on_response` hooks in reverse order;
//! 7. completion ([`completion`]): `X-Request-Id`, one access log line, the request counters —
//!    also for a request the client abandoned (status 499); a streaming response body is then
//!    watched by [`send_timeout`].

pub mod api;
mod api_remove;
mod api_session;
mod body_timeout;
pub mod client_ip;
pub mod completion;
pub mod config;
mod conn_threads;
mod dispatch;
pub mod edge;
mod host;
mod linger;
mod listen;
pub mod migrations;
pub mod openapi;
pub mod reload;
pub mod request_id;
pub mod route;
mod send_timeout;
mod shutdown;
mod start;
mod transfer_coding;
mod unread_body;
mod zerocopy;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use marina_apps::registry::Registry;
use marina_core::{Body, Error, body};
use marina_plugins::{Catalog, Loaded, PluginEnv, PluginSet, RequestContext};
use marina_store::Store;
use marina_workers::WorkerPool;
use marina_workers::process::sandbox::callers::Caller;
use parking_lot::RwLock;
use route::Target;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{LogFormat, NodeEnv, RawConfig, RuntimeConfig, Scheduler};

/// Everything a request needs, shared by all connections.
pub struct Runtime {
    /// The validated configuration.
    pub config: RuntimeConfig,
    /// Apps on disk and their versions.
    pub registry: Arc<Registry>,
    /// Workers of every kind.
    pub pool: Arc<WorkerPool>,
    /// marina's own database.
    pub store: Store,
    /// The client for proxy rules' remote upstreams.
    pub remote: Arc<marina_proxy::Remote>,
    /// `{RUNTIME_API_PREFIX}/api`.
    pub api_base: String,
    /// Keys and tokens: the first phase of every request, and `/api/keys`.
    pub auth: Arc<marina_auth::Auth>,
    /// What plugins are given.
    pub plugin_env: PluginEnv,
    plugins: RwLock<Arc<PluginSet>>,
    catalog: Catalog,
    code_plugins: Vec<Loaded>,
    /// Which app versions have had their migrations applied.
    pub migrations: migrations::AppMigrations,
    draining: AtomicBool,
    /// Cancelled at the shutdown deadline: requests still waiting for their response are
    /// answered 503 `SHUTTING_DOWN`.
    cut: CancellationToken,
    /// Requests seen, by how they ended (`requests` in `/api/workers`).
    pub stats: completion::Stats,
    _watch: Option<marina_apps::registry::WatchHandle>,
}

impl Runtime {
    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The plugins loaded now (a reload swaps the whole set; requests in flight keep theirs).
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.plugins.read().clone()
    }

    /// Rescan the plugin dirs and swap in a freshly loaded set; the instances of the old set
    /// are shut down (requests in flight keep the set they started with).
    ///
    /// # Errors
    /// As at start-up (a bad manifest, a cycle, a base taken twice); the old set then stays.
    pub async fn reload_plugins(&self) -> Result<Arc<PluginSet>, Error> {
        let set = marina_plugins::loader::load(
            &self.config.plugin_dirs,
            &self.catalog,
            &self.plugin_env,
            self.code_plugins.clone(),
        )
        .await?;
        let set = Arc::new(set);
        let old = std::mem::replace(&mut *self.plugins.write(), set.clone());
        marina_plugins::loader::retire(&old, &set).await;
        Ok(set)
    }
}

/// A bound, ready-to-run server.
pub struct Server {
    runtime: Arc<Runtime>,
    listener: TcpListener,
    /// A new marina.db's migrations while they run (see [`Server::run`]).
    schema: start::Schema,
}

impl Server {
    /// Open storage (applying marina's own migrations; those of a marina.db this start created
    /// run on a task, which every use of the store waits for, and [`Server::run`] stops marina
    /// if they fail), scan the worker dirs, start watching them, create the worker pool and
    /// bind the listener.
    pub async fn bind(config: RuntimeConfig) -> Result<Self, Error> {
        Self::bind_with_catalog(config, Catalog::builtin(), Vec::new()).await
    }

    /// [`Server::bind`] with plugins built in code, loaded in the given order and initialised
    /// before the listener accepts.
    pub async fn bind_with(config: RuntimeConfig, plugins: Vec<Loaded>) -> Result<Self, Error> {
        Self::bind_with_catalog(config, Catalog::builtin(), plugins).await
    }

    /// [`Server::bind`] with the plugins `catalog` knows (matched to the manifests in
    /// `RUNTIME_PLUGIN_DIRS`) and plugins built in code, which load first.
    pub async fn bind_with_catalog(
        config: RuntimeConfig,
        catalog: Catalog,
        plugins: Vec<Loaded>,
    ) -> Result<Self, Error> {
        start::harden_process();
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| Error::internal(format!("cannot create the state dir {}: {e}", config.state_dir.display())))?;
        // marina's database is opened and migrated on another thread while the apps, the
        // listener and the pool are set up: on a first start its schema was a fifth of the time
        // to the first answer (BENCHMARKS.md, cold start), and none of those needs it.
        let opening = tokio::spawn(start::open_system_store(config.database_url.clone(), config.state_dir.clone()));
        let early = start::Early::start(&config).await;
        // Awaited even when the rest failed, so that no migration is left running detached.
        let store = opening.await.map_err(|e| Error::internal(format!("opening marina's database stopped: {e}")))?;
        let start::Early { registry, watch, listener, local, pool, tokens } = early?;
        let (store, schema) = store?;
        // A failure from here on most likely followed from the new database's migrations failing
        // (a plugin that found no table): then their error is the one reported.
        let bound = async move {
            // One authentication state for everything: the pipeline's first phase, `/api/keys` and
            // the data plugins' admin keys.
            // While no key exists the internal API is open, but never to a worker (docs/security.md).
            let callers = pool.callers();
            let app_callers: marina_auth::AppCallerCheck =
                Arc::new(move |c: marina_auth::Connection| match callers.classify(c.peer, c.local) {
                    Caller::Elsewhere | Caller::NotWorker => None,
                    Caller::Worker(why) => Some(why),
                    Caller::Unknown(why) => Some(format!("it may be: {why}")),
                });
            let auth = Arc::new(marina_auth::Auth::new(&config.auth, store.clone())?.with_app_caller_check(app_callers));
            // marina's own listener is a proxy target no rule may have (it would loop).
            // The operator's ranges (`RUNTIME_PROXY_ALLOW`/`_DENY`) hold for app and plugin rules alike.
            // Both were validated with the rest of the configuration.
            let ranges = |var| config.raw.cidrs(var).map_err(|e| Error::internal(e.to_string()));
            let policy = marina_proxy::TargetPolicy::new(vec![local], ranges("RUNTIME_PROXY_ALLOW")?)
                .with_deny(ranges("RUNTIME_PROXY_DENY")?);
            let remote = Arc::new(marina_proxy::Remote::new(marina_proxy::RemoteConfig {
                policy,
                ..marina_proxy::RemoteConfig::default()
            })?);
            let plugin_env = PluginEnv {
                store: store.clone(),
                registry: registry.clone(),
                pool: pool.clone(),
                settings: config.raw.clone(),
                api_base: config.api_base(),
                production: config.hides_error_detail(),
                listen: local,
                remote: remote.clone(),
                auth: auth.clone(),
                tokens,
                database_url: config.database_url.clone(),
                state_dir: config.state_dir.clone(),
                closing: CancellationToken::new(),
            };
            // Authentication is built in and runs first, whatever the plugin dirs hold: the internal
            // API's key requirement must not hang on a manifest, and later hooks (a rate limit by
            // identity) need the identity it establishes.
            let auth_plugin = marina_plugins::auth::AuthPlugin::new(auth.clone(), registry.clone(), config.api_base());
            let plugins: Vec<Loaded> =
                std::iter::once(Loaded::new(marina_plugins::auth::AuthPlugin::spec(), Arc::new(auth_plugin)))
                    .chain(plugins)
                    .collect();
            if let Some(var) = config.auth.root_key_var {
                tracing::info!(variable = var, "the internal API requires a key (root key set)");
            }
            if config.auth.jwt.is_some() {
                tracing::info!("app routes require a bearer token, except their publicRoutes");
            }
            for p in &plugins {
                p.plugin
                    .init(&plugin_env)
                    .await
                    .map_err(|e| Error::internal(format!("plugin '{}' failed to start: {e}", p.name)).with_source(e))?;
            }
            let set = marina_plugins::loader::load(&config.plugin_dirs, &catalog, &plugin_env, plugins.clone()).await?;
            tracing::info!(plugins = ?set.plugins().iter().map(|p| p.spec.name.as_str()).collect::<Vec<_>>(), "plugins loaded");
            // Every manifest is checked now, so its problems are in the log before the first request.
            let checked = registry.check_all();
            let bad = checked.iter().filter(|(_, s)| s.state == "invalid").count();
            tracing::info!(app_versions = checked.len(), invalid = bad, "apps checked");
            let runtime = Arc::new(Runtime {
                api_base: config.api_base(),
                auth,
                plugin_env,
                plugins: RwLock::new(Arc::new(set)),
                catalog,
                code_plugins: plugins,
                config,
                registry,
                pool,
                store,
                remote,
                migrations: migrations::AppMigrations::default(),
                draining: AtomicBool::new(false),
                cut: CancellationToken::new(),
                stats: completion::Stats::default(),
                _watch: watch,
            });
            if runtime._watch.is_some() {
                reload::start(&runtime);
            }
            Ok::<_, Error>(runtime)
        }
        .await;
        match bound {
            Ok(runtime) => Ok(Self { runtime, listener, schema }),
            Err(e) => Err(start::root_cause(schema, e).await),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The shared runtime (for tests and the CLI).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// Serve until `shutdown` resolves, then exit as [`shutdown`] describes: readiness 503,
    /// `RUNTIME_SHUTDOWN_DELAY` more of serving, stop accepting, in-flight requests finish (or
    /// get 503 `SHUTTING_DOWN` at the deadline), plugins and workers stop; all of it within
    /// `RUNTIME_SHUTDOWN_TIMEOUT`. The same exit, with their error, when the migrations of a
    /// marina.db this start created fail.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Server { runtime, listener, schema } = self;
        let conn_threads = match runtime.config.scheduler {
            config::Scheduler::Shared => None,
            config::Scheduler::PerThread => {
                let n = runtime
                    .config
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let threads = conn_threads::ConnThreads::start(n)
                    .map_err(|e| Error::internal(format!("cannot start {n} connection threads: {e}")).with_source(e))?;
                Some(Arc::new(threads))
            }
        };
        let mut listener = listen::Listener::new(runtime.clone(), listener, conn_threads.clone());
        tracing::info!(
            addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            api = %runtime.config.api_base(),
            worker_dirs = ?runtime.config.worker_dirs,
            // What the runtime really runs with (RUNTIME_THREADS, or tokio's own choice when
            // marina is embedded in a runtime it did not build).
            threads = conn_threads.as_ref().map_or_else(|| tokio::runtime::Handle::current().metrics().num_workers(), |t| t.len()),
            scheduler = match runtime.config.scheduler {
                config::Scheduler::Shared => "shared",
                config::Scheduler::PerThread => "per-thread",
            },
            "marina is serving"
        );
        // A new marina.db whose migrations fail stops marina as a failed start would.
        let failed = parking_lot::Mutex::new(None);
        listener
            .accept_until(async {
                tokio::select! {
                    () = shutdown => {}
                    e = start::schema_failure(schema) => {
                        tracing::error!(code = e.code(), "marina's new database could not be migrated; stopping: {}", e.message());
                        *failed.lock() = Some(e);
                    }
                }
            })
            .await;
        let exit = shutdown::Exit::begin(&runtime);
        listener.accept_until(tokio::time::sleep_until(exit.serve_until())).await;
        let (graceful, hard_stop) = listener.close();
        exit.close_connections(&runtime, graceful, hard_stop).await;
        exit.stop(&runtime).await;
        // The workers are gone (their exits were watched on the threads that started them);
        // the connection threads' runtimes end now.
        if let Some(threads) = conn_threads {
            let _ = tokio::task::spawn_blocking(move || drop(threads)).await;
        }
        tracing::info!("marina stopped");
        match failed.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Handle one request end to end; never fails (errors become responses at the edge).
async fn handle(
    rt: Arc<Runtime>,
    api_router: axum::Router,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    conn: send_timeout::Conn,
    sink: marina_core::zerocopy::Sink,
) -> Result<Response<Body>, Infallible> {
    // 1. accept
    let request_id = request_id::for_request(req.headers());
    let mut ctx = RequestContext::new(request_id, peer, req.method().clone(), req.uri().path());
    ctx.local = local;
    ctx.client_ip = client_ip::client_ip(peer, req.headers(), &rt.config.trusted_proxies);
    // Records the request even if the client goes away before the answer (499).
    let version = req.version();
    let mut record = completion::Record::new(ctx, &rt.stats);
    let ctx = &mut record.ctx;
    let (parts, incoming) = req.into_parts();
    let (incoming, unread) = unread_body::watch(incoming, version);
    let mut req = Request::from_parts(parts, incoming);
    // Only an authentication plugin may say who is calling; a client cannot claim it.
    req.headers_mut().remove(IDENTITY_HEADER);
    let plugins = rt.plugins();
    // 2.–5. hooks, route, dispatch; errors become responses at the one edge
    let hide = rt.config.hides_error_detail();
    let outcome = tokio::select! {
        outcome = pipeline(&rt, &plugins, &api_router, req, ctx) => outcome,
        () = rt.cut.cancelled() => Err(Error::shutting_down("marina is shutting down; the request did not finish in time")),
    };
    let mut resp = match outcome {
        Ok(resp) => resp,
        Err(err) => edge::render(&err, ctx, hide),
    };
    // 6. on_response, reverse order
    if plugins.has_response_hooks()
        && let Err(err) = plugins.on_response(&mut resp, ctx)
    {
        resp = edge::render(&err, ctx, hide);
    }
    // 7. completion
    let head = record.ctx.method == http::Method::HEAD;
    if head {
        without_body(&mut resp);
    }
    if let Some(unread) = &unread
        && unread.close_if_unread(&mut resp)
    {
        conn.linger.request();
    }
    record.finish(&mut resp);
    zerocopy::use_sendfile(&sink, version, head, &mut resp);
    Ok(send_timeout::guard(resp, rt.config.send_timeout, version, &conn))
}

/// A HEAD answer: GET's headers, no body. HTTP/1.1 drops a body itself, but on HTTP/2 a HEAD
/// answered with DATA is a stream error, so handlers that answer HEAD as GET (marina's banner and
/// discovery document, the data plugins) must not send theirs. The length GET would have is kept.
fn without_body(resp: &mut Response<Body>) {
    use http_body::Body as _;
    if resp.body().is_end_stream() {
        return;
    }
    if !resp.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(len) = resp.body().size_hint().exact()
    {
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    *resp.body_mut() = body::empty();
}

/// `req` with `RUNTIME_BODY_TIMEOUT` on its body, for a handler inside marina (the internal
/// API, a plugin's routes); a worker's body is timed by the pool instead.
fn timed_body(rt: &Runtime, req: Request<Body>) -> (Request<Body>, body_timeout::Expired) {
    let (parts, b) = req.into_parts();
    let (b, expired) = body_timeout::wrap(b, rt.config.body_timeout);
    (Request::from_parts(parts, b), expired)
}

/// The header workers read the caller's identity from.
pub use marina_plugins::app_request::IDENTITY_HEADER;

async fn pipeline(
    rt: &Arc<Runtime>,
    plugins: &PluginSet,
    api_router: &axum::Router,
    mut req: Request<Body>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Error> {
    transfer_coding::check(req.headers())?;
    host::settle(&mut req)?;
    if !plugins.is_empty()
        && let Some(resp) = plugins.on_request(&mut req, ctx).await?
    {
        return Ok(resp);
    }
    let path = req.uri().path().to_string();
    match route::route(rt, plugins, &path, req.headers()) {
        Target::InternalApi => {
            let (req, expired) = timed_body(rt, req);
            let result = marina_plugins::api::call(api_router, req).await;
            expired.error(rt.config.body_timeout).map_or(result, Err)
        }
        Target::WellKnown => {
            marina_plugins::api::json(&serde_json::json!({ "api": rt.api_base, "version": api::VERSION }))
        }
        Target::Plugin(plugin, rest) => {
            ctx.plugin = Some(plugin.name.clone());
            // A plugin with an app of its own (an external plugin's entrypoint) is served by the
            // pool like any app, at the plugin's base.
            if let Some(app) = plugin.plugin.app() {
                let app = app?;
                ctx.app = Some(app.clone());
                let segment = plugin.spec.base.trim_start_matches('/');
                return dispatch::to_app(rt, app, segment, &rest, req, ctx).await;
            }
            *req.uri_mut() = dispatch::with_path(req.uri(), &rest)?;
            let (req, expired) = timed_body(rt, req);
            let result = plugin.plugin.handle(req, ctx).await;
            expired.error(rt.config.body_timeout).map_or(result, Err)
        }
        Target::App { resolved, segment, rest } => {
            let app = match rt.registry.load(&resolved) {
                Ok(app) => app,
                // A manifest edit that does not load leaves the running workers serving the
                // version they run (live reload: a broken edit never takes a working app down).
                Err(e) if e.code() == "APP_MANIFEST_INVALID" => {
                    rt.pool.serving(&format!("{}@{}", resolved.name, resolved.version)).ok_or(e)?
                }
                Err(e) => return Err(e),
            };
            ctx.app = Some(app.clone());
            rt.migrations.ensure(&app, rt.config.database_url.as_deref(), &rt.config.state_dir).await?;
            if let Some(m) = app.proxy.find(&rest) {
                return dispatch::to_upstream(rt, &app, &m.rule, &rest, req, ctx).await;
            }
            dispatch::to_app(rt, app, &segment, &rest, req, ctx).await
        }
        Target::Shell(plugin, app) => {
            // At base `/`, the path unchanged (Buntime's `x-base: /`).
            ctx.plugin = Some(plugin.name.clone());
            ctx.app = Some(app.clone());
            dispatch::to_app(rt, app, "", &path, req, ctx).await
        }
        Target::Banner => {
            let mut resp = Response::new(body::full(format!("marina v{}", api::VERSION)));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Ok(resp)
        }
        Target::Favicon => {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        Target::NotFound(Some(segment)) => Err(app_not_found(rt, &segment)),
        Target::NotFound(None) => Err(Error::not_found(format!("nothing is served at '{path}'"))),
    }
}

/// 404 for an unknown app, naming the worker dirs searched so a misplaced app is found quickly
/// (left out when internal detail is hidden from clients: they are server paths).
fn app_not_found(rt: &Runtime, segment: &str) -> Error {
    if rt.config.hides_error_detail() {
        return Error::new(StatusCode::NOT_FOUND, "APP_NOT_FOUND", format!("no app matches '{segment}'"))
            .with_data(serde_json::json!({ "app": segment }));
    }
    let dirs: Vec<String> = rt.registry.dirs().iter().map(|d| d.display().to_string()).collect();
    Error::new(
        StatusCode::NOT_FOUND,
        "APP_NOT_FOUND",
        format!("no app matches '{segment}' in the worker dirs {}", dirs.join(", ")),
    )
    .with_data(serde_json::json!({ "app": segment, "dirs": dirs }))
}
