//! `marina db`: migrate, roll back, inspect, reset and scaffold databases.
//!
//! Without `--app`/`--app-dir` a command acts on marina's own database and its embedded
//! migrations; with one, on that app's own database (`{state_dir}/apps/{name}/app.db`, or the
//! schema `app_{name}` on PostgreSQL) and the `.sql` files in the app's `migrations/` dir.
//!
//! Exit codes: 0 success; 1 a failed migration, a database error, or (for `status`) a changed
//! or unknown migration; 2 bad usage or bad migration files (unknown app or `--to` id, a
//! malformed or duplicate file name, `reset` without `--yes`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use marina_core::Error;
use marina_store::migrate::{self, Direction, MigrationReport, State, Status};
use marina_store::{MigrateOptions, MigrationSet, Migrator, RollbackTarget, Store};

/// `marina db ...` and the flags every db subcommand shares.
#[derive(clap::Args, Debug)]
pub struct DbArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DbCommand,

    /// The database: `sqlite://path`, `sqlite::memory:` or `postgres://user:pass@host/db`
    /// (default `sqlite://{state-dir}/marina.db`).
    #[arg(long, env = "DATABASE_URL", global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Where marina keeps its state (the default SQLite file, app databases).
    #[arg(long, env = "RUNTIME_STATE_DIR", global = true, default_value = "./.marina", value_name = "DIR")]
    pub state_dir: PathBuf,

    /// Colon-separated app directories searched by `--app` (default `examples/apps` when it
    /// exists, else `./apps`).
    #[arg(long, env = "RUNTIME_WORKER_DIRS", global = true, value_name = "DIRS")]
    pub worker_dirs: Option<String>,
}

/// Which database a command acts on.
#[derive(clap::Args, Debug, Default)]
pub struct Target {
    /// An app by name (as in URLs: `todo`, `todo@1`), found in the worker dirs.
    #[arg(long, value_name = "NAME", conflicts_with = "app_dir")]
    pub app: Option<String>,

    /// An app directory given directly (its `migrations/` dir is used).
    #[arg(long, value_name = "DIR")]
    pub app_dir: Option<PathBuf>,
}

