//! Plugins loaded from manifests in `RUNTIME_PLUGIN_DIRS` through the whole server: Buntime's
//! names, dependency order, skipped plugins, `GET /api/plugins`, `/api/plugins/loaded`,
//! `POST /api/plugins/reload` (old instances shut down), and start-up errors for cycles and
//! reserved bases.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderValue, Response};
use marina_core::{Body, Error};
use marina_plugins::{Catalog, Plugin, PluginEnv, PluginSpec, RequestContext, async_trait};
use marina_server::{RawConfig, RuntimeConfig, Server};
use serde_json::Value;

/// Stamps its name (and its `greeting` option) on every response; counts shutdowns.
struct Stamp {
    name: String,
    greeting: String,
    shutdowns: Arc<AtomicUsize>,
}

#[async_trait]
impl Plugin for Stamp {
    fn on_response(&self, resp: &mut Response<Body>, _ctx: &mut RequestContext) -> Result<(), Error> {
        resp.headers_mut()
            .append("x-stamp", HeaderValue::from_str(&format!("{}:{}", self.name, self.greeting)).unwrap());
        Ok(())
    }

    async fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
}

fn catalog(shutdowns: Arc<AtomicUsize>) -> Catalog {
    let mut c = Catalog::new();
    for name in ["alpha", "beta", "gamma"] {
        let shutdowns = shutdowns.clone();
        c.register(
            name,
            Arc::new(move |spec: &PluginSpec, _env: &PluginEnv| {
                let greeting = spec.options.get("greeting").and_then(Value::as_str).unwrap_or("-").to_string();
                Ok(Arc::new(Stamp { name: spec.name.clone(), greeting, shutdowns: shutdowns.clone() })
                    as Arc<dyn Plugin>)
            }),
        );
    }
    c
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

async fn bind(plugins: &Path, apps: &Path, state: &Path, catalog: Catalog) -> Result<Server, Error> {
    let mut raw = RawConfig::new();
    raw.set("PORT", "0")
        .set("RUNTIME_WORKER_DIRS", apps.display().to_string())
        .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
        .set("RUNTIME_STATE_DIR", state.display().to_string())
        .set("NODE_ENV", "test");
    let config = RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap();
    Server::bind_with_catalog(config, catalog, Vec::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_load_in_dependency_order_and_reload_replaces_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    // Scan order is alphabetical; the dependency graph reorders: gamma → beta → alpha.
    write(
        &dir.join("a/manifest.yaml"),
        "name: \"@buntime/plugin-alpha\"\nbase: /alpha\ndependencies: [\"@buntime/plugin-beta\"]\ngreeting: hi\nmenus: [{title: Alpha}]\n",
    );
    write(&dir.join("b/manifest.yaml"), "name: plugin-beta\noptionalDependencies: [gamma, nowhere]\n");
    write(&dir.join("@acme/g/manifest.yaml"), "name: gamma\n");
    write(&dir.join("d/manifest.yaml"), "name: delta\n");
    write(&dir.join("e/manifest.yaml"), "name: alpha-needy\ndependencies: [missing]\n");
    write(&dir.join("f/manifest.yaml"), "name: dormant\nenabled: false\n");
    let apps = tmp.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    let shutdowns = Arc::new(AtomicUsize::new(0));
    let server = bind(&dir, &apps, &tmp.path().join("state"), catalog(shutdowns.clone())).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));

    let listed: Value = reqwest::get(format!("{base}/api/plugins")).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["@acme/g", "a", "b", "d", "e", "f"], "every plugin dir on disk");

    let loaded: Value = reqwest::get(format!("{base}/api/plugins/loaded")).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = loaded.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gamma", "plugin-beta", "@buntime/plugin-alpha"]);
    assert_eq!(loaded[2]["base"], "/alpha");
    assert_eq!(loaded[2]["dependencies"][0], "@buntime/plugin-beta");
    assert_eq!(loaded[2]["menus"][0]["title"], "Alpha");

    let resp = reqwest::get(format!("{base}/nothing")).await.unwrap();
    let stamps: Vec<_> = resp.headers().get_all("x-stamp").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(stamps, ["@buntime/plugin-alpha:hi", "plugin-beta:-", "gamma:-"], "on_response in reverse load order");

    // Drop beta: alpha needs it, so only gamma stays; the three old instances are shut down.
    std::fs::remove_dir_all(dir.join("b")).unwrap();
    let client = reqwest::Client::new();
    let resp =
        client.post(format!("{base}/api/plugins/reload")).header("x-buntime-internal", "true").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["plugins"].as_array().unwrap().len(), 1);
    assert_eq!(body["plugins"][0]["name"], "gamma");
    assert_eq!(shutdowns.load(Ordering::SeqCst), 3);

    // A broken manifest fails the reload and keeps the loaded set.
    write(&dir.join("h/manifest.yaml"), "name: gamma2\nbase: not-a-path\n");
    let resp =
        client.post(format!("{base}/api/plugins/reload")).header("x-buntime-internal", "true").send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("`base`"), "{body}");
    let loaded: Value = reqwest::get(format!("{base}/api/plugins/loaded")).await.unwrap().json().await.unwrap();
    assert_eq!(loaded.as_array().unwrap().len(), 1);

    let _ = tx.send(());
    task.await.unwrap().unwrap();
    assert_eq!(shutdowns.load(Ordering::SeqCst), 4, "shutdown stops the remaining plugin");
}

