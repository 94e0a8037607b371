//! [`Store`]: one database (marina's own, or one app's), and [`Tx`], a transaction on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use marina_core::Error;
use tokio::sync::Mutex;

use crate::conn::{self, Backend, Conn};
use crate::migrate::{MigrationReport, MigrationSet, Migrator};
use crate::sql;
use crate::url::DatabaseUrl;
use crate::value::{Row, Value};

/// Which driver a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Embedded SQLite (rusqlite, bundled).
    Sqlite,
    /// A PostgreSQL server (tokio-postgres with a deadpool pool).
    Postgres,
}

/// The PostgreSQL schema that holds marina's own tables.
pub const SYSTEM_SCHEMA: &str = "marina";

/// A handle to one database. Cheap to clone; clones share the connection(s).
///
/// Queries take PostgreSQL-style placeholders (`$1`, `$2`, ...) on both backends and
/// [`Value`] parameters, so a plugin writes each statement once.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
    label: String,
    /// A SQLite file this store created without fsyncs, until it is sealed
    /// ([`Store::seal_in_background`], [`Store::migrate_system_in_background`]). Shared by the
    /// clones: while it is set, nothing but marina's migrations has written to the file.
    unsealed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("label", &self.label).finish()
    }
}

impl Store {
    /// Open marina's own database: `database_url` (usually `DATABASE_URL`), or when it is unset,
    /// `sqlite://{state_dir}/marina.db`, created on first use. SQLite gets WAL, foreign keys and
    /// a busy timeout; PostgreSQL gets a pool whose connections use the `marina` schema.
    ///
    /// # Errors
    /// `DATABASE_URL_INVALID` for a URL that is neither SQLite nor PostgreSQL,
    /// `DATABASE_UNAVAILABLE` when the file cannot be opened or the server cannot be reached.
    pub async fn open(database_url: Option<&str>, state_dir: &Path) -> Result<Store, Error> {
        let url = DatabaseUrl::parse(database_url, state_dir)?;
        Self::open_url(&url, SYSTEM_SCHEMA, None, false).await
    }

