//! The two drivers behind one leased connection.
//!
//! SQLite: one `rusqlite::Connection` per database behind an async mutex; every call moves the
//! lock guard into `spawn_blocking`, so the async runtime never waits on disk (a run of many
//! statements, such as migrations, can go as one such call: [`Conn::in_one_call`]). PostgreSQL: a
//! `deadpool-postgres` pool; the schema is chosen per connection with `search_path` in the
//! startup options, so every pooled connection of an app's store sees only that app's schema.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use http::StatusCode;
use marina_core::Error;
use rusqlite::types::ValueRef;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::sql;
use crate::url::redact;
use crate::value::{Row, Value};

/// How long SQLite waits for another writer before failing with `SQLITE_BUSY`.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a PostgreSQL connection may take.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many PostgreSQL connections one store keeps at most.
const PG_POOL_SIZE: usize = 16;

pub(crate) enum Backend {
    Sqlite { conn: Arc<Mutex<rusqlite::Connection>>, path: Option<PathBuf> },
    Postgres { pool: Pool, schema: String, url: String, listen: Box<ListenConfig> },
}

/// What a dedicated (unpooled) connection needs: `LISTEN` must stay on one session, and a
/// pooled connection's notifications are dropped by the pool's connection task.
#[derive(Clone)]
pub(crate) struct ListenConfig {
    config: tokio_postgres::Config,
    tls: Option<rustls::ClientConfig>,
}

/// One connection leased from a store, exclusively, until dropped.
#[allow(clippy::large_enum_variant)] // one per leased connection, never stored in bulk
pub(crate) enum Conn {
    Sqlite(SqliteLease),
    Postgres(deadpool_postgres::Object),
}

/// A leased SQLite connection.
pub(crate) struct SqliteLease {
    /// `None` only while a call is running on the blocking pool, or after it was lost there.
    guard: Option<OwnedMutexGuard<rusqlite::Connection>>,
    /// Calls run on the current thread: the lease lives inside [`Conn::in_one_call`], which is
    /// on the blocking pool already.
    here: bool,
}

impl Conn {
    /// The SQLite connection's guard, for a call that needs the connection itself (`None` on
    /// PostgreSQL, or when an interrupted call lost it).
    pub(crate) fn into_sqlite_guard(self) -> Option<OwnedMutexGuard<rusqlite::Connection>> {
        match self {
            Conn::Sqlite(mut lease) => lease.take(),
            Conn::Postgres(_) => None,
        }
    }
}

impl SqliteLease {
    pub(crate) fn new(guard: OwnedMutexGuard<rusqlite::Connection>) -> Self {
        Self { guard: Some(guard), here: false }
    }

    /// The guard, to return the connection (`None` when an interrupted call lost it).
    pub(crate) fn take(&mut self) -> Option<OwnedMutexGuard<rusqlite::Connection>> {
        self.guard.take()
    }
}

pub(crate) fn sql_error(message: impl Into<String>, sql: &str) -> Error {
    let shown: String = sql.chars().take(300).collect();
    Error::new(StatusCode::INTERNAL_SERVER_ERROR, "SQL_ERROR", message).with_data(serde_json::json!({ "sql": shown }))
}

fn unavailable(message: String) -> Error {
    Error::unavailable("DATABASE_UNAVAILABLE", message)
}

