//! `DELETE /api/apps/:scope/:name[/:version]`, `DELETE /api/plugins/:name` and the listings'
//! `source` / `removable`, through a real server: Buntime's answers, the built-in (`.`-named)
//! dirs left alone, the workers of a removed app drained, and hostile names (`..`, encoded
//! slashes, very long names, symlinks out of the dir) refused without touching anything.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use serde_json::{Value, json};

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A JS app that answers `hi` at `dir/rel`.
fn js_app(dir: &Path, rel: &str) {
    let d = dir.join(rel);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("index.js"), "export default { fetch() { return new Response('hi') } };\n").unwrap();
    std::fs::write(d.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
}

/// Every file under `dir`, relative, sorted: what must survive a refused removal.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

async fn call(method: reqwest::Method, url: String) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, url)
        .header("x-buntime-internal", "true")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn del(base: &str, path: &str) -> (u16, Value) {
    call(reqwest::Method::DELETE, format!("{base}{path}")).await
}

/// A DELETE sent as written (HTTP clients resolve `..` and `%2E%2E` segments before sending).
async fn raw_delete(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nX-Buntime-Internal: true\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.into())))
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    call(reqwest::Method::GET, format!("{base}{path}")).await
}

struct Fixture {
    root: tempfile::TempDir,
    srv: common::Running,
}

async fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    set_mode(r, 0o755);
    let (builtin, uploaded) = (r.join(".apps"), r.join("apps"));
    js_app(&builtin, "core/1.0.0");
    js_app(&uploaded, "hello");
    js_app(&uploaded, "multi/1.0.0");
    js_app(&uploaded, "multi@2.0.0");
    js_app(&r.join("outside"), "1.0.0");
    std::os::unix::fs::symlink(r.join("outside"), uploaded.join("linked")).unwrap();
    for d in [&builtin, &uploaded] {
        for p in std::iter::once(d.clone()).chain(tree(d).iter().map(|rel| d.join(rel))) {
            set_mode(&p, if p.is_dir() { 0o755 } else { 0o644 });
        }
    }
    let dirs = format!("{}:{}", builtin.display(), uploaded.display());
    let plugins = format!("{}:{}", r.join(".plugins").display(), r.join("plugins").display());
    let srv = common::start(&uploaded, |c| {
        c.set("RUNTIME_JS", "node");
        c.set("RUNTIME_WORKER_DIRS", dirs);
        c.set("RUNTIME_PLUGIN_DIRS", plugins);
    })
    .await;
    // Plugin dirs appear after start: listed and removable, never loaded.
    for (dir, name) in [(".plugins", "plugin-core"), ("plugins", "plugin-up"), ("plugins", "@acme/plugin-x")] {
        let d = r.join(dir).join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("manifest.yaml"), format!("name: \"{name}\"\nbase: /x\n")).unwrap();
    }
    Fixture { root, srv }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_and_plugins_are_listed_with_their_source_and_removed_as_buntime_does() {
    let Fixture { root, srv } = fixture().await;
    let (base, r) = (srv.base.clone(), root.path());
    let (_, apps) = get(&base, "/api/apps").await;
    let by_name =
        |list: &Value, name: &str| list.as_array().unwrap().iter().find(|a| a["name"] == name).cloned().unwrap();
    assert_eq!(
        (by_name(&apps, "core")["source"].clone(), by_name(&apps, "core")["removable"].clone()),
        (json!("built-in"), json!(false))
    );
    assert_eq!(
        (by_name(&apps, "hello")["source"].clone(), by_name(&apps, "hello")["removable"].clone()),
        (json!("uploaded"), json!(true))
    );
    let (_, plugins) = get(&base, "/api/plugins").await;
    assert_eq!(by_name(&plugins, "plugin-core")["source"], "built-in");
    assert_eq!(by_name(&plugins, "@acme/plugin-x")["removable"], true);

    // A running app: removed, its worker drained and stopped, then 404.
    let hello = reqwest::get(format!("{base}/hello/")).await.unwrap();
    assert_eq!(hello.text().await.unwrap(), "hi");
    let (_, w) = get(&base, "/api/workers").await;
    let pid = w["workers"].as_array().unwrap().iter().find(|w| w["app"] == "hello").and_then(|w| w["pid"].as_u64());
    let pid = pid.unwrap_or_else(|| panic!("hello has no worker process: {w}"));
    assert_eq!(del(&base, "/api/apps/_/hello").await, (200, json!({"success": true})));
    assert!(!r.join("apps/hello").exists());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, w) = get(&base, "/api/workers").await;
        let left = w["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["app"].as_str().is_some_and(|a| a.starts_with("hello")))
            .count();
        if left == 0 && !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "hello's worker still runs: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = get(&base, "/hello/").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("APP_NOT_FOUND")), "{body}");

    // One version, nested or flat; the other stays.
    assert_eq!(del(&base, "/api/apps/_/multi/2.0.0").await.0, 200);
    assert!(!r.join("apps/multi@2.0.0").exists() && r.join("apps/multi/1.0.0/index.js").exists());
    let (status, body) = del(&base, "/api/apps/_/multi/2.0.0").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("VERSION_NOT_FOUND")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("multi@2.0.0"), "{body}");

    // Built-in: refused, untouched.
    let (status, body) = del(&base, "/api/apps/_/core").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("BUILT_IN_APP_REMOVE_FORBIDDEN")), "{body}");
    let (status, body) = del(&base, "/api/apps/_/core/1.0.0").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("BUILT_IN_APP_VERSION_REMOVE_FORBIDDEN")), "{body}");
    assert!(r.join(".apps/core/1.0.0/index.js").exists());

    // Unknown: 404 naming it.
    let (status, body) = del(&base, "/api/apps/_/nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("APP_NOT_FOUND")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("nope") && body["data"]["name"] == "nope", "{body}");
    let (status, body) = del(&base, "/api/apps/@acme/nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("APP_NOT_FOUND")), "{body}");

    // Plugins.
    assert_eq!(del(&base, "/api/plugins/plugin-up").await, (200, json!({"success": true})));
    assert!(!r.join("plugins/plugin-up").exists());
    assert_eq!(del(&base, "/api/plugins/%40acme%2Fplugin-x").await.0, 200);
    assert!(!r.join("plugins/@acme/plugin-x").exists());
    for (path, status, code) in [
        ("/api/plugins/plugin-core", 403, "BUILT_IN_PLUGIN_REMOVE_FORBIDDEN"),
        ("/api/plugins/%40marina%2Fauth", 403, "BUILT_IN_PLUGIN_REMOVE_FORBIDDEN"),
        ("/api/plugins/plugin-none", 404, "PLUGIN_NOT_FOUND"),
    ] {
        let (s, body) = del(&base, path).await;
        assert_eq!((s, body["code"].as_str()), (status, Some(code)), "{path}: {body}");
    }
    assert!(r.join(".plugins/plugin-core/manifest.yaml").exists());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused_and_nothing_outside_is_touched() {
    let Fixture { root, srv } = fixture().await;
    let (base, r) = (srv.base.clone(), root.path());
    let before = tree(r);
    let long = "a".repeat(300);
    for (path, code) in [
        ("/api/apps/_/%2E%2E".to_string(), "INVALID_APP_NAME"),
        ("/api/apps/_/..".to_string(), "INVALID_APP_NAME"),
        ("/api/apps/_/.".to_string(), "INVALID_APP_NAME"),
        ("/api/apps/_/..%2F..".to_string(), "INVALID_APP_NAME"),
        ("/api/apps/_/a%2F..%2F..%2Foutside".to_string(), "INVALID_APP_NAME"),
        ("/api/apps/_/.apps".to_string(), "INVALID_APP_NAME"),
        ("/api/apps/_/a%5C..".to_string(), "INVALID_APP_NAME"),
        ("/api/apps/_/a%00b".to_string(), "INVALID_APP_NAME"),
        (format!("/api/apps/_/{long}"), "INVALID_APP_NAME"),
        ("/api/apps/_/multi/%2E%2E".to_string(), "INVALID_VERSION"),
        ("/api/apps/_/multi/..%2F..%2F..".to_string(), "INVALID_VERSION"),
        (format!("/api/apps/_/multi/{long}"), "INVALID_VERSION"),
        ("/api/plugins/%2E%2E".to_string(), "INVALID_PLUGIN_NAME"),
        ("/api/plugins/..%2F..%2Fapps".to_string(), "INVALID_PLUGIN_NAME"),
        ("/api/plugins/%40..%2Fapps".to_string(), "INVALID_PLUGIN_NAME"),
        (format!("/api/plugins/{long}"), "INVALID_PLUGIN_NAME"),
    ] {
        let (status, body) = raw_delete(srv.addr, &path).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{path}: {body}");
        assert_eq!(body["data"]["path"].as_str().map(|p| p == "name" || p == "version"), Some(true), "{body}");
    }
    // Invalid UTF-8 after decoding: a clear 400 too.
    let (status, body) = raw_delete(srv.addr, "/api/apps/_/%FF").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_PATH")), "{body}");
    assert_eq!(tree(r), before, "a refused removal changed the files");
    // A symlink in the apps dir: the link goes, its target stays; its versions are not looked into.
    let (status, body) = del(&base, "/api/apps/_/linked/1.0.0").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("VERSION_NOT_FOUND")), "{body}");
    assert_eq!(del(&base, "/api/apps/_/linked").await.0, 200);
    assert!(!r.join("apps/linked").exists() && r.join("outside/1.0.0/index.js").exists());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_needs_the_remove_permission_once_keys_exist() {
    let Fixture { root, srv } = fixture().await;
    let base = srv.base.clone();
    let client = reqwest::Client::new();
    let create = |role: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r: Value = client
                .post(format!("{base}/api/keys"))
                .header("x-buntime-internal", "true")
                .json(&json!({"name": role, "role": role}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r
        }
    };
    let admin = create("admin").await["data"]["key"].as_str().unwrap().to_string();
    let viewer: Value = client
        .post(format!("{base}/api/keys"))
        .header("x-api-key", &admin)
        .json(&json!({"name": "ro", "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let viewer = viewer["data"]["key"].as_str().unwrap().to_string();
    let resp = client.delete(format!("{base}/api/apps/_/hello")).header("x-api-key", &viewer).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().await.unwrap()["data"]["permission"], "apps:remove");
    let resp = client.delete(format!("{base}/api/plugins/plugin-up")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(root.path().join("apps/hello").exists() && root.path().join("plugins/plugin-up").exists());
    let resp = client.delete(format!("{base}/api/apps/_/hello")).header("x-api-key", &admin).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    srv.stop().await;
}
