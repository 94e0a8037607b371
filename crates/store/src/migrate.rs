//! The migration engine: SQL files with up and down, checksums verified on every run, one
//! transaction per migration, a lock per database.
//!
//! # Files
//! `NNNN_description.up.sql` and optionally `NNNN_description.down.sql`. The id is the
//! number (leading zeros do not make ids distinct: `01_a` and `1_b` are a duplicate). A file
//! whose leading comments contain `-- marina:no-transaction` runs statement by statement
//! outside a transaction (for `CREATE INDEX CONCURRENTLY` and the like); it is not atomic, so
//! write it to be re-runnable (`IF NOT EXISTS`).
//!
//! # Bookkeeping
//! `_marina_migrations(id, description, checksum, applied_at, duration_ms)` in the database
//! migrated (on PostgreSQL, in its schema). The checksum is the hex SHA-256 of the up file's
//! bytes. A transactional migration's row is written in the same transaction as its SQL, so
//! a crash (even SIGKILL) leaves either both or neither.
//!
//! # Locking
//! PostgreSQL: a session advisory lock keyed by the schema, released by the server when the
//! connection dies. SQLite: an `flock` on `{file}.migrate-lock`, released by the kernel when
//! the process dies. Either way a second migrator waits (up to [`LOCK_TIMEOUT`]) and then
//! finds nothing left to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::StatusCode;
use marina_core::Error;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::conn::Conn;
use crate::sql;
use crate::store::{BackendKind, Store};
use crate::value::Value;

/// How long a migrator waits for another one holding the same database's lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The header comment that runs a file outside a transaction.
pub const NO_TRANSACTION_HEADER: &str = "-- marina:no-transaction";

/// The bookkeeping table.
pub const TABLE: &str = "_marina_migrations";

/// marina's own schema, embedded in the binary. `system_migrations_are_all_embedded` checks
/// that this list matches `crates/store/migrations/`.
const SYSTEM: &[(&str, &str)] = &[
    ("0001_marina_meta.up.sql", include_str!("../migrations/0001_marina_meta.up.sql")),
    ("0001_marina_meta.down.sql", include_str!("../migrations/0001_marina_meta.down.sql")),
    ("0011_keyval.up.sql", include_str!("../migrations/0011_keyval.up.sql")),
    ("0011_keyval.down.sql", include_str!("../migrations/0011_keyval.down.sql")),
    ("0012_api_keys.up.sql", include_str!("../migrations/0012_api_keys.up.sql")),
    ("0012_api_keys.down.sql", include_str!("../migrations/0012_api_keys.down.sql")),
    ("0014_proxy_rules.up.sql", include_str!("../migrations/0014_proxy_rules.up.sql")),
    ("0014_proxy_rules.down.sql", include_str!("../migrations/0014_proxy_rules.down.sql")),
    ("0016_app_roles.up.sql", include_str!("../migrations/0016_app_roles.up.sql")),
    ("0016_app_roles.down.sql", include_str!("../migrations/0016_app_roles.down.sql")),
    ("0017_kv_indexes.up.sql", include_str!("../migrations/0017_kv_indexes.up.sql")),
    ("0017_kv_indexes.down.sql", include_str!("../migrations/0017_kv_indexes.down.sql")),
    ("0018_gateway_shell_excludes.up.sql", include_str!("../migrations/0018_gateway_shell_excludes.up.sql")),
    ("0018_gateway_shell_excludes.down.sql", include_str!("../migrations/0018_gateway_shell_excludes.down.sql")),
    ("0019_gateway_metrics_history.up.sql", include_str!("../migrations/0019_gateway_metrics_history.up.sql")),
    ("0019_gateway_metrics_history.down.sql", include_str!("../migrations/0019_gateway_metrics_history.down.sql")),
    (
        "0020_gateway_metrics_history_runs.up.sql",
        include_str!("../migrations/0020_gateway_metrics_history_runs.up.sql"),
    ),
    (
        "0020_gateway_metrics_history_runs.down.sql",
        include_str!("../migrations/0020_gateway_metrics_history_runs.down.sql"),
    ),
];

fn err(status: StatusCode, code: &'static str, message: String) -> Error {
    Error::new(status, code, message)
}

fn bad(code: &'static str, message: String) -> Error {
    err(StatusCode::BAD_REQUEST, code, message)
}

fn conflict(code: &'static str, message: String) -> Error {
    err(StatusCode::CONFLICT, code, message)
}

/// One migration: its up script and, when there is one, its down script.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The numeric id; order of application.
    pub id: i64,
    /// The file stem without direction, e.g. `0003_add_users`: how messages name it.
    pub name: String,
    /// The description part of the name, with `_` shown as spaces.
    pub description: String,
    /// The up script.
    pub up: String,
    /// The down script, if a `.down.sql` file exists.
    pub down: Option<String>,
    /// Hex SHA-256 of the up file.
    pub checksum: String,
    /// `false` when the up file opts out with [`NO_TRANSACTION_HEADER`].
    pub up_transactional: bool,
    /// `false` when the down file opts out.
    pub down_transactional: bool,
}