/// `unsealed`: a database being created, configured by [`crate::fresh::UNSEALED`] until sealed.
pub(crate) fn open_sqlite(path: Option<&Path>, unsealed: bool) -> Result<rusqlite::Connection, Error> {
    let conn = match path {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    unavailable(format!("cannot create the directory '{}' for the SQLite database: {e}", dir.display()))
                })?;
            }
            rusqlite::Connection::open(p)
        }
        None => rusqlite::Connection::open_in_memory(),
    };
    let shown = path.map_or_else(|| ":memory:".to_string(), |p| p.display().to_string());
    let conn = conn.map_err(|e| unavailable(format!("cannot open the SQLite database '{shown}': {e}")))?;
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)
        .and_then(|_| conn.pragma_update(None, "foreign_keys", "ON"))
        // `synchronous` first: the switch of a new file to WAL then syncs once less (a cold
        // start with a fresh state dir pays every fsync on its way to the first answer).
        .and_then(|_| {
            if unsealed { crate::fresh::unseal(&conn) } else { conn.pragma_update(None, "synchronous", "NORMAL") }
        })
        .and_then(|_| if path.is_some() { conn.pragma_update(None, "journal_mode", "WAL") } else { Ok(()) })
        .map_err(|e| unavailable(format!("cannot configure the SQLite database '{shown}': {e}")))?;
    let mut conn = conn;
    // `temp_store_directory` and `data_store_directory` set process-wide globals that SQLite
    // documents as unsafe to change while other connections are open: SQL an app sends through
    // the database plugin could race every connection in marina (a freed directory string in
    // use) or send marina's own temp files somewhere it can read. Nothing in marina sets them.
    conn.authorizer(Some(|ctx: rusqlite::hooks::AuthContext<'_>| match ctx.action {
        rusqlite::hooks::AuthAction::Pragma { pragma_name, .. }
            if ["temp_store_directory", "data_store_directory"].iter().any(|p| pragma_name.eq_ignore_ascii_case(p)) =>
        {
            rusqlite::hooks::Authorization::Deny
        }
        _ => rusqlite::hooks::Authorization::Allow,
    }))
    .map_err(|e| unavailable(format!("cannot configure the SQLite database '{shown}': {e}")))?;
    Ok(conn)
}

/// `login`: connect as an app's own role (its schema exists already; the role may not create
/// schemas) instead of the URL's user.
pub(crate) async fn open_postgres(
    url: &str,
    schema: &str,
    login: Option<&crate::app_role::AppLogin>,
) -> Result<Backend, Error> {
    let shown = redact(url);
    let (driver_url, root_cert) = take_param(url, "sslrootcert");
    let mut config: tokio_postgres::Config = driver_url
        .parse()
        .map_err(|e| Error::bad_request("DATABASE_URL_INVALID", format!("invalid DATABASE_URL '{shown}': {e}")))?;
    let require_tls = matches!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    if root_cert.is_some() && !require_tls {
        return Err(Error::bad_request(
            "DATABASE_URL_INVALID",
            format!(
                "invalid DATABASE_URL '{shown}': sslrootcert is only used with sslmode=require; add it, or drop sslrootcert"
            ),
        ));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(PG_CONNECT_TIMEOUT);
    }
    // The schema comes from `app_ident` or a constant: only [a-z0-9_], safe in options.
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c search_path={schema}"),
        _ => format!("-c search_path={schema}"),
    };
    config.options(&options);
    if let Some(login) = login {
        config.user(&login.role).password(&login.password);
    }
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let tls = if require_tls { Some(tls_config(root_cert.as_deref(), &shown)?) } else { None };
    let listen = Box::new(ListenConfig { config: config.clone(), tls: tls.clone() });
    let manager = if let Some(tls) = tls {
        Manager::from_config(config, tokio_postgres_rustls::MakeRustlsConnect::new(tls), manager_config)
    } else {
        // `prefer` (the driver's default) stays plain: a TLS attempt against a self-signed
        // server certificate would fail verification, and libpq's `prefer` does not verify.
        Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    };
    let pool = Pool::builder(manager)
        .max_size(PG_POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(PG_CONNECT_TIMEOUT + Duration::from_secs(1)))
        .build()
        .map_err(|e| Error::internal(format!("cannot build the PostgreSQL pool for '{shown}': {e}")))?;
    let backend = Backend::Postgres { pool, schema: schema.to_string(), url: shown, listen };
    // Connect now, so an unreachable server is reported at start, not at the first request.
    let conn = backend.conn().await?;
    let Conn::Postgres(client) = &conn else { unreachable!("a PostgreSQL backend leases PostgreSQL connections") };
    if login.is_some() {
        return Ok(backend);
    }
    let create = format!("CREATE SCHEMA IF NOT EXISTS {}", sql::quote_ident(schema));
    if let Err(e) = client.batch_execute(&create).await {
        // Two processes creating the schema at once: one loses the race on the catalog's
        // unique index, and the schema exists either way.
        let raced = e.code().is_some_and(|c| *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION);
        if !raced {
            return Err(pg_error(&e, &create));
        }
    }
    drop(conn);
    Ok(backend)
}

