//! A new marina.db created without fsyncs (`Store::open_quick`), then sealed: fully migrated,
//! durable afterwards, and recoverable when a power loss tore it before the seal.

use std::path::Path;

use marina_store::{MigrationSet, Store};

async fn synchronous(store: &Store) -> i64 {
    store.query_opt("PRAGMA synchronous", &[]).await.unwrap().unwrap().get::<i64>("synchronous").unwrap()
}

fn all_migrations() -> usize {
    MigrationSet::system().unwrap().migrations().len()
}

fn db_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("marina.db")).unwrap().len()
}

#[tokio::test]
async fn a_new_database_is_migrated_without_fsyncs_then_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_quick(None, dir.path()).await.unwrap();
    assert_eq!(store.migrate_system().await.unwrap().steps.len(), all_migrations());
    assert_eq!(synchronous(&store).await, 0, "created with synchronous = OFF");
    assert!(db_len(dir.path()) <= 4096, "no checkpoint before the seal: the file is page 1 only");

    let seal = store.seal_in_background().await.expect("a database created now is sealed");
    assert_eq!(synchronous(&store).await, 1, "a call after the seal began runs with synchronous = NORMAL");
    seal.await.unwrap();
    assert!(db_len(dir.path()) > 4096, "the checkpoint copied the migrations into the file");
    assert_eq!(std::fs::metadata(dir.path().join("marina.db-wal")).unwrap().len(), 0, "TRUNCATE checkpoint");
    drop(store);

    let again = Store::open_quick(None, dir.path()).await.unwrap();
    assert!(again.seal_in_background().await.is_none(), "an existing database is opened as always");
    assert_eq!(synchronous(&again).await, 1);
    assert!(again.migrate_system().await.unwrap().steps.is_empty(), "nothing pending after a restart");
}

#[tokio::test]
async fn plain_open_creates_with_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, dir.path()).await.unwrap();
    assert_eq!(synchronous(&store).await, 1);
    assert!(store.seal_in_background().await.is_none());
}

/// A start that fails after the migrations (a port in use) closes the connection unsealed:
/// no checkpoint then, so the file stays one page, and the next start opens it as existing.
#[tokio::test]
async fn an_unsealed_database_closed_early_is_reopened_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_quick(None, dir.path()).await.unwrap();
    store.migrate_system().await.unwrap();
    drop(store);
    assert!(db_len(dir.path()) <= 4096, "no checkpoint at close before the seal");

    let again = Store::open_quick(None, dir.path()).await.unwrap();
    assert!(again.seal_in_background().await.is_none());
    assert_eq!(synchronous(&again).await, 1);
    assert!(again.migrate_system().await.unwrap().steps.is_empty(), "the migrations were in the WAL");
}

#[tokio::test]
async fn a_torn_one_page_database_is_created_again() {
    let dir = tempfile::tempdir().unwrap();
    // What a creation cut short leaves: SQLite's header, then a page that never got written.
    let mut torn = b"SQLite format 3\0".to_vec();
    torn.resize(4096, 0x5a);
    std::fs::write(dir.path().join("marina.db"), torn).unwrap();
    std::fs::write(dir.path().join("marina.db-wal"), vec![0x5a; 1000]).unwrap();
    let store = Store::open_quick(None, dir.path()).await.unwrap();
    assert_eq!(store.migrate_system().await.unwrap().steps.len(), all_migrations());
    store.seal_in_background().await.expect("it was created again").await.unwrap();
    assert_eq!(synchronous(&store).await, 1);
}

#[tokio::test]
async fn a_larger_unreadable_file_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let junk = vec![0x5a; 8192];
    std::fs::write(dir.path().join("marina.db"), &junk).unwrap();
    let failed = match Store::open_quick(None, dir.path()).await {
        Ok(store) => store.migrate_system().await.is_err(),
        Err(_) => true,
    };
    assert!(failed, "a file that is not a database is an error");
    assert_eq!(std::fs::read(dir.path().join("marina.db")).unwrap(), junk, "and is left as it was");
}

/// A small file that is not SQLite's (a user's file named by `DATABASE_URL`) and a symlinked
/// `marina.db` are never removed or replaced: only what marina started writing is recreated.
#[tokio::test]
async fn a_small_foreign_file_or_a_symlink_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = vec![0x5a; 4096];
    std::fs::write(dir.path().join("marina.db"), &foreign).unwrap();
    let failed = match Store::open_quick(None, dir.path()).await {
        Ok(store) => store.migrate_system().await.is_err(),
        Err(_) => true,
    };
    assert!(failed, "a file that is not a database is an error");
    assert_eq!(std::fs::read(dir.path().join("marina.db")).unwrap(), foreign, "and is left as it was");

    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real.db");
    std::os::unix::fs::symlink(&target, dir.path().join("marina.db")).unwrap();
    let store = Store::open_quick(None, dir.path()).await.unwrap();
    store.migrate_system().await.unwrap();
    if let Some(seal) = store.seal_in_background().await {
        seal.await.unwrap();
    }
    assert!(std::fs::symlink_metadata(dir.path().join("marina.db")).unwrap().file_type().is_symlink(), "still a link");
    assert!(target.is_file(), "the database was created where the link points");
}

/// A new marina.db migrated and sealed on a task: a caller that comes before the task ran
/// waits for it and finds the whole schema; the file is durable afterwards.
#[tokio::test]
async fn a_new_database_migrated_in_the_background_is_whole_for_every_caller() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_quick(None, dir.path()).await.unwrap();
    let task = store.migrate_system_in_background().await.expect("a database created now is migrated on a task");
    // Issued before the task had a chance to run (it was only spawned): it must wait for it.
    let applied = store.query("SELECT id FROM _marina_migrations", &[]).await.unwrap();
    assert_eq!(applied.len(), all_migrations(), "the caller saw the schema only once it was all there");
    assert_eq!(synchronous(&store).await, 1, "and after the seal");
    assert_eq!(task.await.unwrap().unwrap().steps.len(), all_migrations());
    assert!(db_len(dir.path()) > 4096, "the seal's checkpoint copied the migrations into the file");
    drop(store);

    let again = Store::open_quick(None, dir.path()).await.unwrap();
    assert!(again.migrate_system_in_background().await.is_none(), "an existing database is left to migrate_system");
    assert!(again.migrate_system().await.unwrap().steps.is_empty());
}

/// Migrations that fail on the task (here the lock file cannot be opened) are the task's
/// error, and the database is left unsealed: one page, as after a failed start.
#[tokio::test]
async fn a_background_migration_that_fails_is_the_tasks_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("marina.db.migrate-lock")).unwrap();
    let store = Store::open_quick(None, dir.path()).await.unwrap();
    let task = store.migrate_system_in_background().await.expect("a database created now is migrated on a task");
    let e = task.await.unwrap().expect_err("the lock cannot be opened");
    assert!(e.message().contains("cannot open the migration lock"), "{}", e.message());
    assert!(e.message().contains("marina.db.migrate-lock"), "{}", e.message());
    assert!(db_len(dir.path()) <= 4096, "not sealed");
}
