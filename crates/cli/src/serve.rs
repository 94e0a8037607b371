//! `marina serve`: flags mirror the environment variables Buntime users already set.

use std::process::ExitCode;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use marina_core::settings::{SETTINGS, help_text};
use marina_server::{LogFormat, RawConfig, RuntimeConfig, Scheduler, Server};
use tracing_subscriber::EnvFilter;

/// Flags of `marina serve`, generated from [`SETTINGS`]: each `--flag` falls back to its
/// environment variable; values are checked after parsing so that a bad value is reported
/// with the variable's name.
#[derive(Debug, Default)]
pub struct ServeArgs {
    raw: RawConfig,
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut raw = RawConfig::new();
        for s in SETTINGS {
            if let Some(v) = matches.get_one::<String>(s.var) {
                raw.set(s.var, v.clone());
            }
        }
        Ok(Self { raw })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        SETTINGS
            .iter()
            .fold(cmd, |cmd, s| cmd.arg(Arg::new(s.var).long(s.flag).env(s.var).value_name("VALUE").help(help_text(s))))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
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
    let config = match RuntimeConfig::from_raw(&args.raw, &cwd) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("marina: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match config.scheduler {
        // Unset: tokio's default, one worker per CPU marina may run on (RUNTIME_THREADS's row).
        Scheduler::Shared => {
            if let Some(threads) = config.threads {
                builder.worker_threads(threads);
            }
        }
        // Connections, and the workers their requests boot, run on their own threads
        // (RUNTIME_THREADS of them); what is left here is background work: the pool's
        // housekeeping, plugins' timers, reloads (accepting runs on the main thread).
        Scheduler::PerThread => {
            builder.worker_threads(1);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("marina: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async move { Server::bind(config).await?.run(shutdown_signal()).await });
    // The shutdown has run its course (within RUNTIME_SHUTDOWN_TIMEOUT). A blocking call still
    // going (an app's runaway SQL, a stuck file system) must not hold the exit: dropping the
    // runtime would wait for it without end. Its work is abandoned as a crash would (SQLite's
    // journal keeps the database whole).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    // The buffered log lines first, then the reason for a failure, if any.
    crate::logwriter::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marina: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &RuntimeConfig) {
    // RUST_LOG, when set, wins: it is the standard knob for per-module detail.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},hyper=warn,h2=warn,tower=warn", config.log_level)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(crate::logwriter::BufferedStderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.event_format(crate::logfmt::JsonLines).init(),
        LogFormat::Text => builder.compact().init(),
    }
    // Access lines are written directly, in the same bytes; the text layout on a terminal keeps
    // tracing's coloured line. Whether they are logged at all is the filter's answer, once.
    let sink: fn(&marina_server::completion::AccessLine<'_>) = match config.log_format {
        LogFormat::Json => crate::accesslog::write_json,
        LogFormat::Text if !ansi => crate::accesslog::write_text,
        LogFormat::Text => return,
    };
    let on = tracing::enabled!(target: "marina::access", tracing::Level::INFO);
    marina_server::completion::set_access_sink(on.then_some(sink));
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
