//! Start-up: what [`Server::bind_with_catalog`](crate::Server::bind_with_catalog) sets up
//! before the listener accepts, and which parts of it run side by side.

use std::net::SocketAddr;
use std::sync::Arc;

use marina_apps::WorkerKind;
use marina_apps::registry::Registry;
use marina_core::Error;
use marina_store::Store;
use marina_workers::backend::Backend;
use marina_workers::{AppDatabasePath, PoolOptions, WorkerPool};
use tokio::net::TcpListener;

use crate::RuntimeConfig;

/// Raises the open-file limit to its hard limit, so that many clients do not make `accept`
/// fail. (marina makes itself non-dumpable when the worker sandbox starts, see
/// `marina_workers::process::sandbox`.)
pub(crate) fn harden_process() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("could not raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// marina's database is its own: `marina.db` (SQLite copies its mode to the `-wal` and `-shm`
/// files) is 0600. The state dir itself is 0700, or 0711 when workers run as another user and
/// must pass through it to their own dirs, and each app's database dir belongs to that app's
/// worker (the worker sandbox sets both). Not a umask: marina may share its process with other
/// code (tests).
fn protect_state_files(state_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for (name, mode) in [("marina.db", 0o600), ("marina.db-wal", 0o600), ("marina.db-shm", 0o600)] {
        let path = state_dir.join(name);
        if path.exists()
            && let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        {
            tracing::warn!(path = %path.display(), "could not make it private to marina: {e}");
        }
    }
}

/// marina's own database, open, with its schema: migrated now, or, for a SQLite file this
/// start created, being migrated on the task returned (every caller of the store waits for it,
/// see [`Store::migrate_system_in_background`]; [`crate::Server::run`] stops marina if it fails).
pub(crate) async fn open_system_store(
    url: Option<String>,
    state_dir: std::path::PathBuf,
) -> Result<(Store, Schema), Error> {
    let store = Store::open_quick(url.as_deref(), &state_dir).await?;
    // Before the migrations create `-wal` and `-shm`, which SQLite gives marina.db's mode.
    protect_state_files(&state_dir);
    let schema = match store.migrate_system_in_background().await {
        Some(task) => Some(task),
        None => {
            store.migrate_system().await?;
            None
        }
    };
    Ok((store, schema))
}

/// A new marina.db's migrations, running on their task.
pub(crate) type Schema = Option<tokio::task::JoinHandle<Result<marina_store::MigrationReport, Error>>>;

/// `e`, the error a start failed with, unless the migrations of a new marina.db failed: then
/// theirs, which `e` most likely followed from (a plugin that found no table).
pub(crate) async fn root_cause(schema: Schema, e: Error) -> Error {
    match schema {
        Some(task) => match task.await {
            Ok(Err(first)) => first,
            _ => e,
        },
        None => e,
    }
}

/// Resolves if the migrations of a new marina.db fail, with their error; never otherwise.
pub(crate) async fn schema_failure(schema: Schema) -> Error {
    let Some(task) = schema else { return std::future::pending().await };
    match task.await {
        Ok(Ok(_)) => std::future::pending().await,
        Ok(Err(e)) => e,
        Err(e) => Error::internal(format!("migrating marina's new database stopped: {e}")),
    }
}

/// What start-up sets up while marina's database is being opened: the registry and its
/// watcher, the listener, the worker pool.
pub(crate) struct Early {
    pub(crate) registry: Arc<Registry>,
    pub(crate) watch: Option<marina_apps::registry::WatchHandle>,
    pub(crate) listener: TcpListener,
    pub(crate) local: SocketAddr,
    pub(crate) pool: Arc<WorkerPool>,
    pub(crate) tokens: marina_workers::WorkerTokens,
}

impl Early {
    pub(crate) async fn start(config: &RuntimeConfig) -> Result<Self, Error> {
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
        let runtime_api_url = format!("http://127.0.0.1:{}", local.port());
        let wasm = marina_wasm::WasmBackend::new(marina_wasm::WasmOptions {
            state_dir: config.state_dir.clone(),
            node_env: config.node_env.as_str().to_string(),
            log_level: config.log_level.clone(),
            runtime_api_url: runtime_api_url.clone(),
        })?;
        let backends: Vec<(WorkerKind, Arc<dyn Backend>)> = vec![(WorkerKind::Wasm, Arc::new(wasm))];
        // Each worker gets a token for the keyval and database services (revoked when it exits).
        let tokens = marina_workers::WorkerTokens::default();
        let pool = WorkerPool::with_backends(
            PoolOptions {
                pool_size: config.pool_size,
                ephemeral_concurrency: config.ephemeral_concurrency,
                ephemeral_queue_limit: config.ephemeral_queue_limit,
                ephemeral_spares: config.ephemeral_spares,
                state_dir: config.state_dir.clone(),
                runtime_api_url,
                node_env: config.node_env.as_str().to_string(),
                log_level: config.log_level.clone(),
                js_runtime: config.js_runtime.clone(),
                worker_dirs: registry.dirs().to_vec(),
                plugin_dirs: config.plugin_dirs.clone(),
                app_database: app_database_path(config),
                tokens: Some(tokens.clone()),
                sandbox: config.sandbox.clone(),
                body_timeout: config.body_timeout,
            },
            backends,
        )?;
        Ok(Self { registry, watch, listener, local, pool, tokens })
    }
}

/// Where each app's SQLite database is (`APP_DATABASE_PATH` for its workers): beside marina's
/// own file when marina runs on SQLite; `None` on PostgreSQL (and in memory), where apps reach
/// their schema through the database plugin, never with marina's credentials.
fn app_database_path(config: &RuntimeConfig) -> Option<AppDatabasePath> {
    let url = marina_store::DatabaseUrl::parse(config.database_url.as_deref(), &config.state_dir).ok()?;
    if !matches!(url, marina_store::DatabaseUrl::SqliteFile(_)) {
        return None;
    }
    let state_dir = config.state_dir.clone();
    Some(AppDatabasePath(Arc::new(move |name: &str| {
        // Only the app that owns the file gets it (and the right to write its dir): another
        // app whose name maps to the same file is refused ([`marina_store::claim_app_database`]).
        match marina_store::claim_app_database(&state_dir, name) {
            Ok(path) => Some(path),
            Err(e) => {
                if e.code() == "APP_DATABASE_CONFLICT" {
                    tracing::warn!(app = %name, "{}", e.message());
                }
                None
            }
        }
    })))
}
