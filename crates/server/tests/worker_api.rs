//! A hostile app against the internal API while it is open (no root key, no API key yet): it
//! must not be able to create the first admin key, nor read the API, while the operator (this
//! test process) still can. Real sandboxed Node workers (tests/apps/hostile) as another uid, so
//! it needs root (CI runs as root); elsewhere it says why it skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use serde_json::{Value, json};

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/hostile")
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A worker dir other users may enter, with the app `hostile`.
fn apps() -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    set_mode(apps.path(), 0o755);
    let dir = apps.path().join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    set_mode(&dir, 0o755);
    std::fs::copy(hostile_dir().join("index.js"), dir.join("index.js")).unwrap();
    set_mode(&dir.join("index.js"), 0o644);
    std::fs::write(dir.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
    set_mode(&dir.join("manifest.yaml"), 0o644);
    apps
}

/// The hostile app calls `method path` on `RUNTIME_API_URL`: (status, JSON body).
async fn from_app(base: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut url = format!("{base}/hostile/api?method={method}&path={}", common::query_value(path));
    if let Some(b) = body {
        url.push_str(&format!("&body={}", common::query_value(&b.to_string())));
    }
    let r: Value =
        reqwest::Client::new().get(url).timeout(Duration::from_secs(60)).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["ok"], true, "the app's call failed: {r}");
    let body = r["body"].as_str().unwrap();
    (r["status"].as_u64().unwrap() as u16, serde_json::from_str(body).unwrap_or(Value::String(body.into())))
}

async fn keys(base: &str) -> Vec<Value> {
    let r: Value = reqwest::get(format!("{base}/api/keys")).await.unwrap().json().await.unwrap();
    r["keys"].as_array().unwrap().clone()
}

async fn attack(tweak: impl FnOnce(&mut marina_server::RawConfig)) {
    let apps = apps();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node").set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
        tweak(r);
    })
    .await;
    let base = srv.base.clone();
    let create = json!({"name": "pwned", "role": "admin"});
    let (status, body) = from_app(&base, "POST", "/api/keys", Some(&create)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "API_NOT_OPEN_TO_APPS", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("RUNTIME_ROOT_KEY") && message.contains("marina keys create"), "{message}");
    assert!(keys(&base).await.is_empty(), "the app created a key");
    // Reads and the other API-guarded routes are refused too; the public ones are not.
    for (method, path) in [("GET", "/api/keys"), ("GET", "/api/workers"), ("DELETE", "/api/keys/1")] {
        let (status, body) = from_app(&base, method, path, None).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("API_NOT_OPEN_TO_APPS")), "{method} {path}: {body}");
    }
    // The plugin APIs that follow the internal API's key rules too.
    let rule = json!({"name": "steal", "pattern": "^/victim/(.*)$", "target": "http://127.0.0.1:9"});
    for (method, path, body) in [
        ("POST", "/redirects/api/rules", Some(&rule)),
        ("GET", "/redirects/api/rules", None),
        ("GET", "/gateway/api/logs", None),
    ] {
        let (status, answer) = from_app(&base, method, path, body).await;
        assert_eq!((status, answer["code"].as_str()), (403, Some("API_NOT_OPEN_TO_APPS")), "{method} {path}: {answer}");
    }
    let (status, body) = from_app(&base, "GET", "/api/health", None).await;
    assert_eq!(status, 200, "{body}");
    // The operator, from this process, still may: the API is open to it.
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/keys"))
        .header("x-buntime-internal", "true")
        .json(&json!({"name": "operator", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let key = resp.json::<Value>().await.unwrap()["data"]["key"].as_str().unwrap().to_string();
    // From now on a key is required of everyone; the app has none.
    let (status, body) = from_app(&base, "POST", "/api/keys", Some(&create)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("AUTH_REQUIRED")), "{body}");
    let listed: Value = reqwest::Client::new()
        .get(format!("{base}/api/keys"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["keys"].as_array().unwrap().iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(names, ["operator"]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_mint_the_first_admin_key_with_per_app_uids() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: marina is not root here, so workers run as its own user (CI runs as root)");
        return;
    }
    attack(|r| {
        r.set("RUNTIME_WORKER_UIDS", "200000-265535");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_mint_the_first_admin_key_as_the_shared_worker_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: marina is not root here, so workers run as its own user (CI runs as root)");
        return;
    }
    attack(|_| {}).await;
}

/// A wasm app's requests come from marina's own process, so the connection cannot tell: marina's
/// wasm host marks those to its own port with `x-marina-from-app` (which the guest cannot
/// remove), and the open API refuses them like any app's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_marked_as_a_wasm_app_s_is_refused_while_the_api_is_open() {
    let apps = tempfile::tempdir().unwrap();
    let srv = common::start(apps.path(), |_| {}).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/api/keys", srv.base))
        .header("x-buntime-internal", "true")
        .header("x-marina-from-app", "1")
        .json(&json!({"name": "pwned", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "API_NOT_OPEN_TO_APPS", "{body}");
    assert!(keys(&srv.base).await.is_empty());
    srv.stop().await;
}
