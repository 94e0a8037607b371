//! The HTTP front of marina: one listener speaking HTTP/1.1 and HTTP/2 (cleartext, detected per
//! connection), the request pipeline, the internal API and dispatch to apps.
//!
//! Request pipeline, in order (DESIGN.md):
//! 1. accept: request id (echoed or a new UUIDv7), start time, the client's socket address;
//! 2. route: internal API (`{prefix}/api/*`), `/.well-known/buntime`, then apps
//!    (`/:app[@range]/*`), then 404;
//! 3. dispatch: the worker pool answers for the app, whatever its kind;
//! 4. completion: `X-Request-Id` on every response, one access log line, per-app counters.
//!
//! Errors from any layer become responses only in [`edge`].

pub mod api;
pub mod config;
mod dispatch;
pub mod edge;
pub mod request_id;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use marina_apps::registry::Registry;
use marina_core::{Body, Error, body};
use marina_store::Store;
use marina_workers::{AppDatabasePath, PoolOptions, WorkerPool};
use tokio::net::TcpListener;
use tower_service::Service;

pub use config::{LogFormat, NodeEnv, RawConfig, RuntimeConfig};

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
    draining: AtomicBool,
    _watch: Option<marina_apps::registry::WatchHandle>,
}

impl Runtime {
    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn hide_internal_errors(&self) -> bool {
        matches!(self.config.node_env, NodeEnv::Production | NodeEnv::Staging)
    }
}

/// A bound, ready-to-run server.
pub struct Server {
    runtime: Arc<Runtime>,
    listener: TcpListener,
}

impl Server {
    /// Open storage (applying marina's own migrations), scan the worker dirs, start watching
    /// them, create the worker pool and bind the listener.
    pub async fn bind(config: RuntimeConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| Error::internal(format!("cannot create the state dir {}: {e}", config.state_dir.display())))?;
        let store = Store::open(config.database_url.as_deref(), &config.state_dir).await?;
        store.migrate_system().await?;
        for dir in &config.worker_dirs {
            if !dir.is_dir() {
                tracing::warn!(dir = %dir.display(), "worker dir does not exist; no apps are served from it until it is created");
            }
        }
        let registry = Arc::new(Registry::new(config.worker_dirs.clone()).with_api_app(!config.api_prefix.is_empty()));
        let watch = match registry.watch() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the worker dirs; changes are picked up by the resolver's short cache instead");
                None
            }
        };
        let addr = format!("{}:{}", config.host, config.port);
        let listener =
            TcpListener::bind(&addr).await.map_err(|e| Error::internal(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::internal(format!("listener address: {e}")))?;
        let pool = WorkerPool::new(PoolOptions {
            pool_size: config.pool_size,
            ephemeral_concurrency: config.ephemeral_concurrency,
            ephemeral_queue_limit: config.ephemeral_queue_limit,
            state_dir: config.state_dir.clone(),
            runtime_api_url: format!("http://127.0.0.1:{}", local.port()),
            node_env: config.node_env.as_str().to_string(),
            log_level: config.log_level.clone(),
            js_runtime: config.js_runtime.clone(),
            worker_dirs: registry.dirs().to_vec(),
            plugin_dirs: config.plugin_dirs.clone(),
            app_database: app_database_path(&store, &config.state_dir),
            tokens: None,
        })?;
        // marina's own listener is a proxy target no rule may have (it would loop).
        let policy = marina_proxy::TargetPolicy::new(vec![local], Vec::new());
        let remote = Arc::new(marina_proxy::Remote::new(marina_proxy::RemoteConfig {
            policy,
            ..marina_proxy::RemoteConfig::default()
        })?);
        let runtime = Arc::new(Runtime {
            config,
            registry,
            pool,
            store,
            remote,
            draining: AtomicBool::new(false),
            _watch: watch,
        });
        Ok(Self { runtime, listener })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The shared runtime (for tests and the CLI).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// Serve until `shutdown` resolves, then stop accepting, let in-flight requests finish
    /// (bounded by the shutdown timeout), stop the workers and return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Server { runtime, listener } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // Also bounds how long an idle keep-alive connection may wait for its next request.
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let graceful = GracefulShutdown::new();
        // Built once: the router holds the runtime and is cloned (cheaply) per API request.
        let api_router = api::router(runtime.clone());
        tokio::pin!(shutdown);
        tracing::info!(
            addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            api = %runtime.config.api_base(),
            worker_dirs = ?runtime.config.worker_dirs,
            "marina is serving"
        );
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: back off briefly, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let rt = runtime.clone();
                    let api_router = api_router.clone();
                    let service = service_fn(move |req| handle(rt.clone(), api_router.clone(), req, peer));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        runtime.draining.store(true, Ordering::Relaxed);
        drop(listener);
        let timeout = runtime.config.shutdown_timeout;
        tracing::info!(
            timeout_ms = timeout.as_millis() as u64,
            "shutting down: no new connections, draining in-flight requests"
        );
        if tokio::time::timeout(timeout, graceful.shutdown()).await.is_err() {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout; closing them");
        }
        runtime.pool.shutdown(Duration::from_secs(5)).await;
        tracing::info!("marina stopped");
        Ok(())
    }
}

