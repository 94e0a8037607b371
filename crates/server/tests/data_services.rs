//! The keyval and database services through the whole server over real HTTP, driven by a real
//! Node app that uses the unmodified `@libsql/client` from npm with its own worker token:
//! both stores from an app, transactions, batches and errors through libSQL's client, per-app
//! isolation, admin keys, watch over SSE, and bad input. Both services are plugins loaded from
//! the bundled manifests (`examples/plugins/{keyval,database}`); on PostgreSQL each app's SQL
//! runs as its own login role.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::Running;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// `@libsql/client` installed once from npm into the target's test dir.
fn libsql_node_modules() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("npm-libsql");
        if !dir.join("node_modules/@libsql/client/package.json").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("package.json"), r#"{"private":true}"#).unwrap();
            let out = std::process::Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "@libsql/client@0.18.0"])
                .current_dir(&dir)
                .output()
                .expect("npm runs");
            assert!(out.status.success(), "npm install failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        dir.join("node_modules")
    })
    .clone()
}

fn app(worker_dir: &Path, name: &str) {
    let dir = worker_dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/data-app/index.mjs");
    std::fs::copy(src, dir.join("index.mjs")).unwrap();
    std::fs::write(dir.join("manifest.yaml"), "entrypoint: index.mjs\nttl: 60s\ntimeout: 60s\n").unwrap();
    // A copy, not a symlink: a confined worker may read only its own app dir (docs/security.md).
    copy_tree(&libsql_node_modules(), &dir.join("node_modules"));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

struct Srv {
    run: Running,
    base: String,
    _apps: tempfile::TempDir,
}

/// marina with the bundled plugins, serving copies of the data app as `names`; `tweak` adds
/// settings.
async fn start_apps(names: &[&str], tweak: impl FnOnce(&mut marina_server::RawConfig)) -> Srv {
    let apps = tempfile::tempdir().unwrap();
    // Workers run as another user when marina is root: they must be able to enter it.
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for name in names {
        app(apps.path(), name);
    }
    let run = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_JS", "node").set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
        tweak(raw);
    })
    .await;
    Srv { base: run.base.clone(), run, _apps: apps }
}

async fn start() -> Srv {
    start_apps(&["alpha", "beta"], |_| {}).await
}

impl Srv {
    async fn stop(self) {
        self.run.stop().await;
    }

    /// An admin API key, created in marina's own database the way `marina keys create` does.
    async fn admin_key(&self) -> String {
        admin_key_in(marina_store::Store::open(None, &self.run.state_dir).await.unwrap()).await
    }
}

async fn admin_key_in(store: marina_store::Store) -> String {
    // As `marina keys create` does: a marina.db the server just created may still be being
    // migrated on its task (the migration lock makes this wait for it).
    store.migrate_system().await.unwrap();
    let keys = marina_auth::keys::KeyStore::new(store);
    let new =
        marina_auth::keys::NewKey { name: Some("test admin".into()), role: Some("admin".into()), ..Default::default() };
    keys.create(new, None).await.unwrap().key
}

