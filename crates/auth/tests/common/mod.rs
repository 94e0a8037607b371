//! Shared test helpers: fresh databases (SQLite always, PostgreSQL when
//! `MARINA_TEST_DATABASE_URL` is set, required under `CI`), and the JWT helpers of
//! `support/jwt.rs` (signing, a local JWKS server).

#![allow(dead_code)]

#[path = "../support/jwt.rs"]
mod jwt;
#[allow(unused_imports)]
pub use jwt::*;

use std::sync::atomic::{AtomicU32, Ordering};

use marina_store::Store;

pub struct TestDb {
    pub url: Option<String>,
    pub state: tempfile::TempDir,
    pub label: &'static str,
}

impl TestDb {
    /// A new handle on this database, migrated.
    pub async fn store(&self) -> Store {
        let s = Store::open(self.url.as_deref(), self.state.path()).await.expect("open the test store");
        s.migrate_system().await.expect("marina's migrations apply");
        s
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One SQLite database and, when configured, one new PostgreSQL database.
pub async fn test_dbs() -> Vec<TestDb> {
    let mut out = vec![TestDb { url: None, state: tempfile::tempdir().unwrap(), label: "sqlite" }];
    match std::env::var("MARINA_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(conn);
            let name = format!(
                "auth_{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            );
            client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create a test database");
            let (url, query) = match base.split_once('?') {
                Some((u, q)) => (u.to_string(), format!("?{q}")),
                None => (base.clone(), String::new()),
            };
            let host_end =
                url[url.find("://").unwrap() + 3..].find('/').map_or(url.len(), |i| url.find("://").unwrap() + 3 + i);
            out.push(TestDb {
                url: Some(format!("{}/{name}{query}", &url[..host_end])),
                state: tempfile::tempdir().unwrap(),
                label: "postgres",
            });
        }
        _ => {
            assert!(
                std::env::var("CI").map_or(true, |v| v.is_empty()),
                "CI is set but MARINA_TEST_DATABASE_URL is not: CI must test PostgreSQL"
            );
            eprintln!("skip: MARINA_TEST_DATABASE_URL is unset; PostgreSQL cases skipped");
        }
    }
    out
}