/// Which way a file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// `.up.sql`: apply.
    Up,
    /// `.down.sql`: roll back.
    Down,
}

/// Parse a migration file name into `(id, stem, description, direction)`.
///
/// # Errors
/// `MIGRATION_NAME_INVALID`, quoting the name and the expected pattern.
pub fn parse_file_name(file: &str) -> Result<(i64, String, String, Direction), Error> {
    let invalid = |why: &str| {
        bad(
            "MIGRATION_NAME_INVALID",
            format!(
                "migration file '{file}' {why}; expected NNNN_description.up.sql or NNNN_description.down.sql (description: letters, digits, '_' or '-')"
            ),
        )
    };
    let (stem, direction) = if let Some(s) = file.strip_suffix(".up.sql") {
        (s, Direction::Up)
    } else if let Some(s) = file.strip_suffix(".down.sql") {
        (s, Direction::Down)
    } else {
        return Err(invalid("does not end in .up.sql or .down.sql"));
    };
    let Some((digits, description)) = stem.split_once('_') else {
        return Err(invalid("has no '_' between the id and the description"));
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("does not start with a numeric id"));
    }
    let id: i64 = digits.parse().map_err(|_| invalid("has an id too large for a 64-bit integer"))?;
    if description.is_empty() || !description.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(invalid("has an empty description or one with characters other than letters, digits, '_' and '-'"));
    }
    Ok((id, stem.to_string(), description.replace('_', " "), direction))
}

/// Whether the leading comment block of `script` contains [`NO_TRANSACTION_HEADER`].
fn opts_out_of_transaction(script: &str) -> bool {
    script
        .lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("--"))
        .any(|l| l.eq_ignore_ascii_case(NO_TRANSACTION_HEADER))
}

/// An ordered, validated set of migrations, from a directory or embedded files.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    source: String,
    migrations: Vec<Migration>,
}

/// The largest migration file read from a directory (data-seeding migrations can be large; a
/// bound still keeps a stray multi-gigabyte file out of marina's memory).
pub const MAX_MIGRATION_FILE_BYTES: u64 = 64 * 1024 * 1024;

impl MigrationSet {
    /// marina's own migrations, embedded in the binary.
    ///
    /// # Errors
    /// Only if an embedded file is malformed, which a unit test rules out.
    pub fn system() -> Result<Self, Error> {
        // Not scanned for BEGIN/COMMIT at every start (a third of this function's cost was that
        // lexing, ~0.2 ms of a cold start): `system_migrations_are_all_embedded` checks these
        // files with the full `from_files`.
        Self::build("marina's embedded migrations", SYSTEM.iter().map(|(n, s)| (n.to_string(), s.to_string())), false)
    }

