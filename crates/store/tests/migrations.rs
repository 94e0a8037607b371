//! The migration engine on both backends: every operation, failure atomicity, checksums,
//! concurrency, SIGKILL in the middle of a migration, and bad input.

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, tables, test_dbs, write_migrations};
use marina_store::migrate::{State, new_migration};
use marina_store::{MigrateOptions, MigrationSet, Migrator, RollbackTarget, Store};

fn three() -> Vec<(&'static str, &'static str)> {
    vec![
        ("0001_users.up.sql", "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL);"),
        ("0001_users.down.sql", "DROP TABLE users;"),
        (
            "0002_posts.up.sql",
            "CREATE TABLE posts (id BIGINT PRIMARY KEY, user_id BIGINT REFERENCES users(id));\nCREATE INDEX posts_user ON posts(user_id);",
        ),
        ("0002_posts.down.sql", "DROP TABLE posts;"),
        ("0003_tags.up.sql", "CREATE TABLE tags (name TEXT PRIMARY KEY);"),
        ("0003_tags.down.sql", "DROP TABLE tags;"),
    ]
}

async fn states(store: &Store, set: &MigrationSet) -> Vec<(i64, State)> {
    Migrator::new(store, set).status().await.unwrap().entries.iter().map(|e| (e.id, e.state)).collect()
}