/// Open a dedicated connection, `LISTEN` on `channel`, and forward each notification's payload.
/// The receiver ends when the connection does (the caller reconnects).
pub(crate) async fn pg_listen(
    cfg: &ListenConfig,
    url: &str,
    channel: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<String>, Error> {
    use futures_util::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let fail =
        |e: tokio_postgres::Error| unavailable(format!("cannot listen on PostgreSQL at '{url}': {}", pg_cause(&e)));
    let listen = format!("LISTEN {}", sql::quote_ident(channel));
    macro_rules! drive {
        ($connect:expr) => {{
            let (client, mut connection) = $connect.await.map_err(fail)?;
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let forward = tx.clone();
            let task = tokio::spawn(async move {
                while let Some(Ok(msg)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = msg
                        && forward.send(n.payload().to_string()).is_err()
                    {
                        break;
                    }
                }
            });
            if let Err(e) = client.batch_execute(&listen).await {
                task.abort();
                return Err(fail(e));
            }
            // The client must live as long as the session; the task owns it from here.
            tokio::spawn(async move {
                let _client = client;
                let _ = task.await;
            });
        }};
    }
    match &cfg.tls {
        Some(tls) => drive!(cfg.config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))),
        None => drive!(cfg.config.connect(tokio_postgres::NoTls)),
    }
    drop(tx);
    Ok(rx)
}

/// Remove `key=value` from the query of `url`; the URL without it, and the decoded value.
/// `sslrootcert` is libpq's, but tokio-postgres rejects options it does not know.
fn take_param(url: &str, key: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), None) };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == key => {
                value = Some(percent_decode(v));
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (url, value)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The TLS client for `sslmode=require`: the server certificate must verify against the
/// system's roots or the PEM file `sslrootcert`, and match the host. This is stricter than
/// libpq's `require` (which does not verify) on purpose: TLS that accepts any certificate
/// stops only passive eavesdroppers.
fn tls_config(root_cert: Option<&str>, shown: &str) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = root_cert {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<_, _>>()).map_err(|e| {
                Error::bad_request(
                    "DATABASE_URL_INVALID",
                    format!("DATABASE_URL '{shown}': cannot read sslrootcert '{path}' as PEM certificates: {e}"),
                )
            })?;
        if certs.is_empty() {
            return Err(Error::bad_request(
                "DATABASE_URL_INVALID",
                format!("DATABASE_URL '{shown}': sslrootcert '{path}' holds no PEM certificate"),
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                Error::bad_request("DATABASE_URL_INVALID", format!("DATABASE_URL '{shown}': sslrootcert '{path}': {e}"))
            })?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(Error::unavailable(
                "DATABASE_UNAVAILABLE",
                format!(
                    "DATABASE_URL '{shown}' asks for TLS, but no system root certificates were found; set sslrootcert=/path/to/ca.pem"
                ),
            ));
        }
    }
    // An explicit provider: `ClientConfig::builder()` panics when the dependency graph
    // enables more than one.
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| Error::internal(format!("cannot set up TLS for PostgreSQL: {e}")))
}

impl Backend {
    pub(crate) async fn conn(&self) -> Result<Conn, Error> {
        match self {
            Backend::Sqlite { conn, .. } => {
                let guard = conn.clone().lock_owned().await;
                // A caller dropped mid-transaction (a cancelled request) leaves the transaction
                // open on the shared connection; close it before anyone else uses it. The
                // check is an in-memory flag; only the rollback touches the disk.
                let open_tx = !guard.is_autocommit();
                let mut c = Conn::Sqlite(SqliteLease::new(guard));
                if open_tx {
                    c.batch("ROLLBACK").await?;
                }
                Ok(c)
            }
            Backend::Postgres { pool, url, .. } => pool.get().await.map(Conn::Postgres).map_err(|e| {
                let cause = match &e {
                    deadpool_postgres::PoolError::Backend(pe) => pg_cause(pe),
                    other => other.to_string(),
                };
                unavailable(format!("cannot connect to PostgreSQL at '{url}': {cause}"))
            }),
        }
    }
}

