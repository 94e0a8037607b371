//! `marina db` end to end: the built binary, real files, SQLite and (when
//! `MARINA_TEST_DATABASE_URL` is set, always under `CI`) a real PostgreSQL server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use marina_store::Store;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed on drop (the cli crate has no tempfile dependency).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "marina-db-cli-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test database: `url` is `None` for the SQLite default under `{dir}/state`.
struct Db {
    url: Option<String>,
    dir: Scratch,
}

impl Db {
    fn label(&self) -> &'static str {
        if self.url.is_some() { "postgres" } else { "sqlite" }
    }

    fn state(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    fn app_dir(&self) -> PathBuf {
        self.dir.0.join("apps/todo")
    }

    fn migrations(&self) -> PathBuf {
        self.app_dir().join("migrations")
    }

    fn marina(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_marina"));
        cmd.arg("db")
            .args(args)
            .current_dir(&self.dir.0)
            .env_remove("DATABASE_URL")
            .env("RUNTIME_STATE_DIR", self.state())
            .env("RUNTIME_WORKER_DIRS", self.dir.0.join("apps"));
        if let Some(u) = &self.url {
            cmd.env("DATABASE_URL", u);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.marina(args).output().expect("run marina");
        eprintln!(
            "[{}] marina db {}\n--- exit {:?}\n{}{}",
            self.label(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::create_dir_all(self.migrations()).unwrap();
        std::fs::write(self.migrations().join(name), text).unwrap();
    }

    async fn app_store(&self) -> Store {
        Store::open_app(self.url.as_deref(), &self.state(), "todo").await.unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn dbs() -> Vec<Db> {
    let mut out = vec![Db { url: None, dir: Scratch::new() }];
    match std::env::var("MARINA_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let name = format!("cli_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
            let server = Store::open(Some(&base), Path::new(".")).await.expect("reach the test server");
            server.execute(&format!("CREATE DATABASE {name}"), &[]).await.unwrap();
            let (url, query) =
                base.split_once('?').map_or((base.as_str(), String::new()), |(u, q)| (u, format!("?{q}")));
            let host_end = url.rfind('/').filter(|&i| i > url.find("://").unwrap() + 2).unwrap_or(url.len());
            out.push(Db { url: Some(format!("{}/{name}{query}", &url[..host_end])), dir: Scratch::new() });
        }
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
            panic!("CI is set but MARINA_TEST_DATABASE_URL is not: CI must test PostgreSQL (source .ci/postgres.sh)")
        }
        _ => eprintln!("skip: MARINA_TEST_DATABASE_URL is unset; PostgreSQL cases skipped"),
    }
    for db in &out {
        std::fs::create_dir_all(db.app_dir()).unwrap();
        std::fs::write(db.app_dir().join("index.html"), "<h1>todo</h1>").unwrap();
    }
    out
}

#[tokio::test]
async fn every_command() {
    for db in dbs().await {
        // marina's own database.
        let o = db.run(&["migrate"]);
        assert!(o.status.success());
        assert!(stdout(&o).contains("applied      0001_marina_meta"), "{}", stdout(&o));
        assert!(stdout(&o).contains("applied      0011_keyval"), "{}", stdout(&o));
        let o = db.run(&["status"]);
        // marina's own set grows as features add tables; count it rather than hard-code it.
        let system = marina_store::MigrationSet::system().unwrap().migrations().len();
        let summary = format!("{system} applied, 0 pending");
        assert!(o.status.success() && stdout(&o).contains(&summary), "{}", stdout(&o));

        // An app's: `new` writes the pair, then real SQL goes in.
        let o = db.run(&["new", "create_items", "--app", "todo"]);
        assert!(o.status.success());
        assert!(db.migrations().join("0001_create_items.up.sql").exists());
        assert!(db.migrations().join("0001_create_items.down.sql").exists());
        db.write("0001_create_items.up.sql", "CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT NOT NULL);\n");
        db.write("0001_create_items.down.sql", "DROP TABLE items;\n");
        let app_dir = db.app_dir();
        let o = db.run(&["new", "add_done", "--app-dir", app_dir.to_str().unwrap()]);
        assert!(o.status.success());
        db.write("0002_add_done.up.sql", "ALTER TABLE items ADD COLUMN done BOOLEAN NOT NULL DEFAULT false;\n");
        db.write("0002_add_done.down.sql", "ALTER TABLE items DROP COLUMN done;\n");
        db.write("0003_tags.up.sql", "CREATE TABLE tags (name TEXT PRIMARY KEY);\n");
        db.write("0003_tags.down.sql", "DROP TABLE tags;\n");

        let o = db.run(&["migrate", "--app", "todo", "--dry-run"]);
        assert!(o.status.success());
        assert!(stdout(&o).contains("would apply  0003_tags"), "{}", stdout(&o));
        let o = db.run(&["status", "--app", "todo", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(json["counts"]["pending"], 3, "a dry run changes nothing");

        let o = db.run(&["migrate", "--app", "todo", "--to", "2"]);
        assert!(o.status.success());
        assert!(stdout(&o).contains("2 migrations applied in"), "{}", stdout(&o));
        let o = db.run(&["migrate", "--app", "todo"]);
        assert!(stdout(&o).contains("1 migration applied in"), "{}", stdout(&o));
        let o = db.run(&["migrate", "--app", "todo"]);
        assert!(stdout(&o).contains("nothing to apply"), "{}", stdout(&o));

        let o = db.run(&["status", "--app", "todo", "--json"]);
        assert!(o.status.success());
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(json["counts"]["applied"], 3);
        assert!(json["entries"][0]["duration_ms"].is_i64());
        assert!(json["entries"][0]["applied_at"].as_str().unwrap().ends_with('Z'));

        let o = db.run(&["rollback", "--app", "todo"]);
        assert!(o.status.success());
        assert!(
            stdout(&o).contains("rolled back  0003_tags") && stdout(&o).contains("1 migration rolled back"),
            "{}",
            stdout(&o)
        );
        let o = db.run(&["rollback", "--app", "todo", "--steps", "2"]);
        assert!(stdout(&o).contains("2 migrations rolled back"), "{}", stdout(&o));
        let o = db.run(&["migrate", "--app", "todo"]);
        assert!(o.status.success());
        let o = db.run(&["rollback", "--app", "todo", "--to", "1"]);
        assert!(stdout(&o).contains("2 migrations rolled back"), "{}", stdout(&o));

        let store = db.app_store().await;
        store.execute("INSERT INTO items (id, title) VALUES (1, 'milk')", &[]).await.unwrap();
        let o = db.run(&["reset", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
        assert_eq!(store.query("SELECT id FROM items", &[]).await.unwrap().len(), 1, "refused reset keeps data");
        let o = db.run(&["reset", "--app", "todo", "--yes"]);
        assert!(o.status.success());
        assert!(stdout(&o).contains("3 migrations applied"), "{}", stdout(&o));
        drop(store);
        let store = db.app_store().await;
        assert!(store.query("SELECT id FROM items", &[]).await.unwrap().is_empty());

        // The app's tables are not in marina's own database.
        let system = Store::open(db.url.as_deref(), &db.state()).await.unwrap();
        assert!(system.query("SELECT * FROM items", &[]).await.is_err());
    }
}

#[tokio::test]
async fn a_failing_migration_exits_1_and_changes_nothing() {
    for db in dbs().await {
        db.write("0001_items.up.sql", "CREATE TABLE items (id BIGINT PRIMARY KEY);\n");
        db.write(
            "0002_broken.up.sql",
            "CREATE TABLE half (x BIGINT);\nINSERT INTO items (id) VALUES (1);\nSELEC oops;\n",
        );
        let o = db.run(&["migrate", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(1), "[{}]", db.label());
        assert!(stdout(&o).contains("FAILED       0002_broken"), "{}", stdout(&o));
        assert!(stderr(&o).contains("exactly as before '0002_broken.up.sql'"), "{}", stderr(&o));
        let store = db.app_store().await;
        assert!(store.query("SELECT * FROM half", &[]).await.is_err(), "[{}] 0002's table was rolled back", db.label());
        assert!(store.query("SELECT * FROM items", &[]).await.unwrap().is_empty());
        let o = db.run(&["status", "--app", "todo"]);
        assert!(stdout(&o).contains("1 applied, 1 pending"), "{}", stdout(&o));
    }
}

#[tokio::test]
async fn a_tampered_migration_is_detected() {
    for db in dbs().await {
        db.write("0001_items.up.sql", "CREATE TABLE items (id BIGINT PRIMARY KEY);\n");
        assert!(db.run(&["migrate", "--app", "todo"]).status.success());
        db.write("0001_items.up.sql", "CREATE TABLE items (id BIGINT PRIMARY KEY, evil TEXT);\n");
        db.write("0002_more.up.sql", "CREATE TABLE more (x BIGINT);\n");
        let o = db.run(&["migrate", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("'0001_items.up.sql'") && stderr(&o).contains("changed after it was applied"),
            "{}",
            stderr(&o)
        );
        let o = db.run(&["status", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stdout(&o).contains("CHANGED"), "{}", stdout(&o));
        assert!(db.app_store().await.query("SELECT * FROM more", &[]).await.is_err(), "nothing ran after the mismatch");
    }
}

#[tokio::test]
async fn two_concurrent_migrate_processes_apply_each_migration_once() {
    for db in dbs().await {
        let slow = if db.url.is_some() {
            "SELECT pg_sleep(0.4);\nINSERT INTO runs (id) VALUES (2);\n"
        } else {
            "CREATE TABLE burn AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000) SELECT count(*) AS n FROM c;\nINSERT INTO runs (id) VALUES (2);\n"
        };
        db.write("0001_runs.up.sql", "CREATE TABLE runs (id BIGINT NOT NULL);\nINSERT INTO runs (id) VALUES (1);\n");
        db.write("0002_slow.up.sql", slow);
        db.write("0003_more.up.sql", "INSERT INTO runs (id) VALUES (3);\n");
        // Create the app database first so both processes race on migrating, not on opening.
        drop(db.app_store().await);
        let children: Vec<_> = (0..2)
            .map(|_| {
                db.marina(&["migrate", "--app", "todo"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        for o in &outs {
            assert!(o.status.success(), "[{}] {}{}", db.label(), stdout(o), stderr(o));
        }
        let applied: usize =
            outs.iter().map(|o| stdout(o).lines().filter(|l| l.trim_start().starts_with("applied ")).count()).sum();
        assert_eq!(applied, 3, "[{}] {} / {}", db.label(), stdout(&outs[0]), stdout(&outs[1]));
        let ids: Vec<i64> = db
            .app_store()
            .await
            .query("SELECT id FROM runs ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0).unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}

#[tokio::test]
async fn sigkill_during_migrate_then_the_next_run_completes() {
    for db in dbs().await {
        let slow = if db.url.is_some() {
            "CREATE TABLE half (x BIGINT);\nSELECT pg_sleep(30);\n"
        } else {
            "CREATE TABLE half (x BIGINT);\nCREATE TABLE burn AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000000) SELECT count(*) AS n FROM c;\n"
        };
        db.write("0001_first.up.sql", "CREATE TABLE first (x BIGINT);\n");
        db.write("0002_slow.up.sql", slow);
        let mut child =
            db.marina(&["migrate", "--app", "todo"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // 0001 committed: the child is now inside 0002's transaction.
            if let Ok(store) = Store::open_app(db.url.as_deref(), &db.state(), "todo").await
                && store.query("SELECT id FROM _marina_migrations WHERE id = 1", &[]).await.is_ok_and(|r| !r.is_empty())
            {
                break;
            }
            assert!(Instant::now() < deadline, "[{}] the child never applied 0001", db.label());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        child.kill().unwrap();
        child.wait().unwrap();

        let o = db.run(&["status", "--app", "todo"]);
        assert!(stdout(&o).contains("1 applied, 1 pending"), "[{}] {}", db.label(), stdout(&o));
        assert!(db.app_store().await.query("SELECT * FROM half", &[]).await.is_err());
        db.write("0002_slow.up.sql", "CREATE TABLE half (x BIGINT);\n");
        let started = Instant::now();
        let o = db.run(&["migrate", "--app", "todo"]);
        assert!(o.status.success());
        assert!(stdout(&o).contains("1 migration applied"), "{}", stdout(&o));
        assert!(started.elapsed() < Duration::from_secs(10), "the dead process's lock was released");
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    for db in dbs().await {
        // A malformed name.
        db.write("add_users.up.sql", "SELECT 1;");
        let o = db.run(&["migrate", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("'add_users.up.sql'") && stderr(&o).contains("NNNN_description.up.sql"),
            "{}",
            stderr(&o)
        );
        std::fs::remove_file(db.migrations().join("add_users.up.sql")).unwrap();

        // A duplicate id.
        db.write("0001_a.up.sql", "CREATE TABLE a (x BIGINT);");
        db.write("1_b.up.sql", "CREATE TABLE b (x BIGINT);");
        let o = db.run(&["migrate", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("migration id 1 is used twice"), "{}", stderr(&o));
        std::fs::remove_file(db.migrations().join("1_b.up.sql")).unwrap();

        // A missing down file.
        assert!(db.run(&["migrate", "--app", "todo"]).status.success());
        let o = db.run(&["rollback", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("no '0001_a.down.sql'"), "{}", stderr(&o));

        // An unknown app, a bad --to, and reset without --yes.
        let o = db.run(&["status", "--app", "nope"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("no app 'nope'"), "{}", stderr(&o));
        let o = db.run(&["migrate", "--app", "todo", "--to", "42"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("--to 42"), "{}", stderr(&o));
        let o = db.run(&["new", "bad name", "--app", "todo"]);
        assert_eq!(o.status.code(), Some(2));
    }
    // An unreachable database (nothing listens on loopback port 1).
    let db = Db { url: Some("postgres://marina:secret@127.0.0.1:1/marina".into()), dir: Scratch::new() };
    let o = db.run(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot connect to PostgreSQL at 'postgres://marina:***@127.0.0.1:1/marina'"),
        "{}",
        stderr(&o)
    );
    let o = db.marina(&["status"]).env("DATABASE_URL", "mysql://x").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid DATABASE_URL 'mysql://x'"), "{}", stderr(&o));
}