async fn send(c: &reqwest::Client, method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let mut r = c.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_use_both_stores_with_their_own_tokens_and_nothing_else() {
    let srv = start().await;
    let c = reqwest::Client::new();
    let b = &srv.base;

    // The app: keyval over fetch and @libsql/client over Hrana, with its worker's token.
    let (status, r) = send(&c, "GET", &format!("{b}/alpha/selftest"), None, None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["put"]["status"], 200, "{r}");
    assert_eq!(r["get"]["body"]["value"], json!({"dark": true}), "{r}");
    assert_eq!(r["get"]["body"]["key"], json!(["prefs", "theme"]));
    assert_eq!(r["sum"]["body"]["ok"], true);
    assert_eq!(r["insertRowid"], "1");
    assert_eq!(r["named"], "a");
    assert!(r["batchError"].as_str().unwrap().starts_with("SQLITE_CONSTRAINT"), "{r}");
    assert_eq!(r["sqlError"], "SQLITE_ERROR", "{r}");
    assert_eq!(r["rows"], json!([["a", "9007199254740993"], ["b2", "6"], ["t1", "1"]]), "{r}");
    assert_eq!(r["marinaTables"], "SQLITE_ERROR", "marina's tables are not in the app's database: {r}");

    // Isolation: beta's token sees neither alpha's keys nor alpha's tables.
    let (_, ta) = send(&c, "GET", &format!("{b}/alpha/token"), None, None).await;
    let (_, tb) = send(&c, "GET", &format!("{b}/beta/token"), None, None).await;
    let (ta, tb) = (ta.as_str().unwrap().to_string(), tb.as_str().unwrap().to_string());
    assert!(ta.starts_with("mwt_") && ta != tb);
    assert_eq!(send(&c, "GET", &format!("{b}/keyval/api/keys/prefs/theme"), Some(&ta), None).await.0, 200);
    let (status, e) = send(&c, "GET", &format!("{b}/keyval/api/keys/prefs/theme"), Some(&tb), None).await;
    assert_eq!((status, e["code"].as_str()), (404, Some("KEY_NOT_FOUND")));
    let pipeline =
        json!({"requests": [{"type": "execute", "stmt": {"sql": "SELECT COUNT(*) FROM items"}}, {"type": "close"}]})
            .to_string();
    let (status, r) = send(&c, "POST", &format!("{b}/database/api/v2/pipeline"), Some(&tb), Some(&pipeline)).await;
    assert_eq!(status, 200);
    assert!(r["results"][0]["error"]["message"].as_str().unwrap().contains("no such table"), "{r}");
    let (_, r) = send(&c, "POST", &format!("{b}/database/api/v3/pipeline"), Some(&ta), Some(&pipeline)).await;
    assert_eq!(r["results"][0]["response"]["result"]["rows"][0][0]["value"], "3", "{r}");
    // An admin route with an app token, no token, a made-up token.
    let q = r#"{"sql": "select 1"}"#;
    assert_eq!(send(&c, "POST", &format!("{b}/database/api/query"), Some(&ta), Some(q)).await.0, 403);
    assert_eq!(send(&c, "POST", &format!("{b}/database/api/query"), None, Some(q)).await.0, 401);
    assert_eq!(send(&c, "POST", &format!("{b}/database/api/query"), Some("mwt_forged"), Some(q)).await.0, 401);
    assert_eq!(send(&c, "GET", &format!("{b}/keyval/api/keys/prefs/theme"), None, None).await.0, 401);
    // Clients that probe for protobuf fall back to JSON.
    assert_eq!(send(&c, "GET", &format!("{b}/database/api/v3-protobuf"), None, None).await.0, 404);
    assert_eq!(send(&c, "GET", &format!("{b}/database/api/v3"), None, None).await.0, 200);

    // An admin key sees everything.
    let admin = srv.admin_key().await;
    let (status, r) = send(
        &c,
        "POST",
        &format!("{b}/database/api/query"),
        Some(&admin),
        Some(r#"{"sql": "select count(*) as c from items", "tenant": "alpha"}"#),
    )
    .await;
    assert_eq!((status, r["rows"].clone(), r["rowCount"].clone()), (200, json!([{"c": 3}]), json!(1)), "{r}");
    let (status, r) = send(
        &c,
        "POST",
        &format!("{b}/database/api/query"),
        Some(&admin),
        Some(r#"{"sql": "selec nonsense", "tenant": "alpha"}"#),
    )
    .await;
    assert_eq!((status, r["code"].as_str()), (400, Some("SQL_ERROR")), "{r}");
    let (_, r) = send(&c, "GET", &format!("{b}/database/api/tables?tenant=alpha"), Some(&admin), None).await;
    assert_eq!(r["tables"], json!([{"name": "items", "type": "table"}]), "{r}");
    let (_, r) =
        send(&c, "GET", &format!("{b}/database/api/tables/items/schema?tenant=alpha"), Some(&admin), None).await;
    assert_eq!(r["columns"][0], json!({"name": "id", "type": "INTEGER", "nullable": true, "pk": true}), "{r}");
    let (_, r) =
        send(&c, "GET", &format!("{b}/database/api/tables/items/rows?tenant=alpha&limit=1"), Some(&admin), None).await;
    assert_eq!((r["total"].clone(), r["rows"].as_array().unwrap().len()), (json!(3), 1), "{r}");
    assert_eq!(
        send(&c, "GET", &format!("{b}/database/api/tables/nope/rows?tenant=alpha"), Some(&admin), None).await.0,
        404
    );
    let (_, r) = send(&c, "GET", &format!("{b}/database/api/tenants"), Some(&admin), None).await;
    assert!(r["tenants"].as_array().unwrap().contains(&json!("alpha")), "{r}");
    let (status, r) =
        send(&c, "GET", &format!("{b}/keyval/api/keys/hits?namespace=app:alpha"), Some(&admin), None).await;
    assert_eq!((status, r["value"].clone()), (200, json!(2)), "{r}");
    let (_, r) = send(&c, "GET", &format!("{b}/database/api/health"), None, None).await;
    assert_eq!(r["status"], "healthy");

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_over_sse_and_bad_input() {
    let srv = start().await;
    let c = reqwest::Client::new();
    let b = &srv.base;
    let (_, t) = send(&c, "GET", &format!("{b}/alpha/token"), None, None).await;
    let t = t.as_str().unwrap().to_string();

    // Bad input: a clear 4xx each, and the stored value is untouched.
    assert_eq!(send(&c, "PUT", &format!("{b}/keyval/api/keys/doc"), Some(&t), Some(r#"{"v": 1}"#)).await.0, 200);
    let (status, e) = send(&c, "PUT", &format!("{b}/keyval/api/keys/doc"), Some(&t), Some("{bad json")).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("JSON_INVALID")), "{e}");
    let big = serde_json::to_string(&"x".repeat(1024 * 1024 + 10)).unwrap();
    let (status, e) = send(&c, "PUT", &format!("{b}/keyval/api/keys/doc"), Some(&t), Some(&big)).await;
    assert_eq!((status, e["code"].as_str()), (413, Some("KV_VALUE_TOO_LARGE")), "{e}");
    assert_eq!(e["data"]["limit"], "maxValueSize");
    let deep = (0..21).map(|i| i.to_string()).collect::<Vec<_>>().join("/");
    let (status, e) = send(&c, "PUT", &format!("{b}/keyval/api/keys/{deep}"), Some(&t), Some("1")).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("KV_KEY_TOO_LARGE")), "{e}");
    let (status, e) = send(
        &c,
        "POST",
        &format!("{b}/keyval/api/atomic"),
        Some(&t),
        Some(r#"{"mutations": [{"type": "sum", "key": ["doc"], "value": 1}]}"#),
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (409, Some("KV_TYPE_MISMATCH")), "{e}");
    let (status, e) = send(
        &c,
        "POST",
        &format!("{b}/database/api/v2/pipeline"),
        Some(&t),
        Some(r#"{"requests": [{"type": "nope"}]}"#),
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (400, Some("HRANA_PROTO")), "{e}");
    let (_, v) = send(&c, "GET", &format!("{b}/keyval/api/keys/doc"), Some(&t), None).await;
    assert_eq!(v["value"], json!({"v": 1}), "nothing lost");

    // Watch: a change arrives as an SSE event, pushed (not polled).
    let resp = c.get(format!("{b}/keyval/api/watch?keys=w/1&initial=false")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    send(&c, "PUT", &format!("{b}/keyval/api/keys/w/1"), Some(&t), Some(r#""hello""#)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains("event: change") {
        let chunk =
            tokio::time::timeout_at(deadline.into(), stream.next()).await.expect("an event in time").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(r#""value":"hello""#), "{seen}");
    drop(stream);

    // The token dies with its worker.
    srv.run.runtime.pool.shutdown(Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = send(&c, "GET", &format!("{b}/keyval/api/keys/doc"), Some(&t), None).await;
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the stopped worker's token still works ({status})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notes_example_uses_both_stores() {
    let apps = tempfile::tempdir().unwrap();
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = apps.path().join("notes");
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps/notes");
    for f in ["index.mjs", "manifest.yaml"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let run = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_JS", "node").set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
    })
    .await;
    let b = run.base.clone();
    let c = reqwest::Client::new();
    for text in ["first", "second"] {
        let (status, r) =
            send(&c, "POST", &format!("{b}/notes"), None, Some(&json!({ "text": text }).to_string())).await;
        assert_eq!(status, 201, "{r}");
    }
    let (status, r) = send(&c, "GET", &format!("{b}/notes"), None, None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r, json!({"notes": [{"id": 1, "text": "first"}, {"id": 2, "text": "second"}], "created": 2}));
    assert_eq!(send(&c, "POST", &format!("{b}/notes"), None, Some("{}")).await.0, 400);
    run.stop().await;
}

/// Two marina instances on one PostgreSQL database: a watch on one sees a write made through
/// the other (LISTEN/NOTIFY), over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_across_two_instances_on_postgres() {
    let Some(url) = std::env::var("MARINA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        assert!(std::env::var("CI").is_err(), "CI must test PostgreSQL (MARINA_TEST_DATABASE_URL)");
        eprintln!("skip: MARINA_TEST_DATABASE_URL is unset");
        return;
    };
    let apps = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            common::start(apps.path(), |raw| {
                raw.set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins()).set("DATABASE_URL", url.clone());
            })
            .await,
        );
    }
    let store = marina_store::Store::open(Some(&url), Path::new("/")).await.unwrap();
    let keys = marina_auth::keys::KeyStore::new(store);
    let new =
        marina_auth::keys::NewKey { name: Some("pg admin".into()), role: Some("admin".into()), ..Default::default() };
    let admin = keys.create(new, None).await.unwrap().key;
    let ns = format!("pgwatch{}", std::process::id());
    let c = reqwest::Client::new();
    let (a, b) = (&servers[0].base, &servers[1].base);
    let resp = c
        .get(format!("{a}/keyval/api/watch?keys=k/1&initial=false&namespace={ns}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let (status, r) =
        send(&c, "PUT", &format!("{b}/keyval/api/keys/k/1?namespace={ns}"), Some(&admin), Some(r#""from b""#)).await;
    assert_eq!(status, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains("event: change") {
        let chunk =
            tokio::time::timeout_at(deadline.into(), stream.next()).await.expect("an event in time").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(r#""value":"from b""#), "{seen}");
    drop(stream);
    for s in servers {
        s.stop().await;
    }
}

fn plugin_dir(keyval: &str, database: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, manifest) in [("keyval", keyval), ("database", database)] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("manifest.yaml"), manifest).unwrap();
    }
    dir
}

/// The data services are plugins from manifests: a disabled one answers nothing (404), its
/// options set the engine's limits, and a bad option keeps it from loading (the log names it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_follow_their_manifests() {
    let c = reqwest::Client::new();
    let apps = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(
        "name: \"@buntime/plugin-keyval\"\nbase: /keyval\nenabled: false\n",
        "name: \"@buntime/plugin-database\"\nbase: /database\n",
    );
    let run = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_PLUGIN_DIRS", plugins.path().display().to_string());
    })
    .await;
    let admin = admin_key_in(marina_store::Store::open(None, &run.state_dir).await.unwrap()).await;
    let b = &run.base;
    let (status, r) = send(&c, "GET", &format!("{b}/keyval/api/keys/a"), Some(&admin), None).await;
    assert_eq!(status, 404, "a disabled keyval answers nothing: {r}");
    let (status, r) = send(&c, "GET", &format!("{b}/database/api/tenants"), Some(&admin), None).await;
    assert_eq!(status, 200, "{r}");
    let (_, loaded) = send(&c, "GET", &format!("{b}/api/plugins/loaded"), Some(&admin), None).await;
    let names: Vec<&str> = loaded.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"@buntime/plugin-database") && !names.contains(&"@buntime/plugin-keyval"), "{loaded}");
    run.stop().await;

    // Limits from the manifest; the database plugin disabled this time.
    let plugins = plugin_dir(
        "name: \"@buntime/plugin-keyval\"\nbase: /keyval\nmaxValueSize: 16\nmaxKeyDepth: 2\nmaxBatchSize: 2\n",
        "name: \"@buntime/plugin-database\"\nbase: /database\nenabled: false\n",
    );
    let run = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_PLUGIN_DIRS", plugins.path().display().to_string());
    })
    .await;
    let admin = admin_key_in(marina_store::Store::open(None, &run.state_dir).await.unwrap()).await;
    let b = &run.base;
    assert_eq!(send(&c, "PUT", &format!("{b}/keyval/api/keys/a"), Some(&admin), Some("\"0123456789\"")).await.0, 200);
    let (status, e) =
        send(&c, "PUT", &format!("{b}/keyval/api/keys/a"), Some(&admin), Some("\"0123456789abcdefg\"")).await;
    assert_eq!(
        (status, e["code"].as_str(), e["data"]["limit"].as_str()),
        (413, Some("KV_VALUE_TOO_LARGE"), Some("maxValueSize")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("16"), "{e}");
    let (status, e) = send(&c, "PUT", &format!("{b}/keyval/api/keys/a/b/c"), Some(&admin), Some("1")).await;
    assert_eq!((status, e["data"]["limit"].as_str()), (400, Some("maxKeyDepth")), "{e}");
    let (status, e) = send(
        &c,
        "POST",
        &format!("{b}/keyval/api/keys/batch"),
        Some(&admin),
        Some(r#"{"keys": [["a"], ["b"], ["c"]]}"#),
    )
    .await;
    assert_eq!((status, e["data"]["limit"].as_str()), (400, Some("maxBatchSize")), "{e}");
    assert_eq!(send(&c, "GET", &format!("{b}/database/api/tenants"), Some(&admin), None).await.0, 404);
    // Outside `/api` under the base there is nothing (Buntime's UI is not served).
    assert_eq!(send(&c, "GET", &format!("{b}/keyval/"), Some(&admin), None).await.0, 404);
    run.stop().await;

    // A bad option: the plugin does not load, nothing else is affected.
    let plugins = plugin_dir(
        "name: \"@buntime/plugin-keyval\"\nbase: /keyval\nmaxValueSize: lots\n",
        "name: \"@buntime/plugin-database\"\nbase: /database\n",
    );
    let run = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_PLUGIN_DIRS", plugins.path().display().to_string());
    })
    .await;
    let admin = admin_key_in(marina_store::Store::open(None, &run.state_dir).await.unwrap()).await;
    let b = &run.base;
    assert_eq!(send(&c, "GET", &format!("{b}/keyval/api/keys/a"), Some(&admin), None).await.0, 404);
    assert_eq!(send(&c, "GET", &format!("{b}/database/api/tenants"), Some(&admin), None).await.0, 200);
    run.stop().await;
}

/// `/metrics` (JSON and Prometheus), the poll variants of watch, indexes and search, over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyval_metrics_polls_and_search() {
    let c = reqwest::Client::new();
    let apps = tempfile::tempdir().unwrap();
    let run = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
    })
    .await;
    let admin = admin_key_in(marina_store::Store::open(None, &run.state_dir).await.unwrap()).await;
    let k = format!("{}/keyval/api", run.base);
    let a = Some(admin.as_str());

    // Poll by keys: everything is new at first, nothing once the client has the stamps.
    send(&c, "PUT", &format!("{k}/keys/p/1"), a, Some("\"one\"")).await;
    let (status, r) = send(&c, "GET", &format!("{k}/watch/poll?keys=p/1,p/2"), a, None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["entries"].as_array().unwrap().len(), 1, "an absent key with no stamp is unchanged: {r}");
    assert_eq!(r["entries"][0]["value"], "one");
    let stamps: Vec<String> =
        r["versionstamps"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    assert_eq!(stamps[1], "");
    let (_, r) =
        send(&c, "GET", &format!("{k}/watch/poll?keys=p/1,p/2&versionstamps={}", stamps.join(",")), a, None).await;
    assert_eq!(r["entries"], json!([]), "{r}");
    send(&c, "PUT", &format!("{k}/keys/p/2"), a, Some("\"two\"")).await;
    let (_, r) =
        send(&c, "GET", &format!("{k}/watch/poll?keys=p/1,p/2&versionstamps={}", stamps.join(",")), a, None).await;
    assert_eq!(r["entries"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["entries"][0]["key"], json!(["p", 2]));
    let (status, e) = send(&c, "GET", &format!("{k}/watch/poll"), a, None).await;
    assert_eq!((status, e["data"]["path"].as_str()), (400, Some("keys")), "{e}");

    // Poll by prefix: new, then unchanged, then a deletion reported with a null value.
    let (_, r) = send(&c, "GET", &format!("{k}/watch/prefix/poll?prefix=p"), a, None).await;
    assert_eq!(r["entries"].as_array().unwrap().len(), 2, "{r}");
    let vs = r["versionstamps"].as_str().unwrap().to_string();
    assert!(vs.starts_with("p/1:") && vs.contains(",p/2:"), "{vs}");
    let q = |vs: &str| format!("{k}/watch/prefix/poll?prefix=p&versionstamps={}", urlencode(vs));
    let (_, r) = send(&c, "GET", &q(&vs), a, None).await;
    assert_eq!(r["entries"], json!([]), "{r}");
    send(&c, "DELETE", &format!("{k}/keys/p/1"), a, None).await;
    let (_, r) = send(&c, "GET", &q(&vs), a, None).await;
    assert_eq!(r["entries"], json!([{"key": ["p", 1], "value": null, "versionstamp": null}]), "{r}");
    let (status, _) = send(&c, "GET", &format!("{k}/watch/prefix/poll"), a, None).await;
    assert_eq!(status, 400);

    // Metrics: this namespace's operations, queue and storage.
    send(&c, "GET", &format!("{k}/keys/nope"), a, None).await;
    send(&c, "POST", &format!("{k}/queue/enqueue"), a, Some(r#"{"value": 1}"#)).await;
    let (status, m) = send(&c, "GET", &format!("{k}/metrics"), a, None).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["operations"]["set"]["count"], 2, "{m}");
    assert_eq!(m["operations"]["get"]["errors"], 1, "the 404 counts as an error: {m}");
    assert_eq!(m["queue"], json!({"pending": 1, "processing": 0, "dlq": 0, "total": 1}), "{m}");
    assert_eq!(m["storage"]["entries"], 1, "{m}");
    assert!(m["totals"]["operations"].as_u64().unwrap() >= 8, "{m}");
    let (_, other) = send(&c, "GET", &format!("{k}/metrics?namespace=elsewhere"), a, None).await;
    assert_eq!((other["operations"].clone(), other["storage"]["entries"].clone()), (json!({}), json!(0)), "{other}");
    let resp = c.get(format!("{k}/metrics/prometheus")).bearer_auth(&admin).send().await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("keyval_operations_total{operation=\"set\"} 2"), "{text}");
    assert!(text.contains("keyval_operation_duration_ms_bucket{operation=\"get\",le=\"+Inf\"}"), "{text}");
    assert!(text.contains("keyval_queue_pending 1") && text.contains("keyval_storage_entries 1"), "{text}");

    // Search: an index names the fields; unindexed prefixes are a clear 404.
    for (id, title, lang) in [(1, "The Rust Book", "en"), (2, "Rust in Action", "en"), (3, "Programming Rust", "pt")] {
        let body = json!({ "title": title, "meta": { "lang": lang } }).to_string();
        send(&c, "PUT", &format!("{k}/keys/books/{id}"), a, Some(&body)).await;
    }
    let (status, e) = send(&c, "GET", &format!("{k}/search?prefix=books&query=rust"), a, None).await;
    assert_eq!((status, e["code"].as_str()), (404, Some("KV_INDEX_NOT_FOUND")), "{e}");
    // Buntime's client sends `{prefix, fields}`; its server wants `{prefix, options: {fields}}`: both work.
    let (status, r) =
        send(&c, "POST", &format!("{k}/indexes"), a, Some(r#"{"prefix": ["books"], "fields": ["title"]}"#)).await;
    assert_eq!((status, r["ok"].clone()), (200, json!(true)), "{r}");
    let (status, r) = send(
        &c,
        "POST",
        &format!("{k}/indexes"),
        a,
        Some(r#"{"prefix": ["books"], "options": {"fields": ["title", "meta.lang"], "tokenize": "unicode61"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let (_, r) = send(&c, "GET", &format!("{k}/indexes"), a, None).await;
    assert_eq!(r, json!([{"prefix": ["books"], "fields": ["title", "meta.lang"], "tokenize": "unicode61"}]), "{r}");
    let (_, r) = send(&c, "GET", &format!("{k}/search?prefix=books&query=RUST%20act*"), a, None).await;
    assert_eq!(
        r.as_array().map(|a| a.iter().map(|e| e["key"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(["books", 2])]),
        "{r}"
    );
    let (_, r) = send(
        &c,
        "POST",
        &format!("{k}/search"),
        a,
        Some(
            r#"{"prefix": ["books"], "query": "rust", "options": {"limit": 5, "where": {"meta.lang": {"$eq": "pt"}}}}"#,
        ),
    )
    .await;
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["key"], json!(["books", 3]));
    let (status, e) = send(&c, "POST", &format!("{k}/search"), a, Some(r#"{"prefix": ["books"]}"#)).await;
    assert_eq!((status, e["data"]["path"].as_str()), (400, Some("query")), "{e}");
    let (status, e) =
        send(&c, "POST", &format!("{k}/indexes"), a, Some(r#"{"prefix": ["x"], "options": {"fields": []}}"#)).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("KV_INDEX_INVALID")), "{e}");
    let (_, r) = send(&c, "DELETE", &format!("{k}/indexes?prefix=books"), a, None).await;
    assert_eq!(r, json!({"ok": true, "removed": true}));
    assert_eq!(send(&c, "GET", &format!("{k}/search?prefix=books&query=rust"), a, None).await.0, 404);
    run.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// On PostgreSQL each app's SQL runs as its own login role: `@libsql/client` works with the
/// app's token, and neither marina's tables nor another app's schema are reachable, not even
/// with `SET ROLE`/`RESET ROLE`. Admin keys still see every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_apps_reach_only_their_own_schema() {
    let Some(url) = std::env::var("MARINA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        assert!(std::env::var("CI").is_err(), "CI must test PostgreSQL (MARINA_TEST_DATABASE_URL)");
        eprintln!("skip: MARINA_TEST_DATABASE_URL is unset");
        return;
    };
    // Names of this run only: the database is shared with other test binaries and runs.
    let (one, two) = (format!("pgone{}", std::process::id()), format!("pgtwo{}", std::process::id()));
    let srv = start_apps(&[&one, &two], |raw| {
        raw.set("DATABASE_URL", url.clone());
    })
    .await;
    let c = reqwest::Client::new();
    let b = &srv.base;
    let (status, r) = send(&c, "GET", &format!("{b}/{one}/pgtest?other={two}"), None, None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["insertedId"], "1", "{r}");
    assert_eq!(r["rows"], json!(["first", "in tx"]), "committed kept, rolled back and failed batch gone: {r}");
    assert!(r["batchError"].as_str().unwrap().starts_with("SQLITE_CONSTRAINT"), "{r}");
    assert!(r["whoami"].as_str().unwrap().starts_with(&format!("app_{one}_")), "{r}");
    for probe in ["marinaTables", "marinaKv", "otherApp", "otherInsert", "setRole", "resetRole", "newSchema", "newRole"]
    {
        let got = r[probe].as_str().unwrap();
        let refused = ["permission denied", "must be member", "does not exist"].iter().any(|w| got.contains(w));
        assert!(got != "allowed" && refused, "{probe}: {got}");
    }
    // The other app: its own table, not the first app's rows.
    let (status, r2) = send(&c, "GET", &format!("{b}/{two}/pgtest?other={one}"), None, None).await;
    assert_eq!(status, 200, "{r2}");
    assert_eq!(r2["rows"], json!(["first", "in tx"]), "{r2}");
    assert!(r2["otherApp"].as_str().unwrap().contains("permission denied"), "{r2}");
    // Raw Hrana with the second app's token on the first app's schema.
    let (_, token) = send(&c, "GET", &format!("{b}/{two}/token"), None, None).await;
    let pipeline =
        json!({"requests": [{"type": "execute", "stmt": {"sql": format!("SELECT body FROM app_{one}.notes")}}]})
            .to_string();
    let (status, r) = send(&c, "POST", &format!("{b}/database/api/v2/pipeline"), token.as_str(), Some(&pipeline)).await;
    assert_eq!(status, 200);
    assert!(r["results"][0]["error"]["message"].as_str().unwrap().contains("permission denied"), "{r}");
    // Admin keys reach every tenant, including what the app's role created.
    let admin = admin_key_in(marina_store::Store::open(Some(&url), Path::new("/")).await.unwrap()).await;
    let (status, r) =
        send(&c, "GET", &format!("{b}/database/api/tables/notes/rows?tenant={one}"), Some(&admin), None).await;
    assert_eq!((status, r["total"].clone()), (200, json!(2)), "{r}");
    let (_, r) = send(&c, "GET", &format!("{b}/database/api/tenants"), Some(&admin), None).await;
    assert!(r["tenants"].as_array().unwrap().contains(&json!(one)), "{r}");
    srv.stop().await;
}

/// A tiny JS app per name that reports the database it was given, without `@libsql/client`.
fn env_apps(names: &[&str]) -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for name in names {
        let dir = apps.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("index.mjs"),
            "export default { fetch() { return Response.json({ db: process.env.APP_DATABASE_PATH ?? null, \
             token: process.env.LIBSQL_AUTH_TOKEN }); } };\n",
        )
        .unwrap();
        std::fs::write(dir.join("manifest.yaml"), "entrypoint: index.mjs\nttl: 60s\n").unwrap();
    }
    apps
}

/// `Foo-Bar` and `foo_bar` map to one database name (`foo_bar`); the first to use it owns it and
/// the other is refused, by file path and over the database plugin alike (docs/storage.md: "two
/// apps can never share a database").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_whose_names_map_to_one_database_never_share_it() {
    let apps = env_apps(&["Foo-Bar", "foo_bar"]);
    let run = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_JS", "node").set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
    })
    .await;
    let c = reqwest::Client::new();
    let b = &run.base;
    let (status, owner) = send(&c, "GET", &format!("{b}/Foo-Bar/"), None, None).await;
    assert_eq!(status, 200, "{owner}");
    let (status, other) = send(&c, "GET", &format!("{b}/foo_bar/"), None, None).await;
    assert_eq!(status, 200, "{other}");
    assert!(owner["db"].as_str().is_some_and(|p| p.ends_with("/apps/foo_bar/app.db")), "{owner}");
    assert_eq!(other["db"], Value::Null, "the second app must not get the owner's file: {other}");

    let write = json!({"requests": [
        {"type": "execute", "stmt": {"sql": "CREATE TABLE secret (x TEXT)"}},
        {"type": "execute", "stmt": {"sql": "INSERT INTO secret VALUES ('private')"}},
        {"type": "close"}]})
    .to_string();
    let t_owner = owner["token"].as_str().unwrap();
    let (status, r) = send(&c, "POST", &format!("{b}/database/api/v2/pipeline"), Some(t_owner), Some(&write)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][1]["type"], "ok", "{r}");
    let read = json!({"requests": [{"type": "execute", "stmt": {"sql": "SELECT x FROM secret"}}, {"type": "close"}]})
        .to_string();
    let t_other = other["token"].as_str().unwrap();
    let (status, e) = send(&c, "POST", &format!("{b}/database/api/v2/pipeline"), Some(t_other), Some(&read)).await;
    assert_eq!((status, e["code"].as_str()), (409, Some("APP_DATABASE_CONFLICT")), "{e}");
    assert_eq!(e["data"]["owner"], "Foo-Bar", "{e}");
    let (status, r) = send(&c, "POST", &format!("{b}/database/api/v2/pipeline"), Some(t_owner), Some(&read)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][0]["response"]["result"]["rows"][0][0]["value"], "private", "{r}");
    run.stop().await;
}

/// HEAD on the data plugins' GET routes answers as GET does (without the body), a route asked
/// with a method it does not take answers 405 with `Allow`, and HEAD never dequeues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_apis_answer_head_and_wrong_methods() {
    let srv = start_apps(&[], |_| {}).await;
    let admin = srv.admin_key().await;
    let c = reqwest::Client::new();
    let b = &srv.base;
    assert_eq!(send(&c, "PUT", &format!("{b}/keyval/api/keys/users/1"), Some(&admin), Some("1")).await.0, 200);
    assert_eq!(
        send(&c, "POST", &format!("{b}/keyval/api/queue/enqueue"), Some(&admin), Some(r#"{"value": 7}"#)).await.0,
        200
    );
    for (path, status) in [
        ("/keyval/api/keys/users/1", 200),
        ("/keyval/api/keys/users/2", 404),
        ("/keyval/api/keys?prefix=users", 200),
        ("/keyval/api/metrics", 200),
        ("/database/api/health", 200),
        ("/database/api/tables", 200),
    ] {
        let resp = c.head(format!("{b}{path}")).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "HEAD {path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "HEAD {path}");
    }
    let resp = c.head(format!("{b}/keyval/api/queue/poll")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["allow"].to_str().unwrap()), (405, "GET"));
    let (status, m) = send(&c, "GET", &format!("{b}/keyval/api/queue/poll"), Some(&admin), None).await;
    assert_eq!((status, m["message"]["value"].clone()), (200, json!(7)), "the HEAD took nothing: {m}");
    for (method, path, allow) in [
        ("DELETE", "/keyval/api/atomic", "POST"),
        ("OPTIONS", "/keyval/api/watch", "GET, HEAD"),
        ("GET", "/database/api/query", "POST"),
        ("PUT", "/database/api/tables", "GET, HEAD"),
    ] {
        let resp = c.request(method.parse().unwrap(), format!("{b}{path}")).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["code"], "METHOD_NOT_ALLOWED", "{e}");
    }
    assert_eq!(send(&c, "GET", &format!("{b}/keyval/api/nope"), Some(&admin), None).await.0, 404);
    srv.stop().await;
}

/// A client that sends part of a body and then nothing gets 408 `REQUEST_BODY_TIMEOUT` from the
/// internal API and the data plugins after `RUNTIME_BODY_TIMEOUT`, as from a worker: it cannot
/// hold a connection and a handler forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_to_marina_s_own_routes_time_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let srv = start_apps(&[], |raw| {
        raw.set("RUNTIME_BODY_TIMEOUT", "1s");
    })
    .await;
    let admin = srv.admin_key().await;
    for (method, path) in [
        ("POST", "/api/keys"),
        ("PUT", "/keyval/api/keys/stalled"),
        ("POST", "/database/api/v2/pipeline"),
        ("POST", "/redirects/api/rules"),
    ] {
        let mut s = tokio::net::TcpStream::connect(srv.run.addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {admin}\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\""
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // Well past the 1 s limit, never forever: the server must answer and close.
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer to a stalled body"))
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{method} {path}: {text}");
        assert!(text.contains("\"code\":\"REQUEST_BODY_TIMEOUT\""), "{method} {path}: {text}");
    }
    let (_, v) =
        send(&reqwest::Client::new(), "GET", &format!("{}/keyval/api/keys/stalled", srv.base), Some(&admin), None)
            .await;
    assert_eq!(v["code"], "KEY_NOT_FOUND", "nothing half-written: {v}");
    srv.stop().await;
}

