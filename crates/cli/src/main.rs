//! The `marina` binary: a thin layer of commands over the server, apps, workers, wasm and store
//! crates. `marina config --markdown` prints the configuration table the README holds.
//!
//! Exit codes: 0 success, 1 a failure while running, 2 bad configuration or usage (the message
//! names the variable or flag, quotes the value and says what was expected).

mod accesslog;
mod db;
mod keys;
mod logfmt;
mod logwriter;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// One binary that hosts many web apps behind a built-in gateway.
#[derive(Parser, Debug)]
#[command(name = "marina", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve every app in the worker dirs (HTTP/1.1 and HTTP/2 on one port).
    Serve(Box<serve::ServeArgs>),
    /// Database migrations for marina and for each app: migrate, rollback, status, reset, new.
    Db(db::DbArgs),
    /// API keys in marina's database: create (shown once), list, revoke, meta.
    Keys(keys::KeysArgs),
    /// Check app manifests: one app dir, or a worker dir full of apps; exits 1 on any error.
    Check {
        /// An app directory or a worker directory.
        dir: std::path::PathBuf,
    },
    /// Print the configuration variables (`--markdown`: the README's table).
    Config {
        /// A Markdown table (what README.md's configuration section holds).
        #[arg(long)]
        markdown: bool,
    },
    /// WebAssembly apps: `marina wasm build app.wat -o app.wasm` turns a core module written
    /// in WAT into a wasi:http/proxy component (offline; no other tool needed).
    Wasm {
        #[command(subcommand)]
        command: WasmCommand,
    },
}

#[derive(Subcommand, Debug)]
enum WasmCommand {
    /// Build a wasi:http/proxy component from a core module in WAT.
    Build {
        /// The `.wat` file.
        input: std::path::PathBuf,
        /// Where to write the component (default: the input with `.wasm`).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
}

/// mimalloc: the proxy path allocates small, short-lived buffers per request (headers, body
/// frames, futures); glibc malloc spent ~10% of marina's CPU on them under load. Built with
/// `no_thp` (workspace Cargo.toml): mimalloc otherwise asks for transparent huge pages on its
/// arenas, so every 2 MiB region a thread touches becomes resident at once and is zeroed at
/// the first touch: 14 MiB of marina's 42 MiB idle RSS, and about 2 ms of its cold start.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors to stderr with exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Db(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("marina: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(db::run(args)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("marina: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Keys(args) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(keys::run(args)),
            Err(e) => {
                eprintln!("marina: cannot start the async runtime: {e}");
                ExitCode::from(1)
            }
        },
        Command::Config { markdown } => {
            if markdown {
                print!("{}", marina_core::settings::markdown_table());
            } else {
                for s in marina_core::settings::SETTINGS {
                    println!("{:32} --{:24} {}", s.var, s.flag, marina_core::settings::help_text(s));
                }
            }
            ExitCode::SUCCESS
        }
        Command::Wasm { command: WasmCommand::Build { input, output } } => {
            let output = output.unwrap_or_else(|| input.with_extension("wasm"));
            let built = std::fs::read_to_string(&input)
                .map_err(|e| format!("cannot read {}: {e}", input.display()))
                .and_then(|text| {
                    marina_wasm::component::component_from_wat(&text).map_err(|e| format!("{}: {e:#}", input.display()))
                })
                .and_then(|bytes| {
                    std::fs::write(&output, &bytes)
                        .map(|()| bytes.len())
                        .map_err(|e| format!("cannot write {}: {e}", output.display()))
                });
            match built {
                Ok(n) => {
                    println!("wrote {} ({n} bytes)", output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("marina: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { dir } => {
            let report = marina_apps::check::check_dir(&dir);
            print!("{report}");
            if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
    }
}
