//! The plugin phases through the whole server over real HTTP: hook order, rewriting, answering,
//! identity reaching a real worker, plugin routes under their base, reverse `on_response`, and
//! every way an `on_request` hook can fail (error, panic, timeout; fail-closed and fail-open).
//! The plugins here are real implementations of the trait, registered in code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod common;

use http::{HeaderValue, Request, Response, StatusCode};
use marina_core::{Body, Error, body};
use marina_plugins::{Identity, Loaded, Outcome, Plugin, PluginSpec, RequestContext, async_trait};
use serde_json::{Value, json};

/// Adds `x-seen-by` to the request and appends its name to `x-order` on the response.
struct Tagger(&'static str);

#[async_trait]
impl Plugin for Tagger {
    async fn on_request(&self, req: &mut Request<Body>, _ctx: &mut RequestContext) -> Result<Outcome, Error> {
        let seen = match req.headers().get("x-seen-by").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev},{}", self.0),
            None => self.0.to_string(),
        };
        req.headers_mut().insert("x-seen-by", HeaderValue::from_str(&seen).unwrap());
        Ok(Outcome::Continue)
    }

    fn on_response(&self, resp: &mut Response<Body>, _ctx: &mut RequestContext) -> Result<(), Error> {
        resp.headers_mut().append("x-order", HeaderValue::from_static(self.0));
        Ok(())
    }
}

/// Answers 401 without `x-key`, sets the identity with it, answers `/teapot` itself.
struct Gatekeeper;

#[async_trait]
impl Plugin for Gatekeeper {
    async fn on_request(&self, req: &mut Request<Body>, ctx: &mut RequestContext) -> Result<Outcome, Error> {
        if req.uri().path() == "/teapot" {
            let mut resp = Response::new(body::full("short and stout"));
            *resp.status_mut() = StatusCode::IM_A_TEAPOT;
            return Ok(Outcome::Respond(resp));
        }
        if !req.uri().path().starts_with("/echo") {
            return Ok(Outcome::Continue);
        }
        match req.headers().get("x-key").and_then(|v| v.to_str().ok()) {
            Some("good") => {
                ctx.identity = Some(std::sync::Arc::new(Identity {
                    id: "user-1".into(),
                    name: None,
                    roles: vec!["editor".into()],
                    kind: marina_auth::IdentityKind::Apikey,
                    permissions: Vec::new(),
                    claims: Some(json!({"name": "Zoë"})),
                    key_id: None,
                }));
                Ok(Outcome::Continue)
            }
            _ => Err(Error::new(StatusCode::UNAUTHORIZED, "AUTH_REQUIRED", "a key is required")),
        }
    }
}

/// Answers under its base; anything but `/hello` is a 404 that must not fall through.
struct Routes;

#[async_trait]
impl Plugin for Routes {
    fn has_routes(&self) -> bool {
        true
    }

    async fn handle(&self, req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        if req.uri().path() != "/hello" {
            return Err(Error::not_found(format!("no thing at {}", req.uri().path())));
        }
        marina_plugins::api::json(&json!({ "path": req.uri().to_string(), "original": &*ctx.path }))
    }
}

enum Mode {
    Error,
    Panic,
    Sleep,
}

/// Fails its hook on paths starting with `/fail`.
struct Failing(Mode);

#[async_trait]
impl Plugin for Failing {
    async fn on_request(&self, req: &mut Request<Body>, _ctx: &mut RequestContext) -> Result<Outcome, Error> {
        if !req.uri().path().starts_with("/fail") {
            return Ok(Outcome::Continue);
        }
        match self.0 {
            Mode::Error => Err(Error::internal("the policy store at /var/secret is unreachable")),
            Mode::Panic => panic!("hook bug"),
            Mode::Sleep => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Outcome::Continue)
            }
        }
    }
}

fn spec(name: &str, base: &str, fail_open: bool) -> PluginSpec {
    let mut spec = PluginSpec::new(name, base);
    spec.fail_open = fail_open;
    spec.hook_timeout = Duration::from_millis(300);
    spec
}

fn echo_app() -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workers/tests/apps/js-echo");
    let to: PathBuf = apps.path().join("echo");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(to.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
    std::fs::create_dir_all(apps.path().join("site")).unwrap();
    std::fs::write(apps.path().join("site/index.html"), "<html><body>site</body></html>").unwrap();
    apps
}