/// An `expiresIn` or queue `delay` too large for a 64-bit millisecond clock means "never", not
/// "already past" (the sum wrapped, so the value vanished at once while the answer said `ok`),
/// and never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_expiries_and_delays_mean_never() {
    let srv = start_apps(&[], |_| {}).await;
    let admin = srv.admin_key().await;
    let c = reqwest::Client::new();
    let b = &srv.base;
    for (i, ms) in ["18446744073709551615", "9223372036854775807"].into_iter().enumerate() {
        let (status, r) =
            send(&c, "PUT", &format!("{b}/keyval/api/keys/long/{i}?expiresIn={ms}"), Some(&admin), Some("1")).await;
        assert_eq!((status, r["ok"].clone()), (200, json!(true)), "{r}");
        let (status, r) = send(&c, "GET", &format!("{b}/keyval/api/keys/long/{i}"), Some(&admin), None).await;
        assert_eq!((status, r["value"].clone()), (200, json!(1)), "expiresIn={ms} lost the value: {r}");
    }
    let atomic =
        r#"{"mutations": [{"type": "set", "key": ["long", "a"], "value": 2, "expiresIn": 18446744073709551615}]}"#;
    let (status, r) = send(&c, "POST", &format!("{b}/keyval/api/atomic"), Some(&admin), Some(atomic)).await;
    assert_eq!((status, r["ok"].clone()), (200, json!(true)), "{r}");
    let (status, r) = send(&c, "GET", &format!("{b}/keyval/api/keys/long/a"), Some(&admin), None).await;
    assert_eq!((status, r["value"].clone()), (200, json!(2)), "{r}");

    let enqueue = r#"{"value": "later", "options": {"delay": 18446744073709551615}}"#;
    let (status, r) = send(&c, "POST", &format!("{b}/keyval/api/queue/enqueue"), Some(&admin), Some(enqueue)).await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = send(&c, "GET", &format!("{b}/keyval/api/queue/poll"), Some(&admin), None).await;
    assert_eq!(
        (status, r.clone()),
        (200, json!({"message": null})),
        "a message delayed forever was delivered now: {r}"
    );
    // A retry after a backoff of 2^64 - 1 ms waits, too.
    let enqueue = r#"{"value": "retry", "options": {"backoffSchedule": [18446744073709551615]}}"#;
    assert_eq!(send(&c, "POST", &format!("{b}/keyval/api/queue/enqueue"), Some(&admin), Some(enqueue)).await.0, 200);
    let (status, m) = send(&c, "GET", &format!("{b}/keyval/api/queue/poll"), Some(&admin), None).await;
    assert_eq!((status, m["message"]["value"].clone()), (200, json!("retry")), "{m}");
    let nack = json!({"id": m["message"]["id"]}).to_string();
    let (status, r) = send(&c, "POST", &format!("{b}/keyval/api/queue/nack"), Some(&admin), Some(&nack)).await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = send(&c, "GET", &format!("{b}/keyval/api/queue/poll"), Some(&admin), None).await;
    assert_eq!((status, r.clone()), (200, json!({"message": null})), "the retry came at once: {r}");
    srv.stop().await;
}

