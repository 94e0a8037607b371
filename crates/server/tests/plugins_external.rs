//! External plugins through a real server and real Bun workers: a plugin dir whose manifest
//! names an `entrypoint` is served at its base by the worker pool, and its `hooks.onRequest`
//! gates requests forward-auth style — allow (2xx, listed headers reach the app), deny (the
//! worker's 401/403/302 as it gave it), time out, throw or crash (503 fail-closed; fail-open goes
//! on), never a body to the hook, and a client's copy of a header the hook may set never reaching
//! the app; `hooks.paths`/`hooks.excludePaths` narrowing what the hook is asked. Also: the bundled `examples/plugins/forward-auth`, disabled on a fresh clone and
//! working once enabled.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Client, redirect};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps").join(name)
}

/// `apps/echo` (answers with everything it received) and `plugins/gate` (the forward-gate
/// fixture at `/gate`) with `extra` appended to the gate's manifest.
fn setup(extra: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("apps/echo");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(fixture("echo-all/index.js"), app.join("index.js")).unwrap();
    std::fs::write(app.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
    let gate = tmp.path().join("plugins/gate");
    std::fs::create_dir_all(&gate).unwrap();
    std::fs::copy(fixture("forward-gate/index.js"), gate.join("index.js")).unwrap();
    let manifest = format!(
        "name: \"@test/gate\"\nbase: /gate\nentrypoint: index.js\nttl: 60s\nhookTimeout: 1500ms\n\
         hooks:\n  onRequest: /check?from=marina\n  authResponseHeaders: [x-user, x-identity]\n{extra}"
    );
    std::fs::write(gate.join("manifest.yaml"), manifest).unwrap();
    tmp
}

async fn serve(tmp: &tempfile::TempDir) -> common::Running {
    let plugins = tmp.path().join("plugins");
    common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "bun").set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string());
    })
    .await
}

fn client() -> Client {
    Client::builder().redirect(redirect::Policy::none()).timeout(Duration::from_secs(60)).build().unwrap()
}