fn node(r: &mut marina_server::RawConfig) {
    r.set("RUNTIME_JS", "node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_and_identity_reaches_the_worker() {
    let apps = echo_app();
    let plugins = vec![
        Loaded::new(spec("first", "", false), Arc::new(Tagger("first"))),
        Loaded::new(spec("gate", "", false), Arc::new(Gatekeeper)),
        Loaded::new(spec("second", "", false), Arc::new(Tagger("second"))),
    ];
    let srv = common::start_with(apps.path(), node, plugins).await;
    let client = reqwest::Client::new();

    let resp = client
        .get(format!("{}/echo/echo", srv.base))
        .header("x-key", "good")
        .header("x-identity", r#"{"sub":"root"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let order: Vec<_> = resp.headers().get_all("x-order").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(order, ["second", "first"], "on_response runs in reverse load order");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["seenBy"], "first,second");
    let identity: Value = serde_json::from_str(body["identity"].as_str().unwrap()).unwrap();
    assert_eq!(identity["id"], "user-1", "the client's own x-identity is dropped");
    assert_eq!(identity["claims"]["name"], "Zoë");

    // Without a key: the gate's client error is the answer, rendered as JSON, and the
    // on_response hooks still run on it; the client's x-identity gets it nowhere.
    let resp =
        client.get(format!("{}/echo/echo", srv.base)).header("x-identity", r#"{"sub":"root"}"#).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers().get_all("x-order").iter().count(), 2);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "AUTH_REQUIRED");

    // A hook that answers skips routing.
    let resp = client.get(format!("{}/teapot", srv.base)).send().await.unwrap();
    assert_eq!(resp.status(), 418);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), "short and stout");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_routes_take_their_base_and_their_404_is_final() {
    let apps = echo_app();
    let plugins = vec![
        Loaded::new(spec("things", "/site/things", false), Arc::new(Routes)),
        Loaded::new(spec("short", "/site", false), Arc::new(Routes)),
    ];
    let srv = common::start_with(apps.path(), node, plugins).await;
    let get = |path: &str| reqwest::get(format!("{}{path}", srv.base));

    let resp = get("/site/things/hello?x=1").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"path": "/hello?x=1", "original": "/site/things/hello"}), "longest base first");
    let body: Value = get("/site/hello").await.unwrap().json().await.unwrap();
    assert_eq!(body["original"], "/site/hello");
    // The plugin's base shadows the app of the same name, and its 404 does not fall through.
    let resp = get("/site/").await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "NOT_FOUND");
    // `/sitemap` is not under `/site`.
    let resp = get("/sitemap").await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "APP_NOT_FOUND");

    let loaded: Value = get("/api/plugins/loaded").await.unwrap().json().await.unwrap();
    assert_eq!(loaded[0]["name"], "things");
    assert_eq!(loaded[1]["base"], "/site");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hooks_fail_closed_with_503_unless_fail_open() {
    let apps = echo_app();
    for (mode, reason) in [(Mode::Error, "error"), (Mode::Panic, "panic"), (Mode::Sleep, "timeout")] {
        let plugins = vec![Loaded::new(spec("flaky", "", false), Arc::new(Failing(mode)))];
        let srv = common::start_with(apps.path(), |_| {}, plugins).await;
        let resp = reqwest::get(format!("{}/failing", srv.base)).await.unwrap();
        assert_eq!(resp.status(), 503, "{reason}");
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "PLUGIN_ONREQUEST_FAILED", "{reason}");
        assert_eq!(body["data"]["plugin"], "flaky");
        assert_eq!(body["data"]["reason"], reason);
        assert!(!id.is_empty());
        // Other paths are untouched by the failing branch.
        let resp = reqwest::get(format!("{}/site/", srv.base)).await.unwrap();
        assert_eq!(resp.status(), 200, "{reason}");
        srv.stop().await;
    }
    for mode in [Mode::Error, Mode::Panic, Mode::Sleep] {
        let plugins = vec![Loaded::new(spec("lenient", "", true), Arc::new(Failing(mode)))];
        let srv = common::start_with(apps.path(), |_| {}, plugins).await;
        // fail-open: the hook is skipped and routing goes on (no app named `failing`).
        let resp = reqwest::get(format!("{}/failing", srv.base)).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.json::<Value>().await.unwrap()["code"], "APP_NOT_FOUND");
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_shows_only_the_code_and_request_id_of_server_errors() {
    let apps = echo_app();
    let plugins = vec![Loaded::new(spec("flaky", "", false), Arc::new(Failing(Mode::Error)))];
    let srv = common::start_with(
        apps.path(),
        |r| {
            r.set("NODE_ENV", "production");
        },
        plugins,
    )
    .await;
    let resp = reqwest::get(format!("{}/failing", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 503);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = resp.text().await.unwrap();
    assert!(!text.contains("/var/secret"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "PLUGIN_ONREQUEST_FAILED");
    assert_eq!(body["data"]["requestId"], id.as_str());
    assert!(body["message"].as_str().unwrap().contains(&id));

    // Client errors keep their message.
    let resp = reqwest::get(format!("{}/nope/", srv.base)).await.unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "no app matches 'nope'");
    srv.stop().await;
}