/// The keyval queue and watch routes answer with Buntime's shapes and statuses (its own route
/// tests, `plugins/plugin-keyval/server/index.test.ts`): `/queue/poll` wraps the message in
/// `{message}`, `/queue/stats` has `total`, deleting an absent dead letter is a no-op, an empty
/// message id is 400, and a prefix watch without `prefix` is 400 rather than a watch of
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyval_queue_and_watch_routes_keep_buntime_s_shapes() {
    let srv = start_apps(&[], |_| {}).await;
    let admin = srv.admin_key().await;
    let c = reqwest::Client::new();
    let b = &format!("{}/keyval/api", srv.base);
    let (status, r) = send(&c, "GET", &format!("{b}/queue/poll"), Some(&admin), None).await;
    assert_eq!((status, r), (200, json!({"message": null})));
    let (_, queued) =
        send(&c, "POST", &format!("{b}/queue/enqueue"), Some(&admin), Some(r#"{"value": {"v": "poll-test"}}"#)).await;
    let (status, r) = send(&c, "GET", &format!("{b}/queue/poll"), Some(&admin), None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["message"]["id"].clone(), r["message"]["value"].clone()),
        (queued["id"].clone(), json!({"v": "poll-test"}))
    );
    let (status, r) = send(&c, "GET", &format!("{b}/queue/stats"), Some(&admin), None).await;
    assert_eq!((status, r), (200, json!({"pending": 0, "processing": 1, "dlq": 0, "total": 1})));
    for route in ["ack", "nack"] {
        for id in [r#"{"id": ""}"#, r#"{"id": 123}"#, r#"{"id": null}"#] {
            let (status, e) = send(&c, "POST", &format!("{b}/queue/{route}"), Some(&admin), Some(id)).await;
            assert_eq!((status, e["data"]["path"].as_str()), (400, Some("id")), "{route} {id}: {e}");
        }
    }
    let (status, r) = send(&c, "DELETE", &format!("{b}/queue/dlq/nonexistent-id"), Some(&admin), None).await;
    assert_eq!((status, r), (200, json!({"ok": true})));
    assert_eq!(send(&c, "GET", &format!("{b}/queue/dlq/nonexistent-id"), Some(&admin), None).await.0, 404);
    for path in ["/watch/prefix", "/watch/prefix?prefix=", "/watch/prefix/poll"] {
        let resp = c
            .get(format!("{b}{path}"))
            .bearer_auth(&admin)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 400, "GET {path}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["data"]["path"], "prefix", "{path}: {e}");
    }
    srv.stop().await;
}

/// Buntime's `kv.now()` placeholders: `{"$now": true}` (with `"$offset": ms`) in a value becomes
/// the server's time in epoch milliseconds when it is written; other objects stay as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_placeholders_become_the_server_s_time() {
    let srv = start_apps(&[], |_| {}).await;
    let admin = srv.admin_key().await;
    let c = reqwest::Client::new();
    let b = &format!("{}/keyval/api", srv.base);
    let ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let before = ms();
    let body = r#"{"createdAt": {"$now": true}, "nested": [{"at": {"$now": true, "$offset": -3600000}}],
                   "kept": {"$now": true, "other": 1}, "name": "test"}"#;
    assert_eq!(send(&c, "PUT", &format!("{b}/keys/now/1"), Some(&admin), Some(body)).await.0, 200);
    let atomic = r#"{"mutations": [{"type": "set", "key": ["now", 2], "value": {"$now": true, "$offset": 3600000}}]}"#;
    assert_eq!(send(&c, "POST", &format!("{b}/atomic"), Some(&admin), Some(atomic)).await.0, 200);
    let after = ms();
    let (_, v) = send(&c, "GET", &format!("{b}/keys/now/1"), Some(&admin), None).await;
    let created = v["value"]["createdAt"].as_i64().unwrap_or_else(|| panic!("createdAt is not a time: {v}"));
    assert!((before..=after).contains(&created), "{created} not in {before}..={after}");
    let at = v["value"]["nested"][0]["at"].as_i64().unwrap_or_else(|| panic!("nested.at: {v}"));
    assert!((before - 3_600_000..=after - 3_600_000).contains(&at), "{v}");
    assert_eq!(v["value"]["kept"], json!({"$now": true, "other": 1}), "{v}");
    assert_eq!(v["value"]["name"], "test");
    let (_, v) = send(&c, "GET", &format!("{b}/keys/now/2"), Some(&admin), None).await;
    let later = v["value"].as_i64().unwrap_or_else(|| panic!("{v}"));
    assert!((before + 3_600_000..=after + 3_600_000).contains(&later), "{v}");
    srv.stop().await;
}