/// The hook requests the gate's worker has received, latest last.
async fn seen(c: &Client, srv: &common::Running) -> Vec<Value> {
    let v: Value = c.get(format!("{}/gate/seen", srv.base)).send().await.unwrap().json().await.unwrap();
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_allows_denies_and_fails_closed() {
    let tmp = setup("");
    let srv = serve(&tmp).await;
    let c = client();
    let at = |p: &str| format!("{}{p}", srv.base);

    // Listed and loaded, at its base.
    let loaded: Value = c.get(at("/api/plugins/loaded")).send().await.unwrap().json().await.unwrap();
    let gate = loaded.as_array().unwrap().iter().find(|p| p["name"] == "@test/gate").cloned();
    assert_eq!(gate.map(|g| g["base"].clone()), Some(Value::from("/gate")), "{loaded}");

    // The plugin's own routes: its worker at its base, never gated by its own hook.
    let resp = c.get(at("/gate/page?x=1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "gate page /page?x=1 base=/gate");
    assert!(seen(&c, &srv).await.is_empty(), "the plugin's base is outside its hook's scope");

    // Allowed: a POST with a body; the hook gets no body, the app gets it, plus x-user from the
    // hook's answer (and not x-other, which is not listed). The client's x-user is not trusted.
    let resp = c
        .post(at("/echo/things?q=1"))
        .header("x-user", "mallory")
        .header("x-extra", "kept")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .body("the payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["method"], "POST");
    assert_eq!(got["path"], "/things?q=1");
    assert_eq!(got["body"], "the payload", "the app still gets the body");
    assert_eq!(got["headers"]["x-user"], "alice", "{got}");
    assert_eq!(got["headers"]["x-extra"], "kept");
    assert!(got["headers"].get("x-other").is_none(), "only listed headers are copied: {got}");
    let hook = seen(&c, &srv).await.pop().unwrap();
    assert_eq!(hook["method"], "GET", "{hook}");
    assert_eq!(hook["url"], "/check?from=marina");
    assert_eq!(hook["bodyBytes"], 0);
    let h = &hook["headers"];
    assert!(h.get("content-length").is_none_or(|v| v == "0"), "{h}");
    for (name, want) in [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/echo/things?q=1"),
        ("x-original-method", "POST"),
        ("x-original-uri", "/echo/things?q=1"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-base", "/gate"),
        ("x-extra", "kept"),
        ("x-user", "mallory"),
    ] {
        assert_eq!(h[name], want, "{name}: {h}");
    }
    assert_eq!(h["x-forwarded-host"], srv.addr.to_string());
    assert!(h.get("x-hop").is_none() && h.get("transfer-encoding").is_none(), "hop-by-hop headers are stripped: {h}");
    assert!(h["x-request-id"].as_str().is_some_and(|s| !s.is_empty()));

    // A 2xx that sets no x-user: the client's x-user still never reaches the app.
    let got: Value = c.get(at("/echo/nouser")).header("x-user", "mallory").send().await.unwrap().json().await.unwrap();
    assert!(got["headers"].get("x-user").is_none(), "a spoofed x-user is dropped: {got}");
    assert!(got["headers"].get("x-other").is_none());

    // Denied: status, headers and body as the worker gave them.
    let resp = c.get(at("/echo/deny401")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(common::header(&resp, "www-authenticate"), Some("Bearer realm=\"gate\""));
    assert_eq!(common::header(&resp, "x-gate"), Some("denied"));
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "who are you");
    let resp = c.delete(at("/echo/deny403")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await.unwrap(), "forbidden here\n");
    let resp = c.get(at("/echo/login-needed?a=b")).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(common::header(&resp, "location"), Some("/gate/login?next=%2Fecho%2Flogin-needed%3Fa%3Db"));
    // The gate applies to paths no app serves too (the 404 comes only once it allows).
    assert_eq!(c.get(at("/nowhere/deny401")).send().await.unwrap().status(), 401);
    assert_eq!(c.get(at("/nowhere")).send().await.unwrap().status(), 404);

    // The internal API is not gated (marina's keys guard it): the hook is not even asked.
    let asked = seen(&c, &srv).await.len();
    assert_eq!(c.get(at("/api/plugins?deny401")).send().await.unwrap().status(), 200);
    assert_eq!(seen(&c, &srv).await.len(), asked);

    // x-identity, when listed, is how the hook says who is calling; marina re-serialises it.
    let got: Value = c.get(at("/echo/identity")).send().await.unwrap().json().await.unwrap();
    let identity: Value = serde_json::from_str(got["headers"]["x-identity"].as_str().unwrap()).unwrap();
    assert_eq!((identity["id"].as_str(), identity["via"].as_str()), (Some("u-7"), Some("forward-auth")), "{identity}");
    assert_eq!(identity["roles"][0], "reader");
    let resp = c.get(at("/echo/bad-identity")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "PLUGIN_ONREQUEST_FAILED");

    // Failures are fail-closed: the hook's timeout, a thrown error, a crashed worker.
    let started = std::time::Instant::now();
    let resp = c.get(at("/echo/slow")).header("x-user", "mallory").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["data"]["reason"].as_str()),
        (Some("PLUGIN_ONREQUEST_FAILED"), Some("timeout"))
    );
    assert_eq!(body["data"]["plugin"], "@test/gate");
    assert!(started.elapsed() < Duration::from_secs(4), "answered at the hook timeout, not when the worker was done");
    let resp = c.get(at("/echo/throw")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["data"]["reason"].as_str()),
        (Some("PLUGIN_ONREQUEST_FAILED"), Some("error"))
    );
    let resp = c.get(at("/echo/crash")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "PLUGIN_ONREQUEST_FAILED");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_hook_lets_requests_through_without_trusting_the_client() {
    let tmp = setup("onRequestFailOpen: true\n");
    let srv = serve(&tmp).await;
    let c = client();
    let at = |p: &str| format!("{}{p}", srv.base);
    for path in ["/echo/slow", "/echo/throw", "/echo/crash"] {
        let resp = c.get(at(path)).header("x-user", "mallory").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let got: Value = resp.json().await.unwrap();
        assert_eq!(got["path"], path.trim_start_matches("/echo"));
        assert!(got["headers"].get("x-user").is_none(), "{path}: the client's x-user is dropped even so: {got}");
    }
    // Denials are answers, not failures: fail-open does not let them through.
    assert_eq!(c.get(at("/echo/deny401")).send().await.unwrap().status(), 401);
    srv.stop().await;
}

/// `hooks.paths` / `hooks.excludePaths`: the hook is asked only about matching paths; the
/// headers it may set are still stripped from every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_checks_only_its_paths() {
    let tmp = setup("  paths: [\"/echo/admin\", \"/echo/admin/**\"]\n  excludePaths: [\"/echo/admin/public/**\"]\n");
    let srv = serve(&tmp).await;
    let c = client();
    let at = |p: &str| format!("{}{p}", srv.base);
    // In its paths: gated.
    assert_eq!(c.get(at("/echo/admin/deny401")).send().await.unwrap().status(), 401);
    assert_eq!(c.get(at("/echo/admin")).send().await.unwrap().status(), 200);
    let got: Value = c.get(at("/echo/admin/x")).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["headers"]["x-user"], "alice", "{got}");
    let asked = seen(&c, &srv).await.len();
    assert_eq!(asked, 3);
    // Outside them, or excluded: not asked, and a client's x-user still never reaches the app.
    for p in ["/echo/deny401", "/echo/admin/public/deny401", "/echo/administrator/deny401"] {
        let resp = c.get(at(p)).header("x-user", "mallory").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{p}");
        let got: Value = resp.json().await.unwrap();
        assert!(got["headers"].get("x-user").is_none(), "{p}: {got}");
    }
    assert_eq!(seen(&c, &srv).await.len(), asked, "the hook was not asked");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hooks_stop_start_up_naming_the_key() {
    let tmp = setup("");
    let manifest = tmp.path().join("plugins/gate/manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("[x-user, x-identity]", "[x-user, x-forwarded-for]")).unwrap();
    let Err(err) = bind(&tmp).await else { panic!("start-up should fail") };
    assert!(err.message().contains("hooks.authResponseHeaders[1]"), "{}", err.message());
    for (extra, key, quoted) in [
        ("  paths: /admin\n", "`hooks.paths`", "found \"/admin\""),
        ("  paths: []\n", "`hooks.paths`", "at least one"),
        ("  paths: [\"/ok\", \"admin/**\"]\n", "`hooks.paths[1]`", "found \"admin/**\""),
        ("  excludePaths: [\"/a/[z\"]\n", "`hooks.excludePaths[0]`", "\"/a/[z\" is not a glob"),
        ("  onlyPaths: [\"/a\"]\n", "`hooks.onlyPaths`", "unknown key"),
    ] {
        std::fs::write(&manifest, format!("{text}{extra}")).unwrap();
        let Err(err) = bind(&tmp).await else { panic!("start-up should fail with {extra:?}") };
        assert!(err.message().contains(key) && err.message().contains(quoted), "{extra:?}: {}", err.message());
    }
    std::fs::write(&manifest, text.replace("entrypoint: index.js", "entrypoint: missing.js")).unwrap();
    std::fs::remove_file(tmp.path().join("plugins/gate/index.js")).unwrap();
    let Err(err) = bind(&tmp).await else { panic!("start-up should fail") };
    assert!(err.message().contains("@test/gate") && err.message().contains("entrypoint"), "{}", err.message());
}

async fn bind(tmp: &tempfile::TempDir) -> Result<marina_server::Server, marina_core::Error> {
    let mut raw = marina_server::RawConfig::new();
    raw.set("PORT", "0")
        .set("RUNTIME_WORKER_DIRS", tmp.path().join("apps").display().to_string())
        .set("RUNTIME_PLUGIN_DIRS", tmp.path().join("plugins").display().to_string())
        .set("RUNTIME_STATE_DIR", tmp.path().join("state").display().to_string())
        .set("NODE_ENV", "test");
    let config = marina_server::RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap();
    marina_server::Server::bind(config).await
}

/// The bundled example: on a fresh clone it is listed but disabled, so apps are not gated; once
/// enabled (with users) it answers 401, redirects browsers to its login page and passes
/// `x-user` to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_forward_auth_example() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("apps/echo");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(fixture("echo-all/index.js"), app.join("index.js")).unwrap();
    std::fs::write(app.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
    let c = client();

    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "bun").set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins());
    })
    .await;
    let listed: Value = c.get(format!("{}/api/plugins", srv.base)).send().await.unwrap().json().await.unwrap();
    assert!(listed.as_array().unwrap().iter().any(|p| p["name"] == "forward-auth"), "{listed}");
    let loaded: Value = c.get(format!("{}/api/plugins/loaded", srv.base)).send().await.unwrap().json().await.unwrap();
    assert!(!loaded.as_array().unwrap().iter().any(|p| p["name"] == "@marina/forward-auth"), "disabled: {loaded}");
    assert_eq!(c.get(format!("{}/echo/", srv.base)).send().await.unwrap().status(), 200, "apps are not gated");
    srv.stop().await;

    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/forward-auth");
    let plugin = tmp.path().join("plugins/forward-auth");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::copy(bundled.join("plugin.ts"), plugin.join("plugin.ts")).unwrap();
    let manifest = std::fs::read_to_string(bundled.join("manifest.yaml")).unwrap();
    assert!(manifest.contains("enabled: false") && manifest.contains("FORWARD_AUTH_USERS: \"\""));
    let manifest = manifest
        .replace("enabled: false", "enabled: true")
        .replace("FORWARD_AUTH_USERS: \"\"", "FORWARD_AUTH_USERS: \"t0ken:alice\"");
    std::fs::write(plugin.join("manifest.yaml"), manifest).unwrap();
    let srv = serve(&tmp).await;
    let at = |p: &str| format!("{}{p}", srv.base);

    let resp = c.get(at("/echo/x")).header("x-user", "mallory").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(common::header(&resp, "www-authenticate"), Some("Bearer realm=\"marina\""));
    let resp = c.get(at("/echo/x?y=1")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(common::header(&resp, "location"), Some("/forward-auth/login?redirect=%2Fecho%2Fx%3Fy%3D1"));
    let page = c.get(at("/forward-auth/login?redirect=%2Fecho%2Fx")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("action=\"/forward-auth/login\""));
    let got: Value = c
        .get(at("/echo/x"))
        .bearer_auth("t0ken")
        .header("x-user", "mallory")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["headers"]["x-user"], "alice", "{got}");
    let got: Value =
        c.get(at("/echo/x")).header("cookie", "fa_token=t0ken").send().await.unwrap().json().await.unwrap();
    assert_eq!(got["headers"]["x-user"], "alice");
    assert_eq!(c.get(at("/echo/x")).bearer_auth("wrong").send().await.unwrap().status(), 401);
    srv.stop().await;
}