/// The most useful text of a driver error: the server's message when there is one, otherwise
/// the error and its chain (tokio-postgres hides the I/O cause behind "error connecting").
pub(crate) fn pg_cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub(crate) fn pg_error(e: &tokio_postgres::Error, sql: &str) -> Error {
    if e.as_db_error().is_none() && e.is_closed() {
        return unavailable(format!("the PostgreSQL connection closed: {}", pg_cause(e)));
    }
    sql_error(pg_cause(e), sql)
}

impl Conn {
    /// Run `f` with the SQLite connection on the blocking pool.
    pub(crate) async fn blocking<R: Send + 'static>(
        &mut self,
        _what: &str,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let Conn::Sqlite(lease) = self else { unreachable!("blocking() is only called on SQLite connections") };
        let lost = || Error::internal("the SQLite connection was lost by an earlier interrupted call");
        if lease.here {
            return f(lease.guard.as_mut().ok_or_else(lost)?);
        }
        let mut guard = lease.guard.take().ok_or_else(lost)?;
        let (guard, result) = tokio::task::spawn_blocking(move || {
            let r = f(&mut guard);
            (guard, r)
        })
        .await
        .map_err(|e| Error::internal(format!("an SQLite call panicked or was cancelled: {e}")))?;
        lease.guard = Some(guard);
        result
    }

    /// Run `steps` with this connection. On SQLite all of it is one call on the blocking pool,
    /// where every statement runs in turn on that thread: a run of many small statements (a
    /// new database's migrations: ~35) otherwise pays a hand-off to the pool and back per
    /// statement, and the pool often starts a new thread for the next one before the last is
    /// idle again. On PostgreSQL `steps` simply runs here.
    ///
    /// `steps` must wait on nothing but this connection's calls (they complete at once on that
    /// thread); anything else it waits on is reported as an internal error.
    pub(crate) async fn in_one_call<R: Send + 'static>(
        &mut self,
        steps: impl AsyncFnOnce(&mut Conn) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let Conn::Sqlite(lease) = self else { return steps(self).await };
        let guard = lease
            .guard
            .take()
            .ok_or_else(|| Error::internal("the SQLite connection was lost by an earlier interrupted call"))?;
        let (guard, result) = tokio::task::spawn_blocking(move || {
            let mut here = Conn::Sqlite(SqliteLease { guard: Some(guard), here: true });
            let result = {
                let mut run = std::pin::pin!(steps(&mut here));
                match run.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => {
                        Err(Error::internal("a run of SQLite calls waited on something other than its connection"))
                    }
                }
            };
            let Conn::Sqlite(mut lease) = here else { unreachable!("built as SQLite above") };
            (lease.take(), result)
        })
        .await
        .map_err(|e| Error::internal(format!("a run of SQLite calls panicked or was cancelled: {e}")))?;
        lease.guard = guard;
        result
    }

    pub(crate) fn is_sqlite(&self) -> bool {
        matches!(self, Conn::Sqlite(_))
    }

    /// Run a script of one or more statements without parameters.
    pub(crate) async fn batch(&mut self, script: &str) -> Result<(), Error> {
        match self {
            Conn::Sqlite(_) => {
                let script = script.to_string();
                self.blocking("batch", move |c| c.execute_batch(&script).map_err(|e| sql_error(e.to_string(), &script)))
                    .await
            }
            Conn::Postgres(client) => client.batch_execute(script).await.map_err(|e| pg_error(&e, script)),
        }
    }

    /// Run one statement; the number of rows it changed.
    pub(crate) async fn execute(&mut self, stmt: &str, params: &[Value]) -> Result<u64, Error> {
        match self {
            Conn::Sqlite(_) => {
                let stmt = sql::to_sqlite_placeholders(stmt);
                let params = params.to_vec();
                self.blocking("execute", move |c| {
                    let n = c
                        .execute(&stmt, rusqlite::params_from_iter(params.iter().map(SqliteParam)))
                        .map_err(|e| sql_error(e.to_string(), &stmt))?;
                    Ok(n as u64)
                })
                .await
            }
            Conn::Postgres(client) => {
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                let mut retried = false;
                loop {
                    let prepared = client.prepare_cached(stmt).await.map_err(|e| pg_error(&e, stmt))?;
                    match client.execute(&prepared, &refs).await {
                        Err(e) if !retried && stale_plan(client, &e) => retried = true,
                        other => return other.map_err(|e| pg_error(&e, stmt)),
                    }
                }
            }
        }
    }

    /// Run one query; all its rows.
    pub(crate) async fn query(&mut self, stmt: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
        match self {
            Conn::Sqlite(_) => {
                let stmt = sql::to_sqlite_placeholders(stmt);
                let params = params.to_vec();
                self.blocking("query", move |c| sqlite_query(c, &stmt, &params)).await
            }
            Conn::Postgres(client) => {
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                let mut retried = false;
                let rows = loop {
                    let prepared = client.prepare_cached(stmt).await.map_err(|e| pg_error(&e, stmt))?;
                    match client.query(&prepared, &refs).await {
                        Err(e) if !retried && stale_plan(client, &e) => retried = true,
                        other => break other.map_err(|e| pg_error(&e, stmt))?,
                    }
                };
                let Some(first) = rows.first() else { return Ok(Vec::new()) };
                let columns: Arc<[String]> = first.columns().iter().map(|c| c.name().to_string()).collect();
                rows.iter().map(|r| pg_row(r, &columns, stmt)).collect()
            }
        }
    }
}