/// Handle one request end to end; never fails (errors become responses at the edge).
async fn handle(
    rt: Arc<Runtime>,
    api_router: axum::Router,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let request_id = request_id::for_request(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut label: Option<String> = None;
    let result = route(&rt, api_router, req, peer, &request_id, &mut label).await;
    let mut resp = result.unwrap_or_else(|err| {
        if err.status().is_server_error() {
            tracing::warn!(request_id = %request_id, code = err.code(), error = %err, "request failed");
        }
        edge::error_response(&err, rt.hide_internal_errors())
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    let app = label.as_deref().unwrap_or("-");
    tracing::info!(
        target: "marina::access",
        method = %method,
        path = %path,
        status,
        duration_ms = elapsed.as_micros() as f64 / 1000.0,
        request_id = %request_id,
        app,
        "request"
    );
    Ok(resp)
}

async fn route(
    rt: &Arc<Runtime>,
    mut api_router: axum::Router,
    req: Request<Incoming>,
    peer: SocketAddr,
    request_id: &str,
    label: &mut Option<String>,
) -> Result<Response<Body>, Error> {
    let path = req.uri().path();
    let api_base = rt.config.api_base();
    if path == api_base || path.strip_prefix(api_base.as_str()).is_some_and(|rest| rest.starts_with('/')) {
        let resp = api_router.call(req).await.unwrap_or_else(|never| match never {});
        return Ok(resp.map(body::boxed));
    }
    if path == "/.well-known/buntime" || path == "/.well-known/marina" {
        return Ok(edge::json(&serde_json::json!({ "api": api_base, "version": api::VERSION })));
    }
    if path == "/" {
        let mut resp = Response::new(body::full(format!("marina v{}", api::VERSION)));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        return Ok(resp);
    }
    if path == "/favicon.ico" {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return Ok(resp);
    }
    let Some(app_path) = dispatch::split_app_path(path) else {
        return Err(Error::not_found(format!("nothing is served at '{path}'")));
    };
    let segment = app_path.segment.clone();
    let rest = app_path.rest.to_string();
    let resolved = rt.registry.resolve(&segment).ok_or_else(|| app_not_found(rt, &segment))?;
    let app = rt.registry.load(&resolved)?;
    *label = Some(app.key());
    let req = req.map(body::boxed);
    if let Some(m) = app.proxy.find(&rest) {
        return dispatch::to_upstream(rt, &app, &m.rule, &rest, req, peer).await;
    }
    dispatch::to_app(rt, app, &segment, &rest, req, peer, request_id).await
}

/// 404 for an unknown app, naming the worker dirs searched so a misplaced app is found quickly
/// (left out when internal detail is hidden from clients: they are server paths).
fn app_not_found(rt: &Runtime, segment: &str) -> Error {
    if rt.hide_internal_errors() {
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

/// Where each app's SQLite database is (`APP_DATABASE_PATH` for its workers): beside marina's
/// own file when marina runs on SQLite; `None` on PostgreSQL (and in memory), where apps reach
/// their schema through the database plugin, never with marina's credentials.
fn app_database_path(store: &Store, state_dir: &std::path::Path) -> Option<AppDatabasePath> {
    store.sqlite_path()?;
    let state_dir = state_dir.to_path_buf();
    Some(AppDatabasePath(Arc::new(move |name: &str| {
        let ident = marina_store::sql::app_ident(name).ok()?;
        Some(marina_store::app_sqlite_path(&state_dir, &ident))
    })))
}