    /// [`Store::open`] for a server's start: a SQLite file that does not exist yet is created
    /// and migrated without fsyncs, a third of a cold start (see `fresh.rs`); the caller then
    /// calls [`Store::migrate_system_in_background`] (or migrates it and calls
    /// [`Store::seal_in_background`]) before it accepts requests.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open_quick(database_url: Option<&str>, state_dir: &Path) -> Result<Store, Error> {
        let url = DatabaseUrl::parse(database_url, state_dir)?;
        Self::open_url(&url, SYSTEM_SCHEMA, None, true).await
    }

    /// Open app `name`'s own database: on SQLite a file `{state_dir}/apps/{name}/app.db` (in memory
    /// when marina's is), on PostgreSQL the schema `app_{name}` of the same server.
    ///
    /// # Errors
    /// As [`Store::open`], plus `APP_NAME_INVALID` for a name that cannot be made a safe file
    /// or schema name.
    pub async fn open_app(database_url: Option<&str>, state_dir: &Path, name: &str) -> Result<Store, Error> {
        let ident = sql::app_ident(name)?;
        let url = match DatabaseUrl::parse(database_url, state_dir)? {
            DatabaseUrl::SqliteFile(_) => DatabaseUrl::SqliteFile(app_sqlite_path(state_dir, &ident)),
            other => other,
        };
        Self::open_url(&url, &format!("app_{ident}"), None, false).await
    }

    /// [`claim_app_database`] when apps' databases are SQLite files (`database_url` as for
    /// [`Store::open`]); nothing on PostgreSQL or in memory.
    ///
    /// # Errors
    /// As [`claim_app_database`], and `DATABASE_URL_INVALID`.
    pub fn claim_app(database_url: Option<&str>, state_dir: &Path, name: &str) -> Result<(), Error> {
        match DatabaseUrl::parse(database_url, state_dir)? {
            DatabaseUrl::SqliteFile(_) => claim_app_database(state_dir, name).map(drop),
            _ => Ok(()),
        }
    }

    /// Open app `name`'s database as the app itself: on PostgreSQL logged in as the app's own
    /// role ([`crate::app_role`], created or updated through marina's `system` store), so SQL
    /// the app sends cannot reach marina's schema or another app's; on SQLite the same as
    /// [`Store::open_app`] (the file holds nothing else).
    ///
    /// # Errors
    /// As [`Store::open_app`], plus `DATABASE_APP_ROLES_UNAVAILABLE`.
    pub async fn open_app_as_app(
        system: &Store,
        database_url: Option<&str>,
        state_dir: &Path,
        name: &str,
    ) -> Result<Store, Error> {
        if system.kind() != BackendKind::Postgres {
            return Self::open_app(database_url, state_dir, name).await;
        }
        let ident = sql::app_ident(name)?;
        let login = crate::app_role::ensure(system, name).await?;
        let url = DatabaseUrl::parse(database_url, state_dir)?;
        let store = Self::open_url(&url, &format!("app_{ident}"), Some(&login), false).await?;
        Ok(Store { label: format!("{} as {}", store.label, login.role), ..store })
    }

    /// `fast_create`: a SQLite file that does not exist yet is created without fsyncs until
    /// [`Store::seal_in_background`] (marina's own database, see `fresh.rs`).
    async fn open_url(
        url: &DatabaseUrl,
        schema: &str,
        login: Option<&crate::app_role::AppLogin>,
        fast_create: bool,
    ) -> Result<Store, Error> {
        let label = match url {
            DatabaseUrl::Postgres(_) => format!("{} (schema {schema})", url.redacted()),
            _ => url.redacted(),
        };
        let mut unsealed = false;
        let backend = match url {
            DatabaseUrl::SqliteFile(path) => {
                let p = path.clone();
                let (c, created) = tokio::task::spawn_blocking(move || {
                    let created = fast_create && crate::fresh::prepare(&p)?;
                    conn::open_sqlite(Some(&p), created).map(|c| (c, created))
                })
                .await
                .map_err(|e| Error::internal(format!("opening SQLite failed: {e}")))??;
                unsealed = created;
                Backend::Sqlite { conn: Arc::new(Mutex::new(c)), path: Some(path.clone()) }
            }
            DatabaseUrl::SqliteMemory => {
                Backend::Sqlite { conn: Arc::new(Mutex::new(conn::open_sqlite(None, false)?)), path: None }
            }
            DatabaseUrl::Postgres(u) => conn::open_postgres(u, schema, login).await?,
        };
        Ok(Store { backend: Arc::new(backend), label, unsealed: Arc::new(unsealed.into()) })
    }

    /// Which driver this store uses.
    pub fn kind(&self) -> BackendKind {
        match &*self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres { .. } => BackendKind::Postgres,
        }
    }

    /// Where this store points, password hidden: for messages.
    pub fn describe(&self) -> &str {
        &self.label
    }

    /// The SQLite file, when this store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Sqlite { path, .. } => path.as_deref(),
            Backend::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL schema, when this store is one.
    pub fn pg_schema(&self) -> Option<&str> {
        match &*self.backend {
            Backend::Postgres { schema, .. } => Some(schema),
            Backend::Sqlite { .. } => None,
        }
    }

    /// On PostgreSQL, a dedicated session `LISTEN`ing on `channel`: each notification's payload,
    /// until the session ends (the receiver then yields `None`; call again to reconnect).
    /// `None` on SQLite, which has no cross-process notification.
    ///
    /// # Errors
    /// `DATABASE_UNAVAILABLE` when the session cannot be opened.
    pub async fn listen(&self, channel: &str) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<String>>, Error> {
        match &*self.backend {
            Backend::Postgres { listen, url, .. } => conn::pg_listen(listen, url, channel).await.map(Some),
            Backend::Sqlite { .. } => Ok(None),
        }
    }

    pub(crate) async fn conn(&self) -> Result<Conn, Error> {
        self.backend.conn().await
    }

    /// Run one statement outside any explicit transaction; the number of rows changed.
    ///
    /// # Errors
    /// `SQL_ERROR` with the driver's message (and the statement in `data.sql`).
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        self.conn().await?.execute(sql, params).await
    }

    /// Run one query; all its rows.
    ///
    /// # Errors
    /// As [`Store::execute`].
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
        self.conn().await?.query(sql, params).await
    }

    /// Run one query; its first row, if any.
    ///
    /// # Errors
    /// As [`Store::execute`].
    pub async fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, Error> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Start a transaction. It rolls back unless [`Tx::commit`] is called, including when the
    /// future holding it is dropped. On SQLite it holds the store's one connection (other
    /// calls wait); on PostgreSQL one pooled connection.
    ///
    /// # Errors
    /// `DATABASE_UNAVAILABLE` or `SQL_ERROR` when the transaction cannot start.
    pub async fn begin(&self) -> Result<Tx, Error> {
        let mut conn = self.conn().await?;
        // IMMEDIATE takes SQLite's write lock now, so a read-then-write transaction cannot
        // fail half-way with SQLITE_BUSY when another process writes.
        conn.batch(if conn.is_sqlite() { "BEGIN IMMEDIATE" } else { "BEGIN" }).await?;
        Ok(Tx { conn: Some(conn), depth: 0 })
    }

    /// Run `f` in a transaction: commit when it returns `Ok`, roll back when it returns `Err`.
    ///
    /// # Errors
    /// `f`'s error, or the error of `BEGIN`/`COMMIT`.
    pub async fn transaction<T>(&self, f: impl AsyncFnOnce(&mut Tx) -> Result<T, Error>) -> Result<T, Error> {
        let mut tx = self.begin().await?;
        match f(&mut tx).await {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                // The caller's error matters more than a failed rollback, which the dropped
                // connection (PostgreSQL) or the next lease (SQLite) cleans up anyway.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Make a SQLite file this store has just created durable (see `fresh.rs`: it was written
    /// without fsyncs, for a quick first start), on the blocking pool while the caller goes on.
    /// The connection is taken before this returns, so every later call waits for the seal and
    /// runs with the usual `synchronous = NORMAL`. `None` when there is nothing to seal; a
    /// failure is logged (the database stays usable; its durability is then that of a
    /// power loss in the first seconds).
    pub async fn seal_in_background(&self) -> Option<tokio::task::JoinHandle<()>> {
        let Backend::Sqlite { conn, path: Some(path) } = &*self.backend else { return None };
        if !self.is_new() {
            return None;
        }
        let guard = conn.clone().lock_owned().await;
        let (path, unsealed) = (path.clone(), self.unsealed.clone());
        Some(tokio::task::spawn_blocking(move || seal(&guard, &path, &unsealed)))
    }

    /// Whether this start created the database ([`Store::open_quick`]) and it has not been
    /// sealed yet. Migrated by [`Store::migrate_system_in_background`], which leases the
    /// connection from before it returns until the seal, such a database holds nothing this
    /// process wrote but what marina's migrations write: a plugin reading rows only its own API
    /// adds (the proxy's stored rules) may skip its query, instead of waiting for the schema on
    /// the way to a cold start's first answer. (Another process sees the tables once the
    /// migrations are done: `marina keys` and `marina db migrate` migrate first, under the migration
    /// lock, which waits for them.)
    pub fn is_new(&self) -> bool {
        self.unsealed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// [`Store::migrate_system`] and then the seal of [`Store::seal_in_background`], both on a
    /// task, for a SQLite file this start created ([`Store::open_quick`]). Its connection is
    /// leased before this returns, so every other caller waits until the schema is there and
    /// the file is durable, while the caller goes on: a server answers what needs no database
    /// (a static file) a few milliseconds sooner (BENCHMARKS.md, cold start). The task's result
    /// is the migrations' (a database whose migrations failed is not sealed: it stays the
    /// unfinished creation `fresh.rs` describes; a failed seal is logged, as there). `None` for
    /// any other store, which this leaves alone: migrate it with [`Store::migrate_system`].
    ///
    /// # Errors
    /// As [`Store::migrate_system`], from the task.
    pub async fn migrate_system_in_background(
        &self,
    ) -> Option<tokio::task::JoinHandle<Result<MigrationReport, Error>>> {
        let Backend::Sqlite { path: Some(path), .. } = &*self.backend else { return None };
        if !self.is_new() {
            return None;
        }
        let path = path.clone();
        let store = self.clone();
        // Taken here, not in the task: a caller of this store that runs before the task would
        // otherwise find no schema.
        let leased = self.conn().await;
        Some(tokio::spawn(async move {
            let unsealed = store.unsealed.clone();
            // Whatever happens, the database is no longer new to anyone who leases it next.
            let migrated = async {
                let mut conn = leased?;
                let set = MigrationSet::system()?;
                let report =
                    Migrator::new(&store, &set).migrate_on(&mut conn, &Default::default()).await?.into_result()?;
                Ok::<_, Error>((conn, report))
            }
            .await;
            let (conn, report) = match migrated {
                Ok(done) => done,
                Err(e) => {
                    unsealed.store(false, std::sync::atomic::Ordering::Release);
                    return Err(e);
                }
            };
            let Some(guard) = conn.into_sqlite_guard() else {
                unsealed.store(false, std::sync::atomic::Ordering::Release);
                return Err(Error::internal("marina's new database lost its connection while it was migrated"));
            };
            if let Err(e) = tokio::task::spawn_blocking(move || seal(&guard, &path, &unsealed)).await {
                tracing::error!("sealing marina's new database stopped: {e}");
            }
            Ok(report)
        }))
    }

    /// Apply marina's own migrations (embedded in the binary) to this store.
    ///
    /// # Errors
    /// Any migration error (`MIGRATION_*`), with what had been applied before it in `data`.
    pub async fn migrate_system(&self) -> Result<MigrationReport, Error> {
        let set = MigrationSet::system()?;
        let report = Migrator::new(self, &set).migrate(&Default::default()).await?;
        report.into_result()
    }
}

/// [`crate::fresh::seal`] on the blocking pool, with the connection's guard held: a failure is
/// logged (the database stays usable; its durability is then that of a power loss in the first
/// seconds), and either way the database is no longer new to whoever leases it next.
fn seal(guard: &rusqlite::Connection, path: &Path, unsealed: &std::sync::atomic::AtomicBool) {
    if let Err(e) = crate::fresh::seal(guard, path) {
        tracing::error!("{e}");
    }
    unsealed.store(false, std::sync::atomic::Ordering::Release);
}

/// `{state_dir}/apps/{ident}/app.db`: a directory per app, because the app's workers open the
/// file themselves and SQLite creates its journal beside it, while the worker sandbox lets a
/// worker write only its own app's directory.
pub fn app_sqlite_path(state_dir: &Path, ident: &str) -> PathBuf {
    state_dir.join("apps").join(ident).join("app.db")
}

/// Claim app `name`'s SQLite database for that exact name, so that no other app reaches it.
///
/// Database names are made from app names by [`sql::app_ident`], which lower-cases and maps `-`
/// and `.` to `_`: `Foo-Bar`, `foo_bar` and `FOO.BAR` all map to `foo_bar`. The first app to
/// use a database owns it: its exact name is written to `{state_dir}/apps/{ident}.owner` (beside
/// the app's dir, where no worker may write), and every other name mapping there is refused.
/// A database that has no owner file yet (made before claims existed) goes to the first app
/// that asks.
///
/// Callers acting for an app (its workers' `APP_DATABASE_PATH`, its migrations, its worker
/// token on the database plugin) claim first; admin tools open databases by their identifier.
///
/// # Errors
/// `APP_NAME_INVALID`; 409 `APP_DATABASE_CONFLICT` when another app owns the database; 500
/// when the owner file cannot be written or read.
pub fn claim_app_database(state_dir: &Path, name: &str) -> Result<PathBuf, Error> {
    use std::io::{Read as _, Write as _};
    let ident = sql::app_ident(name)?;
    let apps = state_dir.join("apps");
    let io = |what: &str, e: std::io::Error| Error::internal(format!("app '{name}': {what} failed: {e}"));
    let owner_path = apps.join(format!("{ident}.owner"));
    // App names are at most 50 bytes (`app_ident`): read a little more, never a huge file.
    let read_owner = || {
        let mut owner = String::new();
        std::fs::File::open(&owner_path).and_then(|f| f.take(256).read_to_string(&mut owner)).map(|_| owner)
    };
    // Claimed already (every call after the first, e.g. each request of the app's worker token
    // on the database plugin): one read, no writes.
    let owner = match read_owner() {
        Ok(owner) => owner,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&apps).map_err(|e| io("creating the apps dir", e))?;
            // Written aside and linked into place: the owner file appears whole or not at all,
            // and of two apps claiming at once exactly one link succeeds.
            let tmp = apps.join(format!(".{ident}.owner.{}", uuid::Uuid::new_v4().simple()));
            let linked = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .and_then(|mut f| f.write_all(name.as_bytes()))
                .and_then(|()| std::fs::hard_link(&tmp, &owner_path));
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => return Ok(app_sqlite_path(state_dir, &ident)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("claiming the database", e)),
            }
            read_owner().map_err(|e| io("reading the database's owner", e))?
        }
        Err(e) => return Err(io("reading the database's owner", e)),
    };
    if owner == name {
        return Ok(app_sqlite_path(state_dir, &ident));
    }
    Err(Error::new(
        http::StatusCode::CONFLICT,
        "APP_DATABASE_CONFLICT",
        format!(
            "app '{name}' cannot use the database '{ident}': it belongs to app '{owner}' (both names map to it; rename one)"
        ),
    )
    .with_data(serde_json::json!({ "app": name, "database": ident, "owner": owner })))
}

