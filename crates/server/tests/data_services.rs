//! The keyval and database services through the whole server over real HTTP, driven by a real
//! Node app that uses the unmodified `@libsql/client` from npm with its own worker token:
//! both stores from an app, transactions, batches and errors through libSQL's client, per-app
//! isolation, admin keys, watch over SSE, and bad input.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use marina_server::{RawConfig, RuntimeConfig, Server};
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
    base: String,
    rt: std::sync::Arc<marina_server::Runtime>,
    state: tempfile::TempDir,
    _apps: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Srv {
    let apps = tempfile::tempdir().unwrap();
    // Workers run as another user when marina is root: they must be able to enter it.
    std::fs::set_permissions(apps.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    app(apps.path(), "alpha");
    app(apps.path(), "beta");
    let state = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::new();
    raw.set("PORT", "0")
        .set("RUNTIME_WORKER_DIRS", apps.path().display().to_string())
        .set("RUNTIME_STATE_DIR", state.path().display().to_string())
        .set("NODE_ENV", "test")
        .set("RUNTIME_JS", "node");
    let server = Server::bind(RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap()).await.expect("binds");
    let base = format!("http://{}", server.local_addr());
    let rt = server.runtime();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Srv { base, rt, state, _apps: apps, stop: Some(tx), task }
}

impl Srv {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task).await.expect("stops").unwrap();
    }

    /// An admin API key, created in marina's own database the way `marina keys create` does.
    async fn admin_key(&self) -> String {
        let store = marina_store::Store::open(None, self.state.path()).await.unwrap();
        let keys = marina_auth::keys::KeyStore::new(store);
        let new = marina_auth::keys::NewKey {
            name: Some("test admin".into()),
            role: Some("admin".into()),
            ..Default::default()
        };
        keys.create(new, None).await.unwrap().key
    }
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
    srv.rt.pool.shutdown(Duration::from_secs(5)).await;
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
    let dir = apps.path().join("notes");
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps/notes");
    for f in ["index.mjs", "manifest.yaml"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::new();
    raw.set("PORT", "0")
        .set("RUNTIME_WORKER_DIRS", apps.path().display().to_string())
        .set("RUNTIME_STATE_DIR", state.path().display().to_string())
        .set("NODE_ENV", "test")
        .set("RUNTIME_JS", "node");
    let server = Server::bind(RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap()).await.unwrap();
    let b = format!("http://{}", server.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
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
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
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
        let state = tempfile::tempdir().unwrap();
        let mut raw = RawConfig::new();
        raw.set("PORT", "0")
            .set("RUNTIME_WORKER_DIRS", apps.path().display().to_string())
            .set("RUNTIME_STATE_DIR", state.path().display().to_string())
            .set("NODE_ENV", "test")
            .set("DATABASE_URL", url.clone());
        let server = Server::bind(RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap()).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        servers.push((base, tx, task, state));
    }
    let store = marina_store::Store::open(Some(&url), Path::new("/")).await.unwrap();
    let keys = marina_auth::keys::KeyStore::new(store);
    let new =
        marina_auth::keys::NewKey { name: Some("pg admin".into()), role: Some("admin".into()), ..Default::default() };
    let admin = keys.create(new, None).await.unwrap().key;
    let ns = format!("pgwatch{}", std::process::id());
    let c = reqwest::Client::new();
    let (a, b) = (&servers[0].0, &servers[1].0);
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
    for (_, tx, task, _state) in servers {
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
    }
}