    /// Load every `*.sql` file of `dir` (other files, and hidden ones, are ignored). A missing
    /// directory is an empty set: an app without migrations has nothing to apply.
    ///
    /// # Errors
    /// `MIGRATIONS_UNREADABLE` when the directory or a file cannot be read, plus every error of
    /// [`MigrationSet::from_files`].
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        let source = dir.display().to_string();
        let unreadable =
            |what: &Path, e: std::io::Error| Error::internal(format!("cannot read '{}': {e}", what.display()));
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { source, migrations: Vec::new() });
            }
            Err(e) => return Err(unreadable(dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| unreadable(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".sql") {
                continue;
            }
            // An app's migration files are read by marina (often root): never through a symlink
            // leading out of the dir, never a FIFO or device, never without a size bound.
            let bytes = marina_core::app_file::read_in_dir(dir, Path::new(&name), MAX_MIGRATION_FILE_BYTES)
                .map_err(|r| Error::internal(format!("cannot read '{}': {r}", entry.path().display())))?
                .unwrap_or_default();
            let text = String::from_utf8(bytes).map_err(|e| {
                unreadable(&entry.path(), std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
            })?;
            files.push((name, text));
        }
        Self::from_files(&source, files)
    }

    /// Build a set from `(file name, contents)` pairs; `source` names where they came from in
    /// messages.
    ///
    /// # Errors
    /// `MIGRATION_NAME_INVALID`, `MIGRATION_DUPLICATE_ID` (naming both files),
    /// `MIGRATION_ORPHAN_DOWN` (a down file without its up file) and `MIGRATION_INVALID`
    /// (a transactional file that contains `BEGIN`/`COMMIT` of its own).
    pub fn from_files(source: &str, files: impl IntoIterator<Item = (String, String)>) -> Result<Self, Error> {
        Self::build(source, files, true)
    }

    /// `check_control`: refuse transactional files with `BEGIN`/`COMMIT` of their own.
    fn build(
        source: &str,
        files: impl IntoIterator<Item = (String, String)>,
        check_control: bool,
    ) -> Result<Self, Error> {
        let mut ups: BTreeMap<i64, (String, String, String)> = BTreeMap::new();
        let mut downs: Vec<(i64, String, String)> = Vec::new();
        for (file, text) in files {
            let (id, stem, description, direction) = parse_file_name(&file)?;
            if !check_control || opts_out_of_transaction(&text) {
                // Runs statement by statement; BEGIN/COMMIT there is the author's business.
            } else if let Some(stmt) = sql::find_transaction_control(&text) {
                return Err(bad(
                    "MIGRATION_INVALID",
                    format!(
                        "migration file '{file}' in {source} contains the transaction statement '{stmt}'; marina runs each migration in its own transaction, so remove it (or start the file with '{NO_TRANSACTION_HEADER}')"
                    ),
                ));
            }
            match direction {
                Direction::Up => {
                    if let Some((other, _, _)) = ups.get(&id) {
                        return Err(bad(
                            "MIGRATION_DUPLICATE_ID",
                            format!(
                                "migration id {id} is used twice in {source}: '{other}.up.sql' and '{file}'; ids must be unique"
                            ),
                        ));
                    }
                    ups.insert(id, (stem, description, text));
                }
                Direction::Down => downs.push((id, stem, text)),
            }
        }
        let mut migrations: BTreeMap<i64, Migration> = ups
            .into_iter()
            .map(|(id, (name, description, up))| {
                let checksum = hex::encode(Sha256::digest(up.as_bytes()));
                let up_transactional = !opts_out_of_transaction(&up);
                (
                    id,
                    Migration {
                        id,
                        name,
                        description,
                        up,
                        down: None,
                        checksum,
                        up_transactional,
                        down_transactional: true,
                    },
                )
            })
            .collect();
        for (id, stem, text) in downs {
            match migrations.get_mut(&id) {
                Some(m) if m.name == stem && m.down.is_none() => {
                    m.down_transactional = !opts_out_of_transaction(&text);
                    m.down = Some(text);
                }
                Some(m) if m.name == stem => {
                    return Err(bad("MIGRATION_DUPLICATE_ID", format!("'{stem}.down.sql' appears twice in {source}")));
                }
                _ => {
                    return Err(bad(
                        "MIGRATION_ORPHAN_DOWN",
                        format!("'{stem}.down.sql' in {source} has no matching '{stem}.up.sql'"),
                    ));
                }
            }
        }
        Ok(Self { source: source.to_string(), migrations: migrations.into_values().collect() })
    }

    /// Where the files came from (a directory, or the embedded set).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The migrations, in id order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The migration with this id.
    pub fn get(&self, id: i64) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.id == id)
    }
}

/// Create `NNNN_name.up.sql` and `NNNN_name.down.sql` in `dir` with the next free id (one more
/// than the highest, at least four digits). Returns the two paths.
///
/// # Errors
/// `MIGRATION_NAME_INVALID` for a name that would not parse back, or any error loading the
/// existing files (so a broken directory is not made worse), or an I/O error.
pub fn new_migration(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), Error> {
    let existing = MigrationSet::from_dir(dir)?;
    let next = existing.migrations().last().map_or(1, |m| m.id + 1);
    let stem = format!("{next:04}_{name}");
    parse_file_name(&format!("{stem}.up.sql"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal(format!("cannot create the directory '{}': {e}", dir.display())))?;
    let up = dir.join(format!("{stem}.up.sql"));
    let down = dir.join(format!("{stem}.down.sql"));
    for (path, text) in [
        (&up, format!("-- {stem}: apply. Runs in one transaction with its bookkeeping row.\n")),
        (&down, format!("-- {stem}: undo what {stem}.up.sql does.\n")),
    ] {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| Error::internal(format!("cannot create '{}': {e}", path.display())))?;
    }
    Ok((up, down))
}

/// What `migrate`, `rollback` or `reset` did.
#[derive(Debug, Serialize)]
pub struct MigrationReport {
    /// The database, described with its password hidden.
    pub database: String,
    /// Applying or rolling back.
    pub direction: Direction,
    /// `true` when nothing was changed: `steps` is what would have run.
    pub dry_run: bool,
    /// The migrations that ran (or would run), in order.
    pub steps: Vec<Step>,
    /// The migration that failed, which stopped the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<MigrationFailure>,
}

impl MigrationReport {
    /// `Ok(self)` when nothing failed, else the failure as an error whose `data` lists the
    /// steps that did complete.
    ///
    /// # Errors
    /// The failure, as described.
    pub fn into_result(self) -> Result<Self, Error> {
        match self.failure {
            None => Ok(self),
            Some(f) => {
                let done: Vec<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
                Err(err(f.status, "MIGRATION_FAILED", f.message.clone())
                    .with_data(json!({ "failed": f.name, "completed": done, "database": self.database })))
            }
        }
    }
}

/// One migration that ran.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Its id.
    pub id: i64,
    /// Its name (`0003_add_users`).
    pub name: String,
    /// How long its SQL took (0 in a dry run).
    pub duration_ms: u64,
    /// Whether it ran inside a transaction.
    pub transactional: bool,
}