/// The `marina db` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DbCommand {
    /// Apply pending migrations, each in its own transaction.
    Migrate {
        #[command(flatten)]
        target: Target,
        /// Apply only up to and including this id.
        #[arg(long, value_name = "ID")]
        to: Option<i64>,
        /// Show what would be applied; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Undo applied migrations with their down files (one step by default).
    Rollback {
        #[command(flatten)]
        target: Target,
        /// Undo the last N migrations.
        #[arg(long, value_name = "N", conflicts_with = "to")]
        steps: Option<u32>,
        /// Undo every migration after this id (it stays applied; 0 undoes all).
        #[arg(long, value_name = "ID")]
        to: Option<i64>,
    },
    /// Show applied, pending, changed and unknown migrations.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop every table of the database and apply all migrations again.
    Reset {
        #[command(flatten)]
        target: Target,
        /// Confirm: this deletes all data in the database.
        #[arg(long)]
        yes: bool,
    },
    /// Create `NNNN_NAME.up.sql` and `NNNN_NAME.down.sql` in the app's migrations dir.
    New {
        /// The description part of the file names (letters, digits, '_', '-').
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Exit code for bad usage (unknown app, bad name, missing `--yes`).
const USAGE: u8 = 2;

/// A failure with the exit code it ends with. The error is boxed: `core::Error` is near
/// clippy's large-`Err` bound by itself, and a command's failure path is not hot.
struct Failure {
    code: u8,
    error: Box<Error>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let usage = matches!(
            error.code(),
            "DATABASE_URL_INVALID"
                | "APP_NAME_INVALID"
                | "APP_NOT_FOUND"
                | "CONFIRMATION_REQUIRED"
                | "MIGRATION_NAME_INVALID"
                | "MIGRATION_DUPLICATE_ID"
                | "MIGRATION_ORPHAN_DOWN"
                | "MIGRATION_INVALID"
                | "MIGRATION_TARGET_UNKNOWN"
        );
        Failure { code: if usage { USAGE } else { 1 }, error: Box::new(error) }
    }
}

/// Run a `marina db` command. Failures are printed here (`marina: error: ...`) and become the
/// exit code; the `Err` case is reserved for writing to stdout failing.
pub async fn run(args: DbArgs) -> anyhow::Result<ExitCode> {
    match run_inner(args).await {
        Ok(code) => Ok(code),
        Err(f) => {
            eprintln!("marina: error: {}", f.error);
            Ok(ExitCode::from(f.code))
        }
    }
}

/// The database and migrations a command acts on.
struct Resolved {
    /// `None` for marina's own database.
    app: Option<String>,
    /// The app directory, for `db new`.
    dir: Option<PathBuf>,
}

async fn run_inner(args: DbArgs) -> Result<ExitCode, Failure> {
    let DbArgs { command, database_url, state_dir, worker_dirs } = args;
    let url = database_url.as_deref();
    let target = match &command {
        DbCommand::Migrate { target, .. }
        | DbCommand::Rollback { target, .. }
        | DbCommand::Status { target, .. }
        | DbCommand::Reset { target, .. }
        | DbCommand::New { target, .. } => resolve_target(target, worker_dirs.as_deref())?,
    };

    if let DbCommand::New { name, .. } = &command {
        let Some(dir) = &target.dir else {
            return Err(Failure {
                code: USAGE,
                error: Box::new(Error::bad_request(
                    "APP_REQUIRED",
                    "marina's own migrations are embedded in the binary; `db new` needs --app NAME or --app-dir DIR",
                )),
            });
        };
        let (up, down) = migrate::new_migration(&dir.join("migrations"), name)?;
        println!("created {}", up.display());
        println!("created {}", down.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let DbCommand::Reset { yes: false, .. } = &command {
        return Err(Error::bad_request(
            "CONFIRMATION_REQUIRED",
            "`db reset` drops every table and all data of the database; add --yes to confirm",
        )
        .into());
    }

    let set = match &target.dir {
        Some(dir) => MigrationSet::from_dir(&dir.join("migrations"))?,
        None => MigrationSet::system()?,
    };
    let store = match &target.app {
        Some(app) => Store::open_app(url, &state_dir, app).await?,
        None => Store::open(url, &state_dir).await?,
    };
    let migrator = Migrator::new(&store, &set);
    let started = Instant::now();
    match command {
        DbCommand::Migrate { to, dry_run, .. } => {
            let report = migrator.migrate(&MigrateOptions { to, dry_run }).await?;
            Ok(print_report(&report, set.source(), started))
        }
        DbCommand::Rollback { steps, to, .. } => {
            let target = match (steps, to) {
                (_, Some(id)) => RollbackTarget::To(id),
                (Some(n), None) => RollbackTarget::Steps(n),
                (None, None) => RollbackTarget::Steps(1),
            };
            let report = migrator.rollback(target).await?;
            Ok(print_report(&report, set.source(), started))
        }
        DbCommand::Reset { .. } => {
            let report = migrator.reset().await?;
            println!("dropped every table of {}", report.database);
            Ok(print_report(&report, set.source(), started))
        }
        DbCommand::Status { json, .. } => {
            let status = migrator.status().await?;
            Ok(print_status(&status, json))
        }
        DbCommand::New { .. } => unreachable!("handled above"),
    }
}

/// Turn `--app`/`--app-dir` into an app name and directory.
fn resolve_target(target: &Target, worker_dirs: Option<&str>) -> Result<Resolved, Failure> {
    if let Some(dir) = &target.app_dir {
        if !dir.is_dir() {
            return Err(Error::bad_request(
                "APP_NOT_FOUND",
                format!("--app-dir '{}' is not a directory", dir.display()),
            )
            .into());
        }
        return Ok(Resolved { app: Some(app_name_of_dir(dir)?), dir: Some(dir.clone()) });
    }
    let Some(segment) = &target.app else { return Ok(Resolved { app: None, dir: None }) };
    let dirs = worker_dirs_or_default(worker_dirs);
    let registry = marina_apps::registry::Registry::new(dirs.clone());
    let Some(found) = registry.resolve(segment) else {
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(Error::bad_request(
            "APP_NOT_FOUND",
            format!(
                "no app '{segment}' in the worker dirs [{}] (set --worker-dirs or RUNTIME_WORKER_DIRS)",
                shown.join(", ")
            ),
        )
        .into());
    };
    Ok(Resolved { app: Some(found.name), dir: Some(found.dir) })
}

fn worker_dirs_or_default(worker_dirs: Option<&str>) -> Vec<PathBuf> {
    match worker_dirs.filter(|s| !s.trim().is_empty()) {
        Some(list) => list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
        None if Path::new("examples/apps").is_dir() => vec![PathBuf::from("examples/apps")],
        None => vec![PathBuf::from("./apps")],
    }
}

/// The app name of a directory in any Buntime layout: `todo/`, `todo@1.2.3/`, `todo/1.2.3/`,
/// `todo/latest/`. All versions of an app share its database.
fn app_name_of_dir(dir: &Path) -> Result<String, Failure> {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let base = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let last = base(&abs).unwrap_or_default();
    let is_version = last == "latest" || marina_apps::registry::folder_version(&last).is_some();
    let name = if is_version {
        abs.parent().and_then(base).unwrap_or_default()
    } else {
        last.split('@').next().unwrap_or_default().to_string()
    };
    if name.is_empty() {
        return Err(
            Error::bad_request("APP_NAME_INVALID", format!("cannot tell the app name of '{}'", dir.display())).into()
        );
    }
    Ok(name)
}

fn print_report(report: &MigrationReport, source: &str, started: Instant) -> ExitCode {
    let verb = match (report.direction, report.dry_run) {
        (Direction::Up, true) => "would apply",
        (Direction::Up, false) => "applied",
        (Direction::Down, _) => "rolled back",
    };
    println!("database:   {}", report.database);
    println!("migrations: {source}");
    for step in &report.steps {
        let tx = if step.transactional { "" } else { "  (no transaction)" };
        if report.dry_run {
            println!("  {verb:<12} {}{tx}", step.name);
        } else {
            println!("  {verb:<12} {}  {} ms{tx}", step.name, step.duration_ms);
        }
    }
    if let Some(f) = &report.failure {
        println!("  {:<12} {}", "FAILED", f.name);
        eprintln!("marina: error: {}", f.message);
    }
    let n = report.steps.len();
    let plural = if n == 1 { "migration" } else { "migrations" };
    let total = started.elapsed().as_millis();
    match (&report.failure, n) {
        (Some(f), _) => {
            println!("{n} {plural} {verb} before {} failed ({total} ms)", f.name);
            ExitCode::from(1)
        }
        (None, 0) if report.direction == Direction::Up => {
            println!("nothing to apply: the database is up to date ({total} ms)");
            ExitCode::SUCCESS
        }
        (None, 0) => {
            println!("nothing to roll back ({total} ms)");
            ExitCode::SUCCESS
        }
        (None, _) => {
            println!("{n} {plural} {verb} in {total} ms");
            ExitCode::SUCCESS
        }
    }
}

fn print_status(status: &Status, json: bool) -> ExitCode {
    let count = |s: State| status.entries.iter().filter(|e| e.state == s).count();
    let (applied, pending, changed, unknown) =
        (count(State::Applied), count(State::Pending), count(State::Changed), count(State::Unknown));
    if json {
        let mut value = serde_json::to_value(status).unwrap_or_default();
        value["counts"] = serde_json::json!({
            "applied": applied, "pending": pending, "changed": changed, "unknown": unknown
        });
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        println!("database:   {}", status.database);
        println!("migrations: {}", status.source);
        if !status.entries.is_empty() {
            println!("  {:<8} {:<24} {:>9}  {:<4}  NAME", "STATE", "APPLIED AT", "DURATION", "DOWN");
        }
        for e in &status.entries {
            let state = match e.state {
                State::Applied => "applied",
                State::Pending => "pending",
                State::Changed => "CHANGED",
                State::Unknown => "UNKNOWN",
            };
            let duration = e.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default();
            let down = if e.has_down { "yes" } else { "no" };
            println!("  {state:<8} {:<24} {duration:>9}  {down:<4}  {}", e.applied_at.as_deref().unwrap_or(""), e.name);
        }
        println!("{applied} applied, {pending} pending, {changed} changed, {unknown} unknown");
        if changed > 0 {
            eprintln!(
                "marina: error: a changed migration was edited after it was applied; restore it or add a new migration"
            );
        }
        if unknown > 0 {
            eprintln!("marina: error: an unknown migration is applied but has no files here");
        }
    }
    if changed + unknown > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_from_every_layout() {
        let root = tempfile_dir();
        for (rel, want) in
            [("todo", "todo"), ("todo@1.2.3", "todo"), ("notes/1.2.3", "notes"), ("notes/latest", "notes")]
        {
            let d = root.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            assert_eq!(app_name_of_dir(&d).ok().unwrap(), want, "{rel}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("marina-db-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn worker_dirs_split_on_colons() {
        assert_eq!(
            worker_dirs_or_default(Some("a:b::c")),
            vec![PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c")]
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        let f: Failure = Error::bad_request("APP_NOT_FOUND", "x").into();
        assert_eq!(f.code, 2);
        let f: Failure = Error::bad_request("MIGRATION_CHECKSUM_MISMATCH", "x").into();
        assert_eq!(f.code, 1);
    }
}