#[tokio::test]
async fn cycles_and_reserved_bases_stop_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let apps = tmp.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    let dir = tmp.path().join("cycle");
    write(&dir.join("a/manifest.yaml"), "name: alpha\ndependencies: [beta]\n");
    write(&dir.join("b/manifest.yaml"), "name: beta\noptionalDependencies: [alpha]\n");
    let err = bind(&dir, &apps, &tmp.path().join("s1"), catalog(Default::default())).await.err().unwrap();
    assert!(err.message().contains("plugin dependency cycle: alpha → beta → alpha"), "{}", err.message());
    assert!(err.message().contains("Circular dependency"), "Buntime's words: {}", err.message());

    let dir = tmp.path().join("reserved");
    write(&dir.join("a/manifest.yaml"), "name: alpha\nbase: /api\n");
    let err = bind(&dir, &apps, &tmp.path().join("s2"), catalog(Default::default())).await.err().unwrap();
    assert!(err.message().contains("\"/api\" is reserved"), "{}", err.message());
    assert!(err.message().contains("cannot use reserved path"), "Buntime's words: {}", err.message());

    let dir = tmp.path().join("bad-base");
    write(&dir.join("a/manifest.yaml"), "name: alpha\nbase: /invalid base path\n");
    let err = bind(&dir, &apps, &tmp.path().join("s3"), catalog(Default::default())).await.err().unwrap();
    assert!(err.message().contains("invalid base path"), "Buntime's words: {}", err.message());
}

/// Fails its `init`; `hooks` says whether it checks requests.
struct Brittle {
    hooks: bool,
}

#[async_trait]
impl Plugin for Brittle {
    fn phases(&self) -> marina_plugins::Phases {
        if self.hooks { marina_plugins::Phases::ALL } else { marina_plugins::Phases::NONE }
    }

    async fn init(&self, _env: &PluginEnv) -> Result<(), Error> {
        Err(Error::internal("the identity provider is unreachable"))
    }
}

fn brittle_catalog() -> Catalog {
    let mut c = catalog(Default::default());
    for (name, hooks) in [("guard", true), ("extra", false)] {
        c.register(
            name,
            Arc::new(move |_: &PluginSpec, _: &PluginEnv| Ok(Arc::new(Brittle { hooks }) as Arc<dyn Plugin>)),
        );
    }
    c
}

/// A plugin that checks requests and fails to start stops start-up (serving without it would
/// fail open); with `onRequestFailOpen: true`, or without hooks, it is skipped with its
/// dependents and the rest serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_checking_plugin_that_fails_to_start_stops_start_up_unless_fail_open() {
    let tmp = tempfile::tempdir().unwrap();
    let apps = tmp.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();

    let dir = tmp.path().join("closed");
    write(&dir.join("g/manifest.yaml"), "name: guard\n");
    let err = bind(&dir, &apps, &tmp.path().join("s1"), brittle_catalog()).await.err().expect("start-up must fail");
    assert!(
        err.message().contains("plugin 'guard' failed to start: the identity provider is unreachable"),
        "{}",
        err.message()
    );

    let dir = tmp.path().join("open");
    write(&dir.join("g/manifest.yaml"), "name: guard\nonRequestFailOpen: true\n");
    write(&dir.join("e/manifest.yaml"), "name: extra\nbase: /extra\n");
    write(&dir.join("a/manifest.yaml"), "name: alpha\ndependencies: [extra]\n");
    write(&dir.join("b/manifest.yaml"), "name: beta\n");
    let server = bind(&dir, &apps, &tmp.path().join("s2"), brittle_catalog()).await.expect("skipped, not fatal");
    let addr = server.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let loaded: Value = reqwest::get(format!("http://{addr}/api/plugins/loaded")).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = loaded.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"beta"), "{loaded}");
    for gone in ["guard", "extra", "alpha"] {
        assert!(!names.contains(&gone), "{gone} should be skipped: {loaded}");
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