#[tokio::test]
async fn migrate_status_rollback_reset() {
    for db in test_dbs().await {
        let store = db.store().await;
        let dir = write_migrations(db.state_dir(), &three());
        let set = MigrationSet::from_dir(&dir).unwrap();
        let m = Migrator::new(&store, &set);
        assert_eq!(states(&store, &set).await, vec![(1, State::Pending), (2, State::Pending), (3, State::Pending)]);

        // A dry run reports and changes nothing, not even the bookkeeping table.
        let dry = m.migrate(&MigrateOptions { to: None, dry_run: true }).await.unwrap();
        assert_eq!(dry.steps.len(), 3);
        assert!(tables(&store).await.is_empty(), "{:?}", db.kind);

        let r = m.migrate(&MigrateOptions { to: Some(2), dry_run: false }).await.unwrap().into_result().unwrap();
        assert_eq!(r.steps.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(tables(&store).await, vec!["_marina_migrations", "posts", "users"]);
        let st = m.status().await.unwrap();
        assert_eq!(st.entries[0].state, State::Applied);
        assert!(st.entries[0].applied_at.as_deref().unwrap().ends_with('Z'));
        assert!(st.entries[0].duration_ms.unwrap() >= 0);
        assert_eq!(st.entries[2].state, State::Pending);

        let r = m.migrate(&MigrateOptions::default()).await.unwrap();
        assert_eq!(r.steps.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3]);
        let again = m.migrate(&MigrateOptions::default()).await.unwrap();
        assert!(again.steps.is_empty(), "a second run has nothing to do");

        // Rollback defaults to one step (the CLI's default); --to keeps the target applied.
        let r = m.rollback(RollbackTarget::Steps(1)).await.unwrap();
        assert_eq!(r.steps.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(states(&store, &set).await, vec![(1, State::Applied), (2, State::Applied), (3, State::Pending)]);
        let r = m.rollback(RollbackTarget::To(1)).await.unwrap();
        assert_eq!(r.steps.iter().map(|s| s.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(tables(&store).await, vec!["_marina_migrations", "users"]);
        assert_eq!(m.rollback(RollbackTarget::To(7)).await.unwrap_err().code(), "MIGRATION_TARGET_UNKNOWN");

        // Reset drops everything (data too) and re-applies all.
        store.execute("INSERT INTO users (id, name) VALUES (1, 'ann')", &[]).await.unwrap();
        store.execute("CREATE TABLE stray (x TEXT)", &[]).await.unwrap();
        let r = m.reset().await.unwrap().into_result().unwrap();
        assert_eq!(r.steps.len(), 3);
        assert_eq!(tables(&store).await, vec!["_marina_migrations", "posts", "tags", "users"]);
        assert!(store.query("SELECT * FROM users", &[]).await.unwrap().is_empty());

        let r = m.rollback(RollbackTarget::To(0)).await.unwrap();
        assert_eq!(r.steps.len(), 3);
        assert_eq!(tables(&store).await, vec!["_marina_migrations"]);
    }
}

#[tokio::test]
async fn a_failing_migration_leaves_the_database_as_it_was() {
    for db in test_dbs().await {
        let store = db.store().await;
        let mut files = three();
        // Creates a table, inserts, then fails: none of it may remain.
        files[4] = (
            "0003_tags.up.sql",
            "CREATE TABLE tags (name TEXT PRIMARY KEY);\nINSERT INTO users (id, name) VALUES (5, 'x');\nINSERT INTO no_such_table VALUES (1);",
        );
        let dir = write_migrations(db.state_dir(), &files);
        let set = MigrationSet::from_dir(&dir).unwrap();
        let m = Migrator::new(&store, &set);
        let report = m.migrate(&MigrateOptions::default()).await.unwrap();
        assert_eq!(report.steps.len(), 2);
        let failure = report.failure.as_ref().expect("0003 fails");
        assert_eq!(failure.id, 3);
        assert!(failure.message.contains("0003_tags.up.sql"), "{}", failure.message);
        assert!(failure.message.contains("no_such_table"), "{}", failure.message);
        assert!(failure.message.contains("exactly as before"), "{}", failure.message);
        let err = report.into_result().unwrap_err();
        assert_eq!(err.code(), "MIGRATION_FAILED");

        assert_eq!(tables(&store).await, vec!["_marina_migrations", "posts", "users"], "{:?}", db.kind);
        assert!(store.query("SELECT * FROM users", &[]).await.unwrap().is_empty());
        assert_eq!(states(&store, &set).await[2], (3, State::Pending));

        // Fixed (it was never applied, so editing it is allowed), the next run completes.
        std::fs::write(dir.join("0003_tags.up.sql"), "CREATE TABLE tags (name TEXT PRIMARY KEY);").unwrap();
        let set = MigrationSet::from_dir(&dir).unwrap();
        let r = Migrator::new(&store, &set).migrate(&MigrateOptions::default()).await.unwrap().into_result().unwrap();
        assert_eq!(r.steps.len(), 1);
    }
}

#[tokio::test]
async fn changed_and_unknown_migrations_are_hard_errors() {
    for db in test_dbs().await {
        let store = db.store().await;
        let dir = write_migrations(db.state_dir(), &three());
        let set = MigrationSet::from_dir(&dir).unwrap();
        Migrator::new(&store, &set).migrate(&MigrateOptions::default()).await.unwrap().into_result().unwrap();

        std::fs::write(dir.join("0002_posts.up.sql"), "CREATE TABLE posts (id BIGINT);").unwrap();
        let tampered = MigrationSet::from_dir(&dir).unwrap();
        let m = Migrator::new(&store, &tampered);
        let err = m.migrate(&MigrateOptions::default()).await.unwrap_err();
        assert_eq!(err.code(), "MIGRATION_CHECKSUM_MISMATCH", "{:?}", db.kind);
        assert!(err.message().contains("0002_posts.up.sql"), "{}", err.message());
        assert_eq!(m.rollback(RollbackTarget::Steps(1)).await.unwrap_err().code(), "MIGRATION_CHECKSUM_MISMATCH");
        assert_eq!(
            m.migrate(&MigrateOptions { to: None, dry_run: true }).await.unwrap_err().code(),
            "MIGRATION_CHECKSUM_MISMATCH"
        );
        assert_eq!(states(&store, &tampered).await[1], (2, State::Changed));

        // Files of an applied migration removed: unknown.
        std::fs::write(dir.join("0002_posts.up.sql"), three()[2].1).unwrap();
        std::fs::remove_file(dir.join("0003_tags.up.sql")).unwrap();
        std::fs::remove_file(dir.join("0003_tags.down.sql")).unwrap();
        let fewer = MigrationSet::from_dir(&dir).unwrap();
        let err = Migrator::new(&store, &fewer).migrate(&MigrateOptions::default()).await.unwrap_err();
        assert_eq!(err.code(), "MIGRATION_UNKNOWN");
        assert!(err.message().contains("migration 3"), "{}", err.message());
        let st = states(&store, &fewer).await;
        assert_eq!(st, vec![(1, State::Applied), (2, State::Applied), (3, State::Unknown)]);
    }
}

#[tokio::test]
async fn rollback_refuses_a_migration_without_a_down_file() {
    for db in test_dbs().await {
        let store = db.store().await;
        let mut files = three();
        files.remove(3); // 0002_posts.down.sql
        let dir = write_migrations(db.state_dir(), &files);
        let set = MigrationSet::from_dir(&dir).unwrap();
        let m = Migrator::new(&store, &set);
        m.migrate(&MigrateOptions::default()).await.unwrap().into_result().unwrap();
        let err = m.rollback(RollbackTarget::Steps(2)).await.unwrap_err();
        assert_eq!(err.code(), "MIGRATION_NO_DOWN");
        assert!(err.message().contains("0002_posts.down.sql"), "{}", err.message());
        // Refused before anything ran: 0003 is still applied.
        assert_eq!(states(&store, &set).await[2], (3, State::Applied), "{:?}", db.kind);
    }
}

#[tokio::test]
async fn opting_out_of_the_transaction() {
    for db in test_dbs().await {
        let store = db.store().await;
        let index = if db.is_pg() {
            "-- marina:no-transaction\nCREATE INDEX CONCURRENTLY users_name ON users(name);\nCREATE INDEX CONCURRENTLY users_name2 ON users(name, id);"
        } else {
            "-- marina:no-transaction\nCREATE INDEX users_name ON users(name);\nCREATE INDEX users_name2 ON users(name, id);"
        };
        let dir =
            write_migrations(db.state_dir(), &[("0001_users.up.sql", three()[0].1), ("0002_index.up.sql", index)]);
        let set = MigrationSet::from_dir(&dir).unwrap();
        assert!(!set.get(2).unwrap().up_transactional);
        let r = Migrator::new(&store, &set).migrate(&MigrateOptions::default()).await.unwrap().into_result().unwrap();
        assert_eq!(r.steps.len(), 2, "{:?}", db.kind);
        assert!(!r.steps[1].transactional);
    }
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    for db in test_dbs().await {
        // A slow migration keeps the first migrator busy while the others wait on the lock.
        let slow = if db.is_pg() {
            "SELECT pg_sleep(0.5);\nINSERT INTO runs (id) VALUES (2);"
        } else {
            "CREATE TABLE burn AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) AS n FROM c;\nINSERT INTO runs (id) VALUES (2);"
        };
        let dir = write_migrations(
            db.state_dir(),
            &[
                ("0001_runs.up.sql", "CREATE TABLE runs (id BIGINT NOT NULL);\nINSERT INTO runs (id) VALUES (1);"),
                ("0002_slow.up.sql", slow),
                ("0003_more.up.sql", "INSERT INTO runs (id) VALUES (3);"),
            ],
        );
        let set = MigrationSet::from_dir(&dir).unwrap();
        // Separate stores: separate connections, as separate processes would have.
        let stores = [db.store().await, db.store().await, db.store().await];
        let runs =
            stores.iter().map(|s| {
                let set = &set;
                async move {
                    Migrator::new(s, set).migrate(&MigrateOptions::default()).await.unwrap().into_result().unwrap()
                }
            });
        let reports = futures_join_all(runs).await;
        let applied: usize = reports.iter().map(|r| r.steps.len()).sum();
        assert_eq!(applied, 3, "{:?}", db.kind);
        let ids: Vec<i64> = stores[0]
            .query("SELECT id FROM runs ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0).unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}

/// `join_all` without a futures dependency: spawn-free, polls all on this task.
async fn futures_join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

fn kill_files(db: &TestDb) -> Vec<(&'static str, &'static str)> {
    let slow = if db.is_pg() {
        "CREATE TABLE half (x BIGINT);\nINSERT INTO half VALUES (1);\nSELECT pg_sleep(30);"
    } else {
        "CREATE TABLE half (x BIGINT);\nINSERT INTO half VALUES (1);\nCREATE TABLE burn AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000000) SELECT count(*) AS n FROM c;"
    };
    vec![("0001_first.up.sql", "CREATE TABLE first (x BIGINT);"), ("0002_slow.up.sql", slow)]
}

/// Runs in a child process (see `sigkill_during_a_migration_leaves_a_consistent_database`).
#[tokio::test]
#[ignore = "helper: run by sigkill_during_a_migration_leaves_a_consistent_database in a child process"]
async fn sigkill_helper() {
    let Ok(state) = std::env::var("MARINA_KILL_STATE") else { return };
    let url = std::env::var("MARINA_KILL_URL").ok().filter(|u| !u.is_empty());
    let store = Store::open(url.as_deref(), std::path::Path::new(&state)).await.unwrap();
    let set = MigrationSet::from_dir(&std::path::Path::new(&state).join("migrations")).unwrap();
    Migrator::new(&store, &set).migrate(&MigrateOptions::default()).await.unwrap();
    panic!("the parent should have killed this process during 0002");
}

#[tokio::test]
async fn sigkill_during_a_migration_leaves_a_consistent_database() {
    for db in test_dbs().await {
        write_migrations(db.state_dir(), &kill_files(&db));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sigkill_helper", "--include-ignored", "--nocapture", "--test-threads=1"])
            .env("MARINA_KILL_STATE", db.state_dir())
            .env("MARINA_KILL_URL", db.url.clone().unwrap_or_default())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until 0001 is committed: the child is then inside 0002's transaction.
        let store = db.store().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let done = store.query("SELECT id FROM _marina_migrations WHERE id = 1", &[]).await.map(|r| !r.is_empty());
            if done.unwrap_or(false) {
                break;
            }
            assert!(Instant::now() < deadline, "the child never applied 0001 ({:?})", db.kind);
            assert!(child.try_wait().unwrap().is_none(), "the child exited early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let set = MigrationSet::from_dir(&db.state_dir().join("migrations")).unwrap();
        assert_eq!(states(&store, &set).await, vec![(1, State::Applied), (2, State::Pending)], "{:?}", db.kind);
        assert_eq!(tables(&store).await, vec!["_marina_migrations", "first"], "{:?}", db.kind);

        // The next run takes the (released) lock and completes, with a quick 0002 this time.
        std::fs::write(
            db.state_dir().join("migrations/0002_slow.up.sql"),
            "CREATE TABLE half (x BIGINT);\nINSERT INTO half VALUES (1);",
        )
        .unwrap();
        let set = MigrationSet::from_dir(&db.state_dir().join("migrations")).unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            Migrator::new(&store, &set).migrate(&MigrateOptions::default()),
        )
        .await
        .unwrap_or_else(|_| panic!("the lock was not released by the kill ({:?})", db.kind))
        .unwrap()
        .into_result()
        .unwrap();
        assert_eq!(r.steps.len(), 1);
        assert_eq!(store.query("SELECT x FROM half", &[]).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn bad_migration_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = write_migrations(dir.path(), &[("0001_ok.up.sql", "SELECT 1;"), ("add-users.sql", "SELECT 1;")]);
    let err = MigrationSet::from_dir(&d).unwrap_err();
    assert_eq!(err.code(), "MIGRATION_NAME_INVALID");
    assert!(err.message().contains("'add-users.sql'"), "{}", err.message());
    std::fs::remove_file(d.join("add-users.sql")).unwrap();
    std::fs::write(d.join("README.md"), "not a migration").unwrap();
    std::fs::write(d.join("001_dup.up.sql"), "SELECT 1;").unwrap();
    let err = MigrationSet::from_dir(&d).unwrap_err();
    assert_eq!(err.code(), "MIGRATION_DUPLICATE_ID");
    assert!(MigrationSet::from_dir(&dir.path().join("absent")).unwrap().migrations().is_empty());

    let err = new_migration(&d, "new").unwrap_err();
    assert_eq!(err.code(), "MIGRATION_DUPLICATE_ID", "db new refuses to add to a broken directory");
}

#[tokio::test]
async fn the_system_schema_applies_on_both_backends() {
    for db in test_dbs().await {
        let store = db.store().await;
        let r = store.migrate_system().await.unwrap();
        assert_eq!(r.steps.first().map(|s| s.id), Some(1));
        assert!(store.migrate_system().await.unwrap().steps.is_empty());
        let v =
            store.query_opt("SELECT value FROM marina_meta WHERE key = $1", &["schema_version".into()]).await.unwrap();
        assert_eq!(v.unwrap().get::<String>("value").unwrap(), "1");
        if db.is_pg() {
            assert_eq!(store.pg_schema(), Some("marina"));
        }
    }
}

/// An app's migration files are read by marina: a symlink leading out of the migrations dir, a
/// FIFO and an oversized file are refused without blocking and without quoting the target.
#[test]
fn migration_files_that_reach_outside_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("secret.sql");
    std::fs::write(&secret, "SELECT 'ROOT_KEY=hunter2';").unwrap();
    type Make<'a> = &'a dyn Fn(&std::path::Path);
    let cases: [(&str, Make); 2] = [
        ("symlink", &|d| std::os::unix::fs::symlink(&secret, d.join("0001_x.up.sql")).unwrap()),
        ("fifo", &|d| {
            nix::unistd::mkfifo(&d.join("0001_x.up.sql"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
        }),
    ];
    for (name, make) in cases {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        make(&dir);
        let started = Instant::now();
        let e = MigrationSet::from_dir(&dir).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{name}: blocked");
        let text = e.to_string();
        assert!(!text.contains("hunter2") && !text.contains(secret.to_str().unwrap()), "{name}: {text}");
        assert!(text.contains("0001_x.up.sql"), "{name}: {text}");
    }
}