/// An app's SQL that never ends is stopped after 30 s (SQLITE_INTERRUPT) and one whose result
/// would fill marina's memory is refused (SQLITE_TOOBIG); the database answers the next
/// statement at once. (A runaway `WITH RECURSIVE` used to pin a CPU for ever and hang every later
/// call to that database.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_sql_is_stopped_and_the_database_keeps_answering() {
    let srv = start_apps(&[], |_| {}).await;
    let admin = srv.admin_key().await;
    let c = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    let url = format!("{}/database/api/v2/pipeline?tenant=runaway", srv.base);
    let run = |sql: &str| json!({"requests": [{"type": "execute", "stmt": {"sql": sql}}]}).to_string();
    let endless = run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c");
    let started = Instant::now();
    let (status, r) = send(&c, "POST", &url, Some(&admin), Some(&endless)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][0]["error"]["code"], "SQLITE_INTERRUPT", "{r}");
    assert!(r["results"][0]["error"]["message"].as_str().unwrap().contains("longer than 30 s"), "{r}");
    assert!(started.elapsed() >= Duration::from_secs(29), "stopped too early: {:?}", started.elapsed());
    let huge = run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, zeroblob(10000) FROM c");
    let (status, r) = send(&c, "POST", &url, Some(&admin), Some(&huge)).await;
    assert_eq!((status, r["results"][0]["error"]["code"].as_str()), (200, Some("SQLITE_TOOBIG")), "{r}");
    // One value over the bound is refused by SQLite before it is built (not a 1 GB blob).
    let (status, r) = send(&c, "POST", &url, Some(&admin), Some(&run("SELECT length(randomblob(999999999))"))).await;
    assert_eq!((status, r["results"][0]["error"]["code"].as_str()), (200, Some("SQLITE_TOOBIG")), "{r}");
    let started = Instant::now();
    let (status, r) = send(&c, "POST", &url, Some(&admin), Some(&run("SELECT 40 + 2 AS answer"))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][0]["response"]["result"]["rows"][0][0]["value"], "42", "{r}");
    assert!(started.elapsed() < Duration::from_secs(10), "the database was still busy");
    srv.stop().await;
}

