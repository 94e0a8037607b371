//! marina's own database for unit tests that touch the store: SQLite in a temp dir always, and
//! PostgreSQL when `MARINA_TEST_DATABASE_URL` is set (`.ci/postgres.sh`); under `CI` a missing URL
//! fails instead of skipping. The PostgreSQL database is shared with other test binaries, so a
//! test keeps to rows of its own (unique names).

use marina_store::Store;

/// One database per backend, migrated, each with the temp dir that holds it (or its state dir).
pub async fn stores() -> Vec<(tempfile::TempDir, Store)> {
    let mut out = Vec::new();
    let mut urls = vec![None];
    urls.extend(pg_url().map(Some));
    for url in urls {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(url.as_deref(), dir.path()).await.expect("open the test store");
        store.migrate_system().await.expect("migrate the test store");
        out.push((dir, store));
    }
    out
}

fn pg_url() -> Option<String> {
    match std::env::var("MARINA_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "CI is set but MARINA_TEST_DATABASE_URL is not: CI must test PostgreSQL (source .ci/postgres.sh)"
            );
            eprintln!("skip: MARINA_TEST_DATABASE_URL is unset; PostgreSQL cases skipped");
            None
        }
    }
}