/// The migration that stopped a run.
#[derive(Debug, Serialize)]
pub struct MigrationFailure {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// What went wrong, and what state it left.
    pub message: String,
    #[serde(skip)]
    status: StatusCode,
}

/// A migration's state in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Applied, and its up file still has the recorded checksum.
    Applied,
    /// Has files, not applied.
    Pending,
    /// Applied, but its up file changed since.
    Changed,
    /// Applied, but has no files here (a newer marina or another branch applied it).
    Unknown,
}

/// One line of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEntry {
    /// Its id.
    pub id: i64,
    /// Its name, from the files, or `{id}_{description}` from the record for unknown ones.
    pub name: String,
    /// Its state.
    pub state: State,
    /// When it was applied (UTC, RFC 3339), if it was.
    pub applied_at: Option<String>,
    /// How long applying it took, if it was.
    pub duration_ms: Option<i64>,
    /// Whether a down file exists.
    pub has_down: bool,
}

/// The result of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The database, described with its password hidden.
    pub database: String,
    /// Where the files came from.
    pub source: String,
    /// Every known or recorded migration, by id.
    pub entries: Vec<StatusEntry>,
}

/// Options for [`Migrator::migrate`].
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// Apply only up to and including this id.
    pub to: Option<i64>,
    /// Only report what would be applied.
    pub dry_run: bool,
}

/// How far [`Migrator::rollback`] goes.
#[derive(Debug, Clone, Copy)]
pub enum RollbackTarget {
    /// Undo the last `n` applied migrations.
    Steps(u32),
    /// Undo every applied migration with an id above this one (which stays applied); `0`
    /// undoes all.
    To(i64),
}

#[derive(Debug, Clone)]
struct Record {
    id: i64,
    description: String,
    checksum: String,
    applied_at: String,
    duration_ms: i64,
}

/// Runs a [`MigrationSet`] against a [`Store`].
pub struct Migrator<'a> {
    store: &'a Store,
    set: &'a MigrationSet,
}

impl<'a> Migrator<'a> {
    /// A migrator for `set` on `store`.
    pub fn new(store: &'a Store, set: &'a MigrationSet) -> Self {
        Self { store, set }
    }

    /// Applied, pending, changed and unknown migrations. Reads only; creates nothing.
    ///
    /// # Errors
    /// Database errors.
    pub async fn status(&self) -> Result<Status, Error> {
        let mut conn = self.store.conn().await?;
        let records = read_records(&mut conn, false).await?;
        let mut entries: BTreeMap<i64, StatusEntry> = BTreeMap::new();
        for m in self.set.migrations() {
            entries.insert(
                m.id,
                StatusEntry {
                    id: m.id,
                    name: m.name.clone(),
                    state: State::Pending,
                    applied_at: None,
                    duration_ms: None,
                    has_down: m.down.is_some(),
                },
            );
        }
        for r in records.values() {
            let e = entries.entry(r.id).or_insert_with(|| StatusEntry {
                id: r.id,
                name: format!("{:04}_{}", r.id, r.description.replace(' ', "_")),
                state: State::Unknown,
                applied_at: None,
                duration_ms: None,
                has_down: false,
            });
            if e.state == State::Pending {
                let m = self.set.get(r.id).expect("pending entries come from the set");
                e.state = if m.checksum == r.checksum { State::Applied } else { State::Changed };
            }
            e.applied_at = Some(r.applied_at.clone());
            e.duration_ms = Some(r.duration_ms);
        }
        Ok(Status {
            database: self.store.describe().to_string(),
            source: self.set.source().to_string(),
            entries: entries.into_values().collect(),
        })
    }