/// SQL an app sends cannot set SQLite's process-wide directories (`temp_store_directory`,
/// `data_store_directory`): SQLite documents changing them with other connections open as
/// unsafe, and they would move marina's own temp files. Other pragmas on its own file still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_sql_cannot_set_process_wide_sqlite_directories() {
    let srv = start_apps(&[], |_| {}).await;
    let admin = srv.admin_key().await;
    let c = reqwest::Client::new();
    let url = format!("{}/database/api/v2/pipeline?tenant=pragmas", srv.base);
    let run = |sql: &str| json!({"requests": [{"type": "execute", "stmt": {"sql": sql}}]}).to_string();
    for sql in
        ["PRAGMA temp_store_directory = '/tmp'", "pragma DATA_STORE_DIRECTORY='/tmp'", "PRAGMA temp_store_directory"]
    {
        let (status, r) = send(&c, "POST", &url, Some(&admin), Some(&run(sql))).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["results"][0]["type"], "error", "{sql} was allowed: {r}");
        assert_eq!(r["results"][0]["error"]["code"], "SQLITE_AUTH", "{sql}: {r}");
    }
    let (_, r) = send(&c, "POST", &url, Some(&admin), Some(&run("PRAGMA user_version"))).await;
    assert_eq!(r["results"][0]["type"], "ok", "{r}");
    srv.stop().await;
}

