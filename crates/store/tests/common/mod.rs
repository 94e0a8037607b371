//! Test databases: always SQLite, and PostgreSQL when `MARINA_TEST_DATABASE_URL` is set
//! (`.ci/postgres.sh` sets it). Under `CI` a missing URL fails instead of skipping, so CI
//! really tests PostgreSQL. Every call gets a fresh database, so tests run in parallel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use marina_store::{BackendKind, Store};

pub struct TestDb {
    /// What to pass as `DATABASE_URL` (`None`: the SQLite default in `state_dir`).
    pub url: Option<String>,
    pub state: tempfile::TempDir,
    pub kind: BackendKind,
}

impl TestDb {
    pub async fn store(&self) -> Store {
        Store::open(self.url.as_deref(), self.state.path()).await.expect("open the test store")
    }

    pub async fn app_store(&self, name: &str) -> Store {
        Store::open_app(self.url.as_deref(), self.state.path(), name).await.expect("open the app store")
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn is_pg(&self) -> bool {
        self.kind == BackendKind::Postgres
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The base PostgreSQL URL, or `None` (with a skip line) outside CI.
pub fn pg_base_url() -> Option<String> {
    match std::env::var("MARINA_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
                panic!(
                    "CI is set but MARINA_TEST_DATABASE_URL is not: CI must test PostgreSQL (source .ci/postgres.sh)"
                );
            }
            eprintln!("skip: MARINA_TEST_DATABASE_URL is unset; PostgreSQL cases skipped");
            None
        }
    }
}

/// A new, empty PostgreSQL database on the test server; its URL.
pub async fn fresh_pg_database(base: &str) -> String {
    let (client, connection) =
        tokio_postgres::connect(base, tokio_postgres::NoTls).await.expect("connect to the test server");
    tokio::spawn(connection);
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
    );
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create a test database");
    with_database(base, &name)
}

/// `base` with its database name replaced.
pub fn with_database(base: &str, name: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (base, String::new()),
    };
    let scheme_end = url.find("://").expect("a URL") + 3;
    let host_end = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &url[..host_end])
}

/// One SQLite and (when available) one PostgreSQL database, each new.
pub async fn test_dbs() -> Vec<TestDb> {
    let mut out = vec![TestDb { url: None, state: tempfile::tempdir().unwrap(), kind: BackendKind::Sqlite }];
    if let Some(base) = pg_base_url() {
        out.push(TestDb {
            url: Some(fresh_pg_database(&base).await),
            state: tempfile::tempdir().unwrap(),
            kind: BackendKind::Postgres,
        });
    }
    out
}

/// Write migration files into a new directory under `root`.
pub fn write_migrations(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// The tables of a store's database (its schema on PostgreSQL), sorted.
pub async fn tables(store: &Store) -> Vec<String> {
    let sql = match store.kind() {
        BackendKind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        BackendKind::Postgres => {
            "SELECT tablename::text AS name FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        }
    };
    store.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<String>("name").unwrap()).collect()
}
