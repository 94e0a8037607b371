//! App migrations applied before an app's first worker starts (issue 8, item 5), with real
//! Python workers reading their SQLite database through `APP_DATABASE_PATH`: the bundled `todo`
//! example works on its first request; a failing migration answers 503 for its app only;
//! `autoMigrate: false` opts out; a fixed migration is retried after the change, and one added
//! to an app whose migrations ran is applied.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps").join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_before_the_first_worker_and_a_failure_stays_with_its_app() {
    let apps = tempfile::tempdir().unwrap();
    copy_dir(&example("todo"), &apps.path().join("todo"));
    // The same app with a second migration that fails, and one that opts out.
    copy_dir(&example("todo"), &apps.path().join("broken"));
    std::fs::write(apps.path().join("broken/migrations/0002_oops.up.sql"), "ALTER TABLE nope ADD COLUMN x TEXT;\n")
        .unwrap();
    copy_dir(&example("todo"), &apps.path().join("manual"));
    let manifest = std::fs::read_to_string(apps.path().join("manual/manifest.yaml")).unwrap();
    std::fs::write(apps.path().join("manual/manifest.yaml"), format!("{manifest}autoMigrate: false\n")).unwrap();
    // One whose migrations dir appears only later (kept aside as `later/` for now).
    copy_dir(&example("todo"), &apps.path().join("late"));
    std::fs::rename(apps.path().join("late/migrations"), apps.path().join("late/later")).unwrap();
    let srv = common::start(apps.path(), |_| {}).await;

    // The first request applies the migrations, then the worker reads the table they made.
    let (status, body) = get(&format!("{}/todo/", srv.base)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["title"], "try marina");

    // A failing migration: 503 for that app, nothing started, and the reason in /api/apps.
    let (status, body) = get(&format!("{}/broken/", srv.base)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "APP_MIGRATION_FAILED");
    assert_eq!(body["data"]["migration"], "0002_oops");
    assert!(body["data"]["error"].as_str().unwrap().contains("nope"), "{body}");
    let workers: Value = reqwest::get(format!("{}/api/workers", srv.base)).await.unwrap().json().await.unwrap();
    assert!(!workers["workers"].as_array().unwrap().iter().any(|w| w["app"] == "broken"), "{workers}");
    let (_, list) = get(&format!("{}/api/apps", srv.base)).await;
    let broken = list.as_array().unwrap().iter().find(|a| a["name"] == "broken").unwrap().clone();
    assert_eq!(broken["states"][0]["migrationError"]["data"]["migration"], "0002_oops", "{broken}");
    // ... and only that app: the others keep working.
    assert_eq!(get(&format!("{}/todo/", srv.base)).await.0, 200);

    // Opted out: the worker starts, and finds no table (the app says so with its own 503).
    let (status, body) = get(&format!("{}/manual/", srv.base)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no such table"), "{body}");

    // No migrations dir: the worker finds no table. Once the dir appears, its migrations run.
    let (status, body) = get(&format!("{}/late/", srv.base)).await;
    assert_eq!(status, 503, "{body}");
    std::fs::rename(apps.path().join("late/later"), apps.path().join("late/migrations")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(&format!("{}/late/", srv.base)).await;
        if status == 200 {
            assert_eq!(body[0]["title"], "try marina");
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Fixing the migration file retries it.
    std::fs::write(apps.path().join("broken/migrations/0002_oops.up.sql"), "ALTER TABLE todos ADD COLUMN x TEXT;\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(&format!("{}/broken/", srv.base)).await;
        if status == 200 {
            assert_eq!(body[0]["title"], "try marina");
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A migration added to an app whose migrations already ran (its requests since skip the
    // bookkeeping: the app is marked) is applied once the change is seen.
    std::fs::write(
        apps.path().join("todo/migrations/0002_more.up.sql"),
        "INSERT INTO todos (title) VALUES ('added later');\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(&format!("{}/todo/", srv.base)).await;
        if status == 200 && body.as_array().map(Vec::len) == Some(2) {
            assert_eq!(body[1]["title"], "added later");
            break;
        }
        assert!(Instant::now() < deadline, "the new migration was not applied: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}