/// Buntime's plugin-database server/api.test.ts over HTTP: the exact `error` texts of a bad
/// `POST /query` and `POST /tenants` body, and `?type=`: Buntime's default name `libsql` and
/// marina's own name are this SQLite backend (echoed by `/health`); any other is 400
/// `ADAPTER_NOT_CONFIGURED` (Buntime: 500 "... not configured"), never an answer from another
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_api_keeps_buntime_s_texts_and_adapter_names() {
    let srv = start_apps(&[], |_| {}).await;
    let admin = srv.admin_key().await;
    let c = reqwest::Client::new();
    let api = |p: &str| format!("{}/database/api{p}", srv.base);
    for body in [r#"{}"#, r#"{"sql": 123}"#] {
        let (status, r) = send(&c, "POST", &api("/query"), Some(&admin), Some(body)).await;
        assert_eq!(
            (status, r["error"].as_str(), r["data"]["path"].as_str()),
            (400, Some("Missing or invalid SQL query"), Some("sql")),
            "{r}"
        );
    }
    for body in [r#"{}"#, r#"{"id": 123}"#] {
        let (status, r) = send(&c, "POST", &api("/tenants"), Some(&admin), Some(body)).await;
        assert_eq!(
            (status, r["error"].as_str(), r["data"]["path"].as_str()),
            (400, Some("Missing or invalid tenant id"), Some("id")),
            "{r}"
        );
    }
    for t in ["libsql", "sqlite"] {
        let (status, r) = send(&c, "GET", &api(&format!("/tables?type={t}")), Some(&admin), None).await;
        assert_eq!(status, 200, "{t}: {r}");
        assert!(r["tables"].is_array(), "{r}");
        let (status, r) = send(&c, "GET", &api(&format!("/health?type={t}")), None, None).await;
        assert_eq!((status, r["status"].as_str(), r["type"].as_str()), (200, Some("healthy"), Some(t)), "{r}");
        let (status, r) =
            send(&c, "POST", &api(&format!("/query?type={t}")), Some(&admin), Some(r#"{"sql": "SELECT 1 AS x"}"#))
                .await;
        assert_eq!((status, &r["rows"][0]["x"]), (200, &json!(1)), "{r}");
    }
    let (status, r) = send(&c, "GET", &api("/health"), None, None).await;
    assert_eq!((status, r["status"].as_str(), r.get("type")), (200, Some("healthy"), None), "{r}");
    for path in ["/tables?type=invalid", "/health?type=invalid", "/tables/x/rows?type=mysql"] {
        let (status, r) = send(&c, "GET", &api(path), Some(&admin), None).await;
        assert_eq!(
            (status, r["code"].as_str(), r["data"]["path"].as_str()),
            (400, Some("ADAPTER_NOT_CONFIGURED"), Some("type")),
            "{path}: {r}"
        );
        assert!(r["error"].as_str().unwrap().contains("not configured"), "{r}");
    }
    srv.stop().await;
}