/// Statements are prepared once per connection (one round trip per call instead of two). A
/// cached `SELECT *` whose table gained a column since fails with "cached plan must not
/// change result type": forget the connection's cache and let the caller retry once. Inside
/// a transaction the retry reports the aborted transaction instead, and the next one works.
fn stale_plan(client: &deadpool_postgres::Object, e: &tokio_postgres::Error) -> bool {
    let stale = e.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED && db.message().contains("cached plan")
    });
    if stale {
        client.statement_cache.clear();
    }
    stale
}

fn sqlite_query(c: &rusqlite::Connection, stmt: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
    let err = |e: rusqlite::Error| sql_error(e.to_string(), stmt);
    let mut prepared = c.prepare(stmt).map_err(err)?;
    let mut rows = prepared.query(rusqlite::params_from_iter(params.iter().map(SqliteParam))).map_err(err)?;
    let mut out = Vec::new();
    // Column names are read after the first step: if another connection changed the table
    // since this connection last read the schema, SQLite re-prepares the statement then, and
    // names taken before it would be stale.
    let mut columns: Option<Arc<[String]>> = None;
    while let Some(row) = rows.next().map_err(err)? {
        let columns = columns.get_or_insert_with(|| row.as_ref().column_names().map(str::to_string).collect());
        let n = columns.len();
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(match row.get_ref(i).map_err(err)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::Integer(i),
                ValueRef::Real(f) => Value::Real(f),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        out.push(Row::new(columns.clone(), values));
    }
    Ok(out)
}

pub(crate) fn pg_row(row: &tokio_postgres::Row, columns: &Arc<[String]>, stmt: &str) -> Result<Row, Error> {
    let mut values = Vec::with_capacity(columns.len());
    for (i, col) in row.columns().iter().enumerate() {
        let err = |e: tokio_postgres::Error| sql_error(format!("column '{}': {}", col.name(), pg_cause(&e)), stmt);
        let ty = col.type_();
        let v = match *ty {
            Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(err)?.map(Value::Bool),
            Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(err)?.map(|x| Value::Integer(x.into())),
            Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(err)?.map(|x| Value::Integer(x.into())),
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(err)?.map(Value::Integer),
            Type::OID => row.try_get::<_, Option<u32>>(i).map_err(err)?.map(|x| Value::Integer(x.into())),
            Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map_err(err)?.map(|x| Value::Real(x.into())),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(err)?.map(Value::Real),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                row.try_get::<_, Option<String>>(i).map_err(err)?.map(Value::Text)
            }
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i).map_err(err)?.map(Value::Blob),
            _ => {
                return Err(sql_error(
                    format!(
                        "column '{}' has PostgreSQL type {}, which the store does not read; cast it in the query (e.g. {}::text)",
                        col.name(),
                        ty.name(),
                        col.name()
                    ),
                    stmt,
                ));
            }
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row::new(columns.clone(), values))
}

