//! The typed store API on both backends: parameters, types, transactions, savepoints, app
//! databases, and the errors for bad input.

mod common;

use common::{tables, test_dbs};
use marina_core::Error;
use marina_store::{BackendKind, Store, Value};

#[tokio::test]
async fn parameters_and_types_round_trip() {
    for db in test_dbs().await {
        let store = db.store().await;
        let blob_type = if db.is_pg() { "BYTEA" } else { "BLOB" };
        let real_type = if db.is_pg() { "DOUBLE PRECISION" } else { "REAL" };
        let bool_type = "BOOLEAN";
        store
            .execute(
                &format!("CREATE TABLE t (i BIGINT, r {real_type}, s TEXT, b {blob_type}, f {bool_type}, n TEXT)"),
                &[],
            )
            .await
            .unwrap();
        // Parameters out of order: SQLite must bind $2 to the second value, not the first seen.
        let changed = store
            .execute(
                "INSERT INTO t (s, i, r, b, f, n) VALUES ($2, $1, $3, $4, $5, $6)",
                &[
                    Value::from(42i64),
                    Value::from("it's $1 -- not a param"),
                    Value::from(1.5f64),
                    Value::from(vec![0u8, 255, 7]),
                    Value::from(true),
                    Value::Null,
                ],
            )
            .await
            .unwrap();
        assert_eq!(changed, 1, "{:?}", db.kind);
        let row =
            store.query_opt("SELECT i, r, s, b, f, n FROM t WHERE i = $1", &[42i64.into()]).await.unwrap().unwrap();
        assert_eq!(row.get::<i64>("i").unwrap(), 42);
        assert_eq!(row.get::<f64>("r").unwrap(), 1.5);
        assert_eq!(row.get::<String>("s").unwrap(), "it's $1 -- not a param");
        assert_eq!(row.get::<Vec<u8>>("b").unwrap(), vec![0u8, 255, 7]);
        assert!(row.get::<bool>("f").unwrap());
        assert_eq!(row.get::<Option<String>>("n").unwrap(), None);
        assert_eq!(row.columns(), ["i", "r", "s", "b", "f", "n"]);
        assert!(store.query_opt("SELECT i FROM t WHERE i = $1", &[7i64.into()]).await.unwrap().is_none());

        let err = store.query("SELECT * FROM no_such_table", &[]).await.unwrap_err();
        assert_eq!(err.code(), "SQL_ERROR", "{:?}", db.kind);
        assert!(err.message().contains("no_such_table"), "{}", err.message());
    }
}