/// Give up app `ident`'s claim on its database (the database was deleted).
pub fn release_app_database(state_dir: &Path, ident: &str) {
    let _ = std::fs::remove_file(state_dir.join("apps").join(format!("{ident}.owner")));
}

/// An open transaction. Dropping it without [`Tx::commit`] rolls it back.
pub struct Tx {
    conn: Option<Conn>,
    depth: u32,
}

impl Tx {
    fn conn(&mut self) -> Result<&mut Conn, Error> {
        self.conn.as_mut().ok_or_else(|| Error::internal("the transaction is already finished"))
    }

    /// Run one statement in the transaction; the number of rows changed.
    ///
    /// # Errors
    /// As [`Store::execute`].
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        self.conn()?.execute(sql, params).await
    }

    /// Run one query in the transaction; all its rows.
    ///
    /// # Errors
    /// As [`Store::execute`].
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
        self.conn()?.query(sql, params).await
    }

    /// Run one query in the transaction; its first row, if any.
    ///
    /// # Errors
    /// As [`Store::execute`].
    pub async fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, Error> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Run a script of statements without parameters (DDL, several statements).
    ///
    /// # Errors
    /// As [`Store::execute`].
    pub async fn batch(&mut self, script: &str) -> Result<(), Error> {
        self.conn()?.batch(script).await
    }

    /// A nested transaction: `f` runs inside a savepoint that is released when it returns
    /// `Ok` and rolled back to when it returns `Err`; the outer transaction goes on either way.
    /// Savepoint names are generated (`marina_sp_{depth}`), never taken from callers.
    ///
    /// # Errors
    /// `f`'s error, or the savepoint statements' own.
    pub async fn savepoint<T>(&mut self, f: impl AsyncFnOnce(&mut Tx) -> Result<T, Error>) -> Result<T, Error> {
        self.depth += 1;
        let name = format!("marina_sp_{}", self.depth);
        let result = async {
            self.batch(&format!("SAVEPOINT {name}")).await?;
            match f(self).await {
                Ok(v) => {
                    self.batch(&format!("RELEASE SAVEPOINT {name}")).await?;
                    Ok(v)
                }
                Err(e) => {
                    self.batch(&format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")).await?;
                    Err(e)
                }
            }
        }
        .await;
        self.depth -= 1;
        result
    }

    /// Commit.
    ///
    /// # Errors
    /// `SQL_ERROR` when the commit fails (the transaction is then rolled back).
    pub async fn commit(mut self) -> Result<(), Error> {
        let mut conn = self.conn.take().ok_or_else(|| Error::internal("the transaction is already finished"))?;
        conn.batch("COMMIT").await
    }

    /// Roll back.
    ///
    /// # Errors
    /// `SQL_ERROR` when the rollback statement fails.
    pub async fn rollback(mut self) -> Result<(), Error> {
        let mut conn = self.conn.take().ok_or_else(|| Error::internal("the transaction is already finished"))?;
        conn.batch("ROLLBACK").await
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        rollback_in_background(conn);
    }
}