/// A [`Value`] bound as an SQLite parameter.
struct SqliteParam<'a>(&'a Value);

impl rusqlite::ToSql for SqliteParam<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as R};
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(R::Null),
            Value::Integer(i) => ToSqlOutput::Borrowed(R::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(R::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(R::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(R::Blob(b)),
            Value::Bool(b) => ToSqlOutput::Borrowed(R::Integer(i64::from(*b))),
        })
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mismatch = || -> Box<dyn std::error::Error + Sync + Send> {
            format!("cannot bind a {} value to a parameter of PostgreSQL type {}", self.kind(), ty.name()).into()
        };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => {
                    i32::try_from(*i).map_err(|_| format!("{i} does not fit an int4 parameter"))?.to_sql(ty, out)
                }
                Type::INT2 => {
                    i16::try_from(*i).map_err(|_| format!("{i} does not fit an int2 parameter"))?.to_sql(ty, out)
                }
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => match i {
                    0 | 1 => (*i == 1).to_sql(ty, out),
                    _ => Err(format!("{i} is not a boolean (0 or 1)").into()),
                },
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => s.to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                Type::INT2 | Type::INT4 | Type::INT8 => Value::Integer(i64::from(*b)).to_sql(ty, out),
                _ => Err(mismatch()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(
            take_param("postgres://h/db?sslmode=require&sslrootcert=%2Fetc%2Fca.pem&application_name=m", "sslrootcert"),
            ("postgres://h/db?sslmode=require&application_name=m".to_string(), Some("/etc/ca.pem".to_string()))
        );
        assert_eq!(
            take_param("postgres://h/db?sslrootcert=x", "sslrootcert"),
            ("postgres://h/db".to_string(), Some("x".to_string()))
        );
        assert_eq!(take_param("postgres://h/db", "sslrootcert"), ("postgres://h/db".to_string(), None));
        assert_eq!(percent_decode("a%20b%zz%"), "a b%zz%");
    }

    fn sqlite_memory() -> Backend {
        Backend::Sqlite { conn: Arc::new(Mutex::new(open_sqlite(None, false).unwrap())), path: None }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_in_one_call_executes_each_statement_on_one_thread_and_keeps_the_connection() {
        let backend = sqlite_memory();
        let mut conn = backend.conn().await.unwrap();
        let threads = conn
            .in_one_call(async |c: &mut Conn| {
                let mut threads = Vec::new();
                for stmt in ["CREATE TABLE t (x INTEGER)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"] {
                    c.batch(stmt).await?;
                    threads.push(std::thread::current().id());
                }
                Ok(threads)
            })
            .await
            .unwrap();
        assert!(threads.iter().all(|t| *t == threads[0]), "{threads:?}");
        assert_ne!(threads[0], std::thread::current().id(), "the run is on the blocking pool");
        // The connection came back from the run.
        let rows = conn.query("SELECT count(*) AS n FROM t", &[]).await.unwrap();
        assert_eq!(rows[0].get::<i64>("n").unwrap(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_in_one_call_that_waits_on_something_else_is_an_error_not_a_hang() {
        let backend = sqlite_memory();
        let mut conn = backend.conn().await.unwrap();
        let err = conn
            .in_one_call(async |c: &mut Conn| {
                c.batch("CREATE TABLE t (x INTEGER)").await?;
                tokio::task::yield_now().await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("waited on something other than its connection"), "{}", err.message());
        // The connection is still usable (the statement before the wait ran).
        conn.batch("INSERT INTO t VALUES (1)").await.unwrap();
    }
}