#[tokio::test]
async fn transactions_commit_roll_back_and_nest() {
    for db in test_dbs().await {
        let store = db.store().await;
        store.execute("CREATE TABLE c (n BIGINT NOT NULL)", &[]).await.unwrap();
        let count = async |s: &Store| s.query("SELECT n FROM c ORDER BY n", &[]).await.unwrap().len();

        store
            .transaction(async |tx| {
                tx.execute("INSERT INTO c (n) VALUES ($1)", &[1i64.into()]).await?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(count(&store).await, 1);

        let err = store
            .transaction(async |tx| {
                tx.execute("INSERT INTO c (n) VALUES ($1)", &[2i64.into()]).await?;
                Err::<(), _>(Error::bad_request("NOPE", "caller gave up"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), "NOPE");
        assert_eq!(count(&store).await, 1, "an Err rolls back ({:?})", db.kind);

        // A nested failure rolls back to its savepoint; the outer transaction goes on.
        store
            .transaction(async |tx| {
                tx.execute("INSERT INTO c (n) VALUES (3)", &[]).await?;
                let inner = tx
                    .savepoint(async |tx| {
                        tx.execute("INSERT INTO c (n) VALUES (4)", &[]).await?;
                        tx.execute("INSERT INTO c (n) VALUES (NULL)", &[]).await
                    })
                    .await;
                assert!(inner.is_err());
                tx.savepoint(async |tx| tx.execute("INSERT INTO c (n) VALUES (5)", &[]).await).await?;
                Ok(())
            })
            .await
            .unwrap();
        let ns: Vec<i64> =
            store.query("SELECT n FROM c ORDER BY n", &[]).await.unwrap().iter().map(|r| r.get(0).unwrap()).collect();
        assert_eq!(ns, vec![1, 3, 5], "{:?}", db.kind);

        // Dropping a transaction without commit rolls it back, and the store stays usable.
        {
            let mut tx = store.begin().await.unwrap();
            tx.execute("INSERT INTO c (n) VALUES (9)", &[]).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(count(&store).await, 3, "{:?}", db.kind);
        let tx = store.begin().await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn apps_get_their_own_databases() {
    for db in test_dbs().await {
        let system = db.store().await;
        let a = db.app_store("todo-app").await;
        let b = db.app_store("Notes").await;
        a.execute("CREATE TABLE items (x TEXT)", &[]).await.unwrap();
        b.execute("CREATE TABLE notes (x TEXT)", &[]).await.unwrap();
        assert_eq!(tables(&a).await, vec!["items"]);
        assert_eq!(tables(&b).await, vec!["notes"]);
        assert!(tables(&system).await.is_empty(), "{:?}", db.kind);
        assert!(b.query("SELECT * FROM items", &[]).await.is_err(), "apps cannot see each other's tables");
        match db.kind {
            BackendKind::Sqlite => {
                assert_eq!(a.sqlite_path().unwrap(), db.state_dir().join("apps/todo_app/app.db"));
                assert!(db.state_dir().join("marina.db").exists());
            }
            BackendKind::Postgres => assert_eq!(a.pg_schema(), Some("app_todo_app")),
        }
        let err = Store::open_app(db.url.as_deref(), db.state_dir(), "x\"; DROP SCHEMA marina; --").await.unwrap_err();
        assert_eq!(err.code(), "APP_NAME_INVALID");
    }
}

#[tokio::test]
async fn sqlite_default_is_created_with_wal_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nested/state");
    let store = Store::open(None, &state).await.unwrap();
    assert!(state.join("marina.db").exists());
    let mode = store.query("PRAGMA journal_mode", &[]).await.unwrap();
    assert_eq!(mode[0].get::<String>(0).unwrap(), "wal");
    let fk = store.query("PRAGMA foreign_keys", &[]).await.unwrap();
    assert_eq!(fk[0].get::<i64>(0).unwrap(), 1);
    let busy = store.query("PRAGMA busy_timeout", &[]).await.unwrap();
    assert!(busy[0].get::<i64>(0).unwrap() >= 1000);
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(Some("mysql://root:secret@localhost/x"), dir.path()).await.unwrap_err();
    assert_eq!(err.code(), "DATABASE_URL_INVALID");
    assert!(!err.message().contains("secret"), "{}", err.message());

    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let started = std::time::Instant::now();
    let err = Store::open(Some("postgres://marina:pw@127.0.0.1:1/x"), dir.path()).await.unwrap_err();
    assert_eq!(err.code(), "DATABASE_UNAVAILABLE");
    assert_eq!(err.status().as_u16(), 503);
    assert!(err.message().contains("127.0.0.1:1"), "{}", err.message());
    assert!(!err.message().contains("pw@"), "{}", err.message());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    let err = Store::open(Some("postgres://u@127.0.0.1:1/x?sslrootcert=/ca.pem"), dir.path()).await.unwrap_err();
    assert_eq!(err.code(), "DATABASE_URL_INVALID");
    assert!(err.message().contains("sslmode=require"), "{}", err.message());
    let err = Store::open(Some("postgres://u@127.0.0.1:1/x?sslmode=require&sslrootcert=/no/such/ca.pem"), dir.path())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "DATABASE_URL_INVALID");
    assert!(err.message().contains("'/no/such/ca.pem'"), "{}", err.message());

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = Store::open(None, &file.join("under-a-file")).await.unwrap_err();
    assert_eq!(err.code(), "DATABASE_UNAVAILABLE", "{}", err.message());
}

#[tokio::test]
async fn tls_when_asked() {
    let Some(base) = common::pg_base_url() else { return };
    let ca = match std::env::var("MARINA_TEST_PG_CA") {
        Ok(c) if !c.is_empty() => c,
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
            panic!("CI is set but MARINA_TEST_PG_CA is not (.ci/postgres.sh sets it)")
        }
        _ => {
            eprintln!("skip: MARINA_TEST_PG_CA is unset; the TLS case is skipped");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let ssl_in_use = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    let store = Store::open(Some(&format!("{base}{sep}sslmode=require&sslrootcert={ca}")), dir.path()).await.unwrap();
    let row = store.query_opt(ssl_in_use, &[]).await.unwrap().unwrap();
    assert!(row.get::<bool>("ssl").unwrap(), "sslmode=require must encrypt");

    // The test CA is not a system root: the chain does not verify, and that is an error,
    // never a silent fall-back to plain text.
    let err = Store::open(Some(&format!("{base}{sep}sslmode=require")), dir.path()).await.unwrap_err();
    assert_eq!(err.code(), "DATABASE_UNAVAILABLE");
    assert!(err.message().to_lowercase().contains("certificate"), "{}", err.message());

    // The default (`prefer`) stays plain.
    let plain = Store::open(Some(&base), dir.path()).await.unwrap();
    let row = plain.query_opt(ssl_in_use, &[]).await.unwrap().unwrap();
    assert!(!row.get::<bool>("ssl").unwrap());
}

#[tokio::test]
async fn a_changed_table_does_not_break_cached_statements() {
    for db in test_dbs().await {
        let store = db.store().await;
        store.execute("CREATE TABLE w (a BIGINT)", &[]).await.unwrap();
        store.execute("INSERT INTO w (a) VALUES (1)", &[]).await.unwrap();
        assert_eq!(store.query("SELECT * FROM w", &[]).await.unwrap()[0].columns(), ["a"]);
        // Another connection (here: another store on the same database) changes the table.
        let other = db.store().await;
        other.execute("ALTER TABLE w ADD COLUMN b TEXT", &[]).await.unwrap();
        for _ in 0..3 {
            let rows = store.query("SELECT * FROM w", &[]).await.unwrap();
            assert_eq!(rows[0].columns(), ["a", "b"], "{:?}", db.kind);
        }
    }
}