/// Roll back a leased connection that was abandoned inside a transaction.
pub(crate) fn rollback_in_background(mut conn: Conn) {
    match (&mut conn, tokio::runtime::Handle::try_current()) {
        (Conn::Postgres(_), Ok(handle)) => {
            handle.spawn(async move {
                if conn.batch("ROLLBACK").await.is_err()
                    && let Conn::Postgres(obj) = conn
                {
                    // Do not return a connection in an unknown state to the pool.
                    drop(deadpool_postgres::Object::take(obj));
                }
            });
        }
        (Conn::Postgres(_), Err(_)) => {
            if let Conn::Postgres(obj) = conn {
                drop(deadpool_postgres::Object::take(obj));
            }
        }
        // The SQLite connection is checked and rolled back by the next lease; returning the
        // guard now releases the in-process lock, and the file lock goes with the rollback.
        (Conn::Sqlite(lease), _) => {
            if let Some(guard) = lease.take() {
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        handle.spawn_blocking(move || {
                            if !guard.is_autocommit() {
                                let _ = guard.execute_batch("ROLLBACK");
                            }
                        });
                    }
                    Err(_) => {
                        if !guard.is_autocommit() {
                            let _ = guard.execute_batch("ROLLBACK");
                        }
                    }
                }
            }
        }
    }
}
