//! JS workers under real Node and Bun: the contract, forwarding, env isolation.

mod common;

use common::*;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_app_forwards_path_headers_body_and_cookies() {
    for rt in runtimes() {
        let state = tempfile::tempdir().unwrap();
        let pool = pool(state.path(), Some(rt), |_| {});
        let app = js_app("echo", "js-echo", "index.js", |_| {});

        let r = call(&pool, &app, "POST", "/echo?x=1", "hi there").await.unwrap();
        assert_eq!(r.status, 200, "{rt}: {}", r.text);
        let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(v["path"], "/echo?x=1", "{rt}");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["base"], "/echo");
        assert_eq!(v["requestId"], "req-1");
        assert_eq!(v["forwardedFor"], "203.0.113.9");
        assert_eq!(v["body"], "hi there");

        let r = get(&pool, &app, "/bytes").await;
        assert_eq!(r.headers["content-type"], "text/plain;charset=utf-8", "{rt}: Buntime's default Content-Type");
        let r = get(&pool, &app, "/cookies").await;
        let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(cookies, vec!["a=1; Path=/", "b=2; Path=/"], "{rt}: duplicate Set-Cookie must survive");

        // A thrown error is a 500 JSON answer; the worker stays up.
        let pid = get(&pool, &app, "/pid").await.text;
        let r = call(&pool, &app, "GET", "/throw", "").await.unwrap();
        assert_eq!(r.status, 500);
        assert!(r.text.contains("boom from the app"), "{rt}: {}", r.text);
        assert_eq!(get(&pool, &app, "/pid").await.text, pid, "{rt}: same worker after an app error");
        let w = pool.workers();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, "js");
        assert!(w[0].requests >= 4 && w[0].errors >= 1, "{rt}: {w:?}");
        pool.shutdown(std::time::Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_app_matches_params_methods_and_static_responses() {
    for rt in runtimes() {
        let state = tempfile::tempdir().unwrap();
        let pool = pool(state.path(), Some(rt), |_| {});
        let app = js_app("routes", "js-routes", "index.mjs", |_| {});
        assert_eq!(get(&pool, &app, "/static").await.text, "a static response", "{rt}");
        assert_eq!(get(&pool, &app, "/static").await.text, "a static response", "{rt}: static Response reusable");
        assert_eq!(get(&pool, &app, "/users/42").await.text, r#"{"id":"42"}"#, "{rt}");
        assert_eq!(get(&pool, &app, "/items").await.text, "list items", "{rt}");
        let r = call(&pool, &app, "POST", "/items", "pen").await.unwrap();
        assert_eq!((r.status.as_u16(), r.text.as_str()), (201, "created pen"), "{rt}");
        assert_eq!(get(&pool, &app, "/files/a/b.txt").await.text, "file a/b.txt", "{rt}");
        let r = call(&pool, &app, "DELETE", "/items", "").await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text.as_str()),
            (404, "fallback /items"),
            "{rt}: unknown method falls back to fetch"
        );
        pool.shutdown(std::time::Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sees_only_its_env_and_marina_variables() {
    // SAFETY-free: set a secret in the test process; it must not reach any worker.
    for rt in runtimes() {
        let state = tempfile::tempdir().unwrap();
        let pool = pool(state.path(), Some(rt), |_| {});
        let app = js_app("envy", "js-echo", "index.js", |c| {
            c.env = BTreeMap::from([("GREETING".into(), "hi".into()), ("APP_DIR".into(), "/not/this".into())]);
            c.public_routes.by_method.insert("ALL".into(), vec!["/health".into(), "/public/**".into()]);
        });
        let r = get(&pool, &app, "/env").await;
        let env: BTreeMap<String, String> = serde_json::from_str(&r.text).unwrap();
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["APP_DIR"], app.dir.display().to_string(), "marina's APP_DIR wins");
        assert_eq!(env["ENTRYPOINT"], app.entrypoint.display().to_string());
        assert_eq!(env["NODE_ENV"], "test");
        assert_eq!(env["RUNTIME_API_URL"], "http://127.0.0.1:8000");
        assert_eq!(env["RUNTIME_LOG_LEVEL"], "info");
        assert_eq!(env["WORKER_ID"], pool.workers()[0].id);
        let cfg: serde_json::Value = serde_json::from_str(&env["WORKER_CONFIG"]).unwrap();
        assert_eq!(cfg["ttlMs"], 30_000);
        // As Buntime: the merged env and publicRoutes travel in WORKER_CONFIG, and workers learn
        // the worker and plugin dirs.
        assert_eq!(cfg["env"]["GREETING"], "hi");
        assert_eq!(cfg["publicRoutes"], serde_json::json!(["/health", "/public/**"]));
        assert_eq!(env["RUNTIME_WORKER_DIRS"], "/srv/apps:/srv/more");
        assert_eq!(env["RUNTIME_PLUGIN_DIRS"], "/srv/plugins");
        assert_eq!(
            env["APP_DATABASE_PATH"],
            state.path().join("apps/envy/app.db").display().to_string(),
            "where its own SQLite database is"
        );
        for (k, _) in std::env::vars() {
            if !["PATH", "HOME"].contains(&k.as_str()) && !env.contains_key(&k) {
                continue;
            }
            assert!(
                ["PATH", "HOME", "APP_DIR", "NODE_ENV", "GREETING"].contains(&k.as_str())
                    || !env.contains_key(&k)
                    || is_runtime_added(&k),
                "{rt}: the runtime's own variable {k} leaked into the worker"
            );
        }
        assert!(!env.contains_key("CARGO_MANIFEST_DIR") && !env.contains_key("CARGO_PKG_NAME"), "{rt}: {env:?}");
        pool.shutdown(std::time::Duration::from_secs(2)).await;
    }
}

/// Variables the JS engine itself sets in its own process (not inherited from marina).
fn is_runtime_added(k: &str) -> bool {
    ["PWD", "OLDPWD", "SHLVL", "_"].contains(&k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_runs_under_bun_and_node_says_what_to_install() {
    let state = tempfile::tempdir().unwrap();
    let node = pool(state.path(), Some("node"), |_| {});
    let app = js_app("ts", "ts-echo", "index.ts", |_| {});
    let err = call(&node, &app, "GET", "/x", "").await.err().expect("Node cannot run .ts");
    assert_eq!(err.code(), "WORKER_START_FAILED");
    assert!(err.message().contains("install Bun"), "{}", err.message());
    drop(node);
    if runtimes().contains(&"bun") {
        let state = tempfile::tempdir().unwrap();
        let bun = pool(state.path(), Some("bun"), |_| {});
        assert_eq!(get(&bun, &app, "/world").await.text, "hello world from bun");
        bun.shutdown(std::time::Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_failure_is_a_start_error_with_stderr() {
    for rt in runtimes() {
        let state = tempfile::tempdir().unwrap();
        let pool = pool(state.path(), Some(rt), |_| {});
        let app = js_app("broken", "js-broken", "index.js", |_| {});
        let err = call(&pool, &app, "GET", "/", "").await.err().expect("import fails");
        assert_eq!(err.code(), "WORKER_START_FAILED", "{rt}: {}", err.message());
        let data = err.data().unwrap();
        let stderr = data["stderr"].to_string();
        assert!(stderr.contains("broken at import"), "{rt}: {data}");
        assert_eq!(pool.metrics().total_workers_failed, 1);
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_install_runs_bun_install_before_start() {
    if !runtimes().contains(&"bun") {
        return;
    }
    // Work on a copy so node_modules never lands in the source tree.
    let work = tempfile::tempdir().unwrap();
    // Workers run as another user when marina is root: they must be able to enter it.
    std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = work.path().join("app");
    copy_dir(&fixture("js-autoinstall"), &dir);
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("bun"), |_| {});
    let mut app = (*js_app("auto", "js-autoinstall", "index.js", |c| c.auto_install = true)).clone();
    app.entrypoint = dir.join("index.js");
    app.dir = dir.clone();
    let app = std::sync::Arc::new(app);
    assert_eq!(get(&pool, &app, "/").await.text, "hi marina from an installed package");
    assert!(dir.join("node_modules/greet").exists());

    // A lockfile that no longer matches package.json fails the start, saying why.
    let broken = work.path().join("broken");
    copy_dir(&fixture("js-autoinstall"), &broken);
    std::fs::write(
        broken.join("package.json"),
        r#"{"name":"autoinstall","version":"1.0.0","type":"module","dependencies":{"greet":"file:./greet","other":"file:./other"}}"#,
    )
    .unwrap();
    let mut app2 = (*app).clone();
    app2.name = "auto2".into();
    app2.key = marina_apps::App::key_of(&app2.name, &app2.version);
    app2.entrypoint = broken.join("index.js");
    app2.dir = broken;
    let err = call(&pool, &std::sync::Arc::new(app2), "GET", "/", "").await.err().expect("frozen lockfile mismatch");
    assert_eq!(err.code(), "WORKER_START_FAILED");
    assert!(err.message().contains("autoInstall"), "{}", err.message());
    pool.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_memory_starts_bun_in_smol_mode() {
    if !runtimes().contains(&"bun") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), Some("bun"), |_| {});
    let app = js_app("smol", "js-echo", "index.js", |c| c.low_memory = true);
    let pid = get(&pool, &app, "/pid").await.text;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert!(args.iter().any(|a| a == "--smol"), "{args:?}");
    assert_eq!(pool.workers()[0].pid.map(|p| p.to_string()), Some(pid), "/api/workers shows the app's own pid");
    pool.shutdown(std::time::Duration::from_secs(2)).await;
}
