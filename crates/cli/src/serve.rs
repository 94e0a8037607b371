//! `marina serve`: flags mirror the environment variables Buntime users already set.

use std::process::ExitCode;

use clap::Args;
use marina_server::{LogFormat, RawConfig, RuntimeConfig, Server};
use tracing_subscriber::EnvFilter;

/// Flags of `marina serve`. Each falls back to its environment variable; values are checked
/// after parsing so that a bad value is reported with the variable's name.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Port to listen on [default: 8000].
    #[arg(long, env = "PORT")]
    port: Option<String>,
    /// Address to listen on [default: 127.0.0.1; use 0.0.0.0 in containers].
    #[arg(long, env = "RUNTIME_HOST")]
    host: Option<String>,
    /// Colon-separated app directories [default: ./examples/apps when run from the repository, else ./apps].
    #[arg(long, env = "RUNTIME_WORKER_DIRS")]
    worker_dirs: Option<String>,
    /// Colon-separated plugin directories [default: ./plugins].
    #[arg(long, env = "RUNTIME_PLUGIN_DIRS")]
    plugin_dirs: Option<String>,
    /// Prefix of the internal API: "/_" serves it at /_/api [default: ""].
    #[arg(long, env = "RUNTIME_API_PREFIX")]
    api_prefix: Option<String>,
    /// Most app versions with warm workers at once (LRU) [default: 100].
    #[arg(long, env = "RUNTIME_POOL_SIZE")]
    pool_size: Option<String>,
    /// trace, debug, info, warn or error [default: info].
    #[arg(long, env = "RUNTIME_LOG_LEVEL")]
    log_level: Option<String>,
    /// text or json [default: json when NODE_ENV=production, else text].
    #[arg(long, env = "RUNTIME_LOG_FORMAT")]
    log_format: Option<String>,
    /// Where marina keeps its database, sockets and app databases [default: ./.marina].
    #[arg(long, env = "RUNTIME_STATE_DIR")]
    state_dir: Option<String>,
    /// development, production, staging or test [default: development].
    #[arg(long, env = "NODE_ENV")]
    node_env: Option<String>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT [default: 30s].
    #[arg(long, env = "RUNTIME_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<String>,
    /// ttl:0 requests running at once [default: 2].
    #[arg(long, env = "RUNTIME_EPHEMERAL_CONCURRENCY")]
    ephemeral_concurrency: Option<String>,
    /// ttl:0 requests waiting before 503 [default: 100].
    #[arg(long, env = "RUNTIME_EPHEMERAL_QUEUE_LIMIT")]
    ephemeral_queue_limit: Option<String>,
    /// JavaScript runtime for js apps: bun, node or a path [default: bun when on PATH, else node].
    #[arg(long = "js-runtime", env = "RUNTIME_JS")]
    js_runtime: Option<String>,
    /// sqlite://PATH or postgres://… [default: sqlite://{state dir}/marina.db].
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
}

impl ServeArgs {
    fn raw(self) -> RawConfig {
        RawConfig {
            port: self.port,
            host: self.host,
            worker_dirs: self.worker_dirs,
            plugin_dirs: self.plugin_dirs,
            api_prefix: self.api_prefix,
            pool_size: self.pool_size,
            log_level: self.log_level,
            log_format: self.log_format,
            state_dir: self.state_dir,
            node_env: self.node_env,
            shutdown_timeout: self.shutdown_timeout,
            ephemeral_concurrency: self.ephemeral_concurrency,
            ephemeral_queue_limit: self.ephemeral_queue_limit,
            js_runtime: self.js_runtime,
            database_url: self.database_url,
        }
    }
}

/// Validate the configuration, set up logging, serve until SIGTERM/SIGINT.
pub fn run(args: ServeArgs) -> ExitCode {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => {
            eprintln!("marina: cannot read the current directory: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match RuntimeConfig::from_raw(&args.raw(), &cwd) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("marina: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("marina: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("marina: {e}");
                return ExitCode::from(1);
            }
        };
        match server.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("marina: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn init_logging(config: &RuntimeConfig) {
    // RUST_LOG, when set, wins: it is the standard knob for per-module detail.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},hyper=warn,h2=warn,tower=warn", config.log_level)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.event_format(crate::logfmt::JsonLines).init(),
        LogFormat::Text => builder.compact().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops marina gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