    /// Every applied record must still match its file.
    fn verify(&self, records: &BTreeMap<i64, Record>) -> Result<(), Error> {
        for r in records.values() {
            let Some(m) = self.set.get(r.id) else {
                return Err(conflict(
                    "MIGRATION_UNKNOWN",
                    format!(
                        "{} has migration {} ('{}') applied, but {} has no file for it; refusing to continue (is this an older marina, or a different migrations directory?)",
                        self.store.describe(),
                        r.id,
                        r.description,
                        self.set.source()
                    ),
                ));
            };
            if m.checksum != r.checksum {
                return Err(conflict(
                    "MIGRATION_CHECKSUM_MISMATCH",
                    format!(
                        "migration '{}.up.sql' in {} changed after it was applied to {} (recorded sha256 {}, file now {}); applied migrations must not be edited: restore the file, or add a new migration",
                        m.name,
                        self.set.source(),
                        self.store.describe(),
                        r.checksum,
                        m.checksum
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Apply pending migrations in id order, each in its own transaction together with its
    /// bookkeeping row; stop at the first failure, which is rolled back.
    ///
    /// # Errors
    /// Before anything runs: `MIGRATION_UNKNOWN`, `MIGRATION_CHECKSUM_MISMATCH`,
    /// `MIGRATION_TARGET_UNKNOWN`, `MIGRATION_LOCK_TIMEOUT`, database errors. A failing
    /// migration is not an `Err`: it is the report's `failure` (see
    /// [`MigrationReport::into_result`]).
    pub async fn migrate(&self, options: &MigrateOptions) -> Result<MigrationReport, Error> {
        if let Some(to) = options.to
            && self.set.get(to).is_none()
        {
            return Err(bad(
                "MIGRATION_TARGET_UNKNOWN",
                format!("--to {to}: {} has no migration with that id", self.set.source()),
            ));
        }
        let mut conn = self.store.conn().await?;
        self.migrate_on(&mut conn, options).await
    }

    /// [`Migrator::migrate`] on a connection the caller leased already (a new marina.db is
    /// migrated on a task that leased it before anyone else could, see
    /// [`Store::migrate_system_in_background`](crate::Store::migrate_system_in_background)).
    pub(crate) async fn migrate_on(&self, conn: &mut Conn, options: &MigrateOptions) -> Result<MigrationReport, Error> {
        let mut report = self.report(Direction::Up, options.dry_run);
        if options.dry_run {
            let records = read_records(conn, false).await?;
            self.verify(&records)?;
            report.steps = self
                .pending(&records, options.to)
                .map(|m| Step { id: m.id, name: m.name.clone(), duration_ms: 0, transactional: m.up_transactional })
                .collect();
            return Ok(report);
        }
        let lock = Lock::acquire(self.store, conn).await?;
        let to = options.to;
        let result = self
            .locked(conn, async move |m, conn| m.migrate_locked(conn, to, &mut report).await.map(|()| report))
            .await;
        lock.release(conn).await;
        result
    }

    /// Run `steps` under the lock with a migrator of its own. On SQLite they are one call
    /// on the blocking pool ([`Conn::in_one_call`]): a new database's migrations are ~35 small
    /// statements, and a hand-off to the pool and back for each was the largest part of a
    /// cold start (~4 ms of ~12).
    async fn locked<R: Send + 'static>(
        &self,
        conn: &mut Conn,
        steps: impl AsyncFnOnce(&Migrator<'_>, &mut Conn) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let (store, set) = (self.store.clone(), self.set.clone());
        conn.in_one_call(async move |conn| steps(&Migrator::new(&store, &set), conn).await).await
    }

    fn pending<'s>(
        &'s self,
        records: &'s BTreeMap<i64, Record>,
        to: Option<i64>,
    ) -> impl Iterator<Item = &'s Migration> {
        self.set.migrations().iter().filter(move |m| !records.contains_key(&m.id) && to.is_none_or(|t| m.id <= t))
    }

    async fn migrate_locked(
        &self,
        conn: &mut Conn,
        to: Option<i64>,
        report: &mut MigrationReport,
    ) -> Result<(), Error> {
        ensure_table(conn).await?;
        // Read after taking the lock: whatever another migrator did while we waited counts.
        let records = read_records(conn, true).await?;
        self.verify(&records)?;
        for m in self.pending(&records, to) {
            match apply(conn, m, Direction::Up).await {
                Ok(step) => report.steps.push(step),
                Err(failure) => {
                    report.failure = Some(failure);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Undo applied migrations, newest first, each with its bookkeeping row in one
    /// transaction. Refuses before changing anything if one of them has no down file.
    ///
    /// # Errors
    /// `MIGRATION_NO_DOWN` (naming the missing file), `MIGRATION_TARGET_UNKNOWN`, and the
    /// errors of [`Migrator::migrate`].
    pub async fn rollback(&self, target: RollbackTarget) -> Result<MigrationReport, Error> {
        let mut report = self.report(Direction::Down, false);
        let mut conn = self.store.conn().await?;
        let lock = Lock::acquire(self.store, &mut conn).await?;
        let result = self
            .locked(&mut conn, async move |m, conn| m.rollback_locked(conn, target, &mut report).await.map(|()| report))
            .await;
        lock.release(&mut conn).await;
        result
    }

    async fn rollback_locked(
        &self,
        conn: &mut Conn,
        target: RollbackTarget,
        report: &mut MigrationReport,
    ) -> Result<(), Error> {
        ensure_table(conn).await?;
        let records = read_records(conn, true).await?;
        self.verify(&records)?;
        let applied: Vec<i64> = records.keys().rev().copied().collect();
        let chosen: Vec<i64> = match target {
            RollbackTarget::Steps(n) => applied.iter().take(n as usize).copied().collect(),
            RollbackTarget::To(to) => {
                if to != 0 && !records.contains_key(&to) {
                    return Err(bad(
                        "MIGRATION_TARGET_UNKNOWN",
                        format!(
                            "--to {to}: migration {to} is not applied to {} (use 0 to roll back everything)",
                            self.store.describe()
                        ),
                    ));
                }
                applied.iter().filter(|&&id| id > to).copied().collect()
            }
        };
        let migrations: Vec<&Migration> = chosen.iter().filter_map(|id| self.set.get(*id)).collect();
        if let Some(m) = migrations.iter().find(|m| m.down.is_none()) {
            return Err(bad(
                "MIGRATION_NO_DOWN",
                format!(
                    "cannot roll back '{}': {} has no '{}.down.sql'; nothing was rolled back",
                    m.name,
                    self.set.source(),
                    m.name
                ),
            ));
        }
        for m in migrations {
            match apply(conn, m, Direction::Down).await {
                Ok(step) => report.steps.push(step),
                Err(failure) => {
                    report.failure = Some(failure);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Drop every table, view and trigger of the database (on PostgreSQL, drop and recreate
    /// its schema), then apply every migration. Needs no down files.
    ///
    /// # Errors
    /// As [`Migrator::migrate`].
    pub async fn reset(&self) -> Result<MigrationReport, Error> {
        let mut report = self.report(Direction::Up, false);
        let mut conn = self.store.conn().await?;
        let lock = Lock::acquire(self.store, &mut conn).await?;
        let result = self
            .locked(&mut conn, async move |m, conn| {
                drop_everything(m.store, conn).await?;
                m.migrate_locked(conn, None, &mut report).await.map(|()| report)
            })
            .await;
        lock.release(&mut conn).await;
        result
    }

    fn report(&self, direction: Direction, dry_run: bool) -> MigrationReport {
        MigrationReport {
            database: self.store.describe().to_string(),
            direction,
            dry_run,
            steps: Vec::new(),
            failure: None,
        }
    }
}

async fn table_exists(conn: &mut Conn) -> Result<bool, Error> {
    let rows = if conn.is_sqlite() {
        conn.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1", &[TABLE.into()]).await?
    } else {
        conn.query("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1", &[TABLE.into()])
            .await?
    };
    Ok(!rows.is_empty())
}

async fn ensure_table(conn: &mut Conn) -> Result<(), Error> {
    let ddl = if conn.is_sqlite() {
        "CREATE TABLE IF NOT EXISTS _marina_migrations (
            id INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL,
            duration_ms INTEGER NOT NULL
        )"
    } else {
        "CREATE TABLE IF NOT EXISTS _marina_migrations (
            id BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            duration_ms BIGINT NOT NULL
        )"
    };
    conn.batch(ddl).await
}

/// The recorded migrations. With `must_exist == false` a missing table reads as none.
async fn read_records(conn: &mut Conn, must_exist: bool) -> Result<BTreeMap<i64, Record>, Error> {
    if !must_exist && !table_exists(conn).await? {
        return Ok(BTreeMap::new());
    }
    let q = if conn.is_sqlite() {
        "SELECT id, description, checksum, applied_at, duration_ms FROM _marina_migrations ORDER BY id"
    } else {
        "SELECT id, description, checksum,
                to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS applied_at,
                duration_ms
         FROM _marina_migrations ORDER BY id"
    };
    let mut out = BTreeMap::new();
    for row in conn.query(q, &[]).await? {
        let r = Record {
            id: row.get("id")?,
            description: row.get("description")?,
            checksum: row.get("checksum")?,
            applied_at: row.get("applied_at")?,
            duration_ms: row.get("duration_ms")?,
        };
        out.insert(r.id, r);
    }
    Ok(out)
}

/// Run one migration in one direction, with its bookkeeping change.
async fn apply(conn: &mut Conn, m: &Migration, direction: Direction) -> Result<Step, MigrationFailure> {
    let (script, transactional) = match direction {
        Direction::Up => (m.up.as_str(), m.up_transactional),
        Direction::Down => (m.down.as_deref().unwrap_or_default(), m.down_transactional),
    };
    let file = format!("{}.{}.sql", m.name, if direction == Direction::Up { "up" } else { "down" });
    let fail = |e: Error, state: &str| MigrationFailure {
        id: m.id,
        name: m.name.clone(),
        message: format!("migration '{file}' failed: {e}; {state}"),
        status: e.status(),
    };
    let started = Instant::now();
    let bookkeep = async |conn: &mut Conn, ms: i64| -> Result<(), Error> {
        match direction {
            Direction::Up if conn.is_sqlite() => {
                conn.execute(
                    "INSERT INTO _marina_migrations (id, description, checksum, applied_at, duration_ms)
                     VALUES ($1, $2, $3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), $4)",
                    &[m.id.into(), m.description.as_str().into(), m.checksum.as_str().into(), ms.into()],
                )
                .await?;
            }
            Direction::Up => {
                conn.execute(
                    "INSERT INTO _marina_migrations (id, description, checksum, duration_ms) VALUES ($1, $2, $3, $4)",
                    &[m.id.into(), m.description.as_str().into(), m.checksum.as_str().into(), ms.into()],
                )
                .await?;
            }
            Direction::Down => {
                conn.execute("DELETE FROM _marina_migrations WHERE id = $1", &[m.id.into()]).await?;
            }
        }
        Ok(())
    };
    if transactional {
        let begin = if conn.is_sqlite() { "BEGIN IMMEDIATE" } else { "BEGIN" };
        conn.batch(begin).await.map_err(|e| fail(e, "nothing was changed"))?;
        let result = async {
            if sql::has_code(script) {
                conn.batch(script).await?;
            }
            let ms = started.elapsed().as_millis() as i64;
            bookkeep(conn, ms).await?;
            conn.batch("COMMIT").await?;
            Ok::<_, Error>(ms)
        }
        .await;
        match result {
            Ok(ms) => Ok(Step { id: m.id, name: m.name.clone(), duration_ms: ms as u64, transactional }),
            Err(e) => {
                let rolled_back = conn.batch("ROLLBACK").await.is_ok();
                let state = if rolled_back {
                    format!("it was rolled back, so the database is exactly as before '{file}'")
                } else {
                    "the rollback failed too; the database will discard the open transaction".to_string()
                };
                Err(fail(e, &state))
            }
        }
    } else {
        let statements = sql::split_statements(script);
        for (i, stmt) in statements.iter().enumerate() {
            if let Err(e) = conn.batch(stmt).await {
                let state = format!(
                    "it runs outside a transaction ({NO_TRANSACTION_HEADER}), so the {i} statement(s) before the failing one stay applied and it is not recorded"
                );
                return Err(fail(e, &state));
            }
        }
        let ms = started.elapsed().as_millis() as i64;
        bookkeep(conn, ms)
            .await
            .map_err(|e| fail(e, "its statements ran but the bookkeeping row could not be written"))?;
        Ok(Step { id: m.id, name: m.name.clone(), duration_ms: ms as u64, transactional })
    }
}

async fn drop_everything(store: &Store, conn: &mut Conn) -> Result<(), Error> {
    match store.kind() {
        BackendKind::Sqlite => {
            // Foreign keys would make the drop order matter; the pragma cannot change inside
            // a transaction, so it brackets it.
            conn.batch("PRAGMA foreign_keys = OFF").await?;
            let result = async {
                conn.batch("BEGIN IMMEDIATE").await?;
                let objects = conn
                    .query(
                        "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger', 'table') AND name NOT LIKE 'sqlite_%' ORDER BY type DESC",
                        &[],
                    )
                    .await?;
                for row in objects {
                    let kind: String = row.get("type")?;
                    let name: String = row.get("name")?;
                    let stmt = format!("DROP {} IF EXISTS {}", kind.to_ascii_uppercase(), sql::quote_ident(&name));
                    if let Err(e) = conn.batch(&stmt).await {
                        let _ = conn.batch("ROLLBACK").await;
                        return Err(e);
                    }
                }
                conn.batch("COMMIT").await
            }
            .await;
            conn.batch("PRAGMA foreign_keys = ON").await?;
            result
        }
        BackendKind::Postgres => {
            let schema = sql::quote_ident(store.pg_schema().unwrap_or("public"));
            conn.batch(&format!("BEGIN; DROP SCHEMA {schema} CASCADE; CREATE SCHEMA {schema}; COMMIT;")).await
        }
    }
}

/// The per-database migration lock, held for a whole run.
enum Lock {
    Postgres(i64),
    /// Held for its `Drop`, which unlocks.
    File {
        _held: nix::fcntl::Flock<std::fs::File>,
    },
    None,
}

impl Lock {
    async fn acquire(store: &Store, conn: &mut Conn) -> Result<Lock, Error> {
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let timeout = || {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "MIGRATION_LOCK_TIMEOUT",
                format!(
                    "another process has been migrating {} for over {}s; try again when it finishes",
                    store.describe(),
                    LOCK_TIMEOUT.as_secs()
                ),
            )
        };
        match store.kind() {
            BackendKind::Postgres => {
                let seed = format!("marina-migrate:{}", store.pg_schema().unwrap_or(""));
                let digest = Sha256::digest(seed.as_bytes());
                let key = i64::from_be_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"));
                // If this process dies mid-migration, the server notices only when the running
                // statement ends, and keeps the lock until then; from PostgreSQL 14 it can poll
                // the socket instead. Older servers reject the setting, which is fine.
                if conn.batch("SET client_connection_check_interval = 1000").await.is_err() {
                    tracing::debug!("PostgreSQL < 14: a killed migrator holds its lock until its statement ends");
                }
                loop {
                    let row = conn.query("SELECT pg_try_advisory_lock($1) AS locked", &[Value::Integer(key)]).await?;
                    if row.first().map(|r| r.get::<bool>("locked")).transpose()? == Some(true) {
                        return Ok(Lock::Postgres(key));
                    }
                    if Instant::now() > deadline {
                        return Err(timeout());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            BackendKind::Sqlite => {
                let Some(path) = store.sqlite_path() else { return Ok(Lock::None) };
                let mut lock_path = path.as_os_str().to_owned();
                lock_path.push(".migrate-lock");
                let lock_path = PathBuf::from(lock_path);
                let file =
                    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(
                        |e| Error::internal(format!("cannot open the migration lock '{}': {e}", lock_path.display())),
                    )?;
                let mut file = Some(file);
                loop {
                    let f = file.take().expect("the lock file is put back after every try");
                    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                        Ok(locked) => return Ok(Lock::File { _held: locked }),
                        Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = Some(f),
                        Err((_, e)) => {
                            return Err(Error::internal(format!("cannot lock '{}': {e}", lock_path.display())));
                        }
                    }
                    if Instant::now() > deadline {
                        return Err(timeout());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn release(self, conn: &mut Conn) {
        match self {
            Lock::Postgres(key) => {
                if conn.query("SELECT pg_advisory_unlock($1)", &[Value::Integer(key)]).await.is_err() {
                    tracing::warn!("could not release the migration advisory lock; it goes with the connection");
                }
            }
            // Dropping the Flock unlocks it.
            Lock::File { .. } | Lock::None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            parse_file_name("0003_add_users.up.sql").unwrap(),
            (3, "0003_add_users".to_string(), "add users".to_string(), Direction::Up)
        );
        assert_eq!(parse_file_name("12_x-y.down.sql").unwrap().3, Direction::Down);
        for bad in [
            "0003_add_users.sql",
            "add_users.up.sql",
            "0003.up.sql",
            "0003_.up.sql",
            "0003_a b.up.sql",
            "x3_a.up.sql",
            "99999999999999999999_a.up.sql",
        ] {
            let e = parse_file_name(bad).unwrap_err();
            assert_eq!(e.code(), "MIGRATION_NAME_INVALID", "{bad}");
            assert!(e.message().contains(bad), "{}", e.message());
        }
    }

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn sets_are_ordered_and_validated() {
        let set = MigrationSet::from_files(
            "t",
            files(&[("10_b.up.sql", "SELECT 1;"), ("2_a.up.sql", "SELECT 2;"), ("2_a.down.sql", "SELECT 3;")]),
        )
        .unwrap();
        let ids: Vec<i64> = set.migrations().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![2, 10]);
        assert!(set.get(2).unwrap().down.is_some());
        assert!(set.get(10).unwrap().down.is_none());
        assert_eq!(set.get(2).unwrap().checksum, hex::encode(Sha256::digest(b"SELECT 2;")));

        let dup = MigrationSet::from_files("t", files(&[("01_a.up.sql", ""), ("1_b.up.sql", "")])).unwrap_err();
        assert_eq!(dup.code(), "MIGRATION_DUPLICATE_ID");
        assert!(dup.message().contains("01_a.up.sql") && dup.message().contains("1_b.up.sql"), "{}", dup.message());

        let orphan = MigrationSet::from_files("t", files(&[("1_a.up.sql", ""), ("1_b.down.sql", "")])).unwrap_err();
        assert_eq!(orphan.code(), "MIGRATION_ORPHAN_DOWN");

        let control =
            MigrationSet::from_files("t", files(&[("1_a.up.sql", "BEGIN;\nCREATE TABLE t(x int);\nCOMMIT;")]))
                .unwrap_err();
        assert_eq!(control.code(), "MIGRATION_INVALID");
    }

    #[test]
    fn the_opt_out_header_is_read_from_leading_comments_only() {
        assert!(opts_out_of_transaction("-- marina:no-transaction\nCREATE INDEX CONCURRENTLY i ON t(x);"));
        assert!(opts_out_of_transaction("-- adds an index\n\n-- MARINA:NO-TRANSACTION\nSELECT 1;"));
        assert!(!opts_out_of_transaction("SELECT 1;\n-- marina:no-transaction"));
    }

    #[test]
    fn system_migrations_are_all_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SYSTEM.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add every file of crates/store/migrations to SYSTEM in migrate.rs");
        for (name, text) in SYSTEM {
            assert_eq!(&std::fs::read_to_string(dir.join(name)).unwrap(), text);
        }
        // `system()` skips the BEGIN/COMMIT scan at run time; the files must pass it here.
        let checked =
            MigrationSet::from_files("t", SYSTEM.iter().map(|(n, s)| (n.to_string(), s.to_string()))).unwrap();
        let system = MigrationSet::system().unwrap();
        assert_eq!(checked.migrations().len(), system.migrations().len());
    }

    #[test]
    fn new_migration_creates_the_next_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (up, down) = new_migration(dir.path(), "create_users").unwrap();
        assert!(up.ends_with("0001_create_users.up.sql") && down.ends_with("0001_create_users.down.sql"));
        let (up, _) = new_migration(dir.path(), "more").unwrap();
        assert!(up.ends_with("0002_more.up.sql"));
        assert_eq!(new_migration(dir.path(), "bad name").unwrap_err().code(), "MIGRATION_NAME_INVALID");
        assert_eq!(MigrationSet::from_dir(dir.path()).unwrap().migrations().len(), 2);
    }
}
