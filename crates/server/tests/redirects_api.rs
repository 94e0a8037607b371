//! The proxy plugin through the whole server over real HTTP: `/redirects/api/rules` with
//! Buntime's bodies, every kind of bad input, rules live on the next request, persistence on
//! SQLite and PostgreSQL (when `MARINA_TEST_DATABASE_URL` is set), and open WebSockets that
//! survive rule changes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marina_core::body::{self, Body};
use marina_plugins::Loaded;
use marina_plugins::proxy::ProxyPlugin;
use marina_server::{RawConfig, RuntimeConfig, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

struct Running {
    base: String,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("server stops").unwrap();
    }

    fn api(&self, path: &str) -> String {
        format!("{}/redirects/api{path}", self.base)
    }
}

/// A server with the proxy plugin over `state` (and `database_url` when given); `static_rules`
/// go into the plugin's configuration.
async fn start(state: &Path, database_url: Option<&str>, static_rules: Value) -> Running {
    start_with(state, database_url, static_rules, &[]).await
}

/// [`start`] with more configuration variables.
async fn start_with(state: &Path, database_url: Option<&str>, static_rules: Value, vars: &[(&str, &str)]) -> Running {
    let apps = state.join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    let mut raw = RawConfig::new();
    raw.set("PORT", "0")
        .set("RUNTIME_WORKER_DIRS", apps.display().to_string())
        .set("RUNTIME_STATE_DIR", state.display().to_string())
        .set("NODE_ENV", "test");
    if let Some(url) = database_url {
        raw.set("DATABASE_URL", url);
    }
    for (var, value) in vars {
        raw.set(var, *value);
    }
    let config = RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap();
    let mut spec = ProxyPlugin::default_spec();
    spec.options.insert("rules".into(), static_rules);
    let plugin = Arc::new(ProxyPlugin::new(&spec));
    run(Server::bind_with(config, vec![Loaded::new(spec, plugin)]).await.expect("server binds"))
}

/// Runs `server` until [`Running::stop`].
fn run(server: Server) -> Running {
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running { base: format!("http://{addr}"), addr, stop: tx, task }
}

/// A fresh clone loads the proxy plugin: the bundled `examples/plugins` (the default plugin dir
/// when marina runs from the repository) has its manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_manifest_loads_the_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let apps = tmp.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins");
    let mut raw = RawConfig::new();
    raw.set("PORT", "0")
        .set("RUNTIME_WORKER_DIRS", apps.display().to_string())
        .set("RUNTIME_STATE_DIR", tmp.path().display().to_string())
        .set("RUNTIME_PLUGIN_DIRS", bundled.display().to_string())
        .set("NODE_ENV", "test");
    let config = RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap();
    let srv = run(Server::bind(config).await.expect("server binds"));
    let (status, loaded) = send("GET", &format!("{}/api/plugins/loaded", srv.base), None).await;
    assert_eq!(status, StatusCode::OK);
    let proxy = loaded.as_array().unwrap().iter().find(|p| p["name"] == "@buntime/plugin-proxy");
    assert_eq!(proxy.map(|p| p["base"].clone()), Some(json!("/redirects")), "{loaded}");
    let (status, rules) = send("GET", &srv.api("/rules"), None).await;
    assert_eq!((status, rules), (StatusCode::OK, json!([])));

    let up = upstream("one").await;
    let body = format!(r#"{{"pattern":"^/ext/(.*)$","target":"http://{up}","rewrite":"/$1"}}"#);
    let (status, rule) = send("POST", &srv.api("/rules"), Some(&body)).await;
    assert_eq!(status, 201, "{rule}");
    let (status, got) = who(&srv, "/ext/a").await;
    assert_eq!((status, got["who"].as_str(), got["path"].as_str()), (StatusCode::OK, Some("one"), Some("/a")));
    srv.stop().await;
}

/// An upstream answering `{"who", "path"}`.
async fn upstream(who: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let v = json!({"who": who, "path": req.uri().to_string()});
                Ok::<_, Infallible>(Response::new(body::full(v.to_string())) as Response<Body>)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc));
        }
    });
    addr
}

/// A WebSocket echo upstream.
async fn ws_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A request as a browser page on marina's own origin sends it (no key: the API is open until
/// a key exists, but state changes need a same-host Origin).
async fn send(method: &str, url: &str, body: Option<&str>) -> (StatusCode, Value) {
    send_with(method, url, body, None).await
}

async fn send_with(method: &str, url: &str, body: Option<&str>, key: Option<&str>) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let origin = url.split("/redirects").next().unwrap().to_string();
    let mut req = client.request(method.parse().unwrap(), url).header("origin", origin);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn who(srv: &Running, path: &str) -> (StatusCode, Value) {
    send("GET", &format!("{}{path}", srv.base), None).await
}

/// Create, read, update, toggle, reorder, delete; each change live on the very next request.
async fn crud_and_live_changes(state: &Path, database_url: Option<&str>) {
    let one = upstream("one").await;
    let two = upstream("two").await;
    let srv = start(state, database_url, json!([])).await;

    let body = format!(r#"{{"name":"ext","pattern":"^/ext/(.*)$","target":"http://{one}","rewrite":"/v1/$1"}}"#);
    let (status, rule) = send("POST", &srv.api("/rules"), Some(&body)).await;
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID");
    assert_eq!(
        rule,
        json!({"enabled": true, "id": id, "name": "ext", "order": 0, "pattern": "^/ext/(.*)$", "readonly": false,
               "rewrite": "/v1/$1", "target": format!("http://{one}"), "ws": true}),
        "Buntime's body"
    );
    // Live on the very next request.
    let (status, got) = who(&srv, "/ext/a?b=1").await;
    assert_eq!((status, got["who"].as_str(), got["path"].as_str()), (StatusCode::OK, Some("one"), Some("/v1/a?b=1")));

    let (status, list) = send("GET", &srv.api("/rules"), None).await;
    assert_eq!((status, list.as_array().unwrap().len()), (StatusCode::OK, 1));
    let (status, got) = send("GET", &srv.api(&format!("/rules/{id}")), None).await;
    assert_eq!((status, &got), (StatusCode::OK, &rule));

    // PUT merges: the target changes, `rewrite: null` removes the rewrite, `id` is ignored.
    let body = format!(r#"{{"target":"http://{two}","rewrite":null,"id":"other"}}"#);
    let (status, got) = send("PUT", &srv.api(&format!("/rules/{id}")), Some(&body)).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!((got["id"].as_str(), got["name"].as_str(), got.get("rewrite")), (Some(id.as_str()), Some("ext"), None));
    let (_, got) = who(&srv, "/ext/a").await;
    assert_eq!((got["who"].as_str(), got["path"].as_str()), (Some("two"), Some("/ext/a")));

    // Toggle off: the path is no longer proxied (marina answers 404 for an unknown app).
    let (status, got) = send("PATCH", &srv.api(&format!("/rules/{id}/toggle")), None).await;
    assert_eq!((status, got["enabled"].as_bool()), (StatusCode::OK, Some(false)));
    let (status, _) = who(&srv, "/ext/a").await;
    assert_eq!(status, 404);
    let (_, got) = send("PATCH", &srv.api(&format!("/rules/{id}/toggle")), None).await;
    assert_eq!(got["enabled"], true);

    // Reorder: a catch-all created second loses until it is moved first.
    let body = format!(r#"{{"name":"all","pattern":"^/ext","target":"http://{one}"}}"#);
    let (_, all) = send("POST", &srv.api("/rules"), Some(&body)).await;
    let all_id = all["id"].as_str().unwrap().to_string();
    assert_eq!(who(&srv, "/ext/z").await.1["who"], "two");
    let body = json!({"ids": [all_id, id]}).to_string();
    let (status, list) = send("PUT", &srv.api("/rules/reorder"), Some(&body)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["id"], all_id.as_str());
    assert_eq!((list[0]["order"].as_i64(), list[1]["order"].as_i64()), (Some(0), Some(1)));
    assert_eq!(who(&srv, "/ext/z").await.1["who"], "one");

    // A WebSocket opened through a rule survives that rule being deleted.
    let ws_up = ws_upstream().await;
    let body = format!(r#"{{"pattern":"^/live","target":"ws://{ws_up}"}}"#);
    let (_, live) = send("POST", &srv.api("/rules"), Some(&body)).await;
    let (mut sock, _) = tokio_tungstenite::connect_async(format!("ws://{}/live", srv.addr)).await.unwrap();
    let (status, done) = send("DELETE", &srv.api(&format!("/rules/{}", live["id"].as_str().unwrap())), None).await;
    assert_eq!((status, done), (StatusCode::OK, json!({"success": true})));
    sock.send(Message::text("still here")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(20), sock.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.to_text().unwrap(), "still here");
    assert!(tokio_tungstenite::connect_async(format!("ws://{}/live", srv.addr)).await.is_err(), "no rule, no socket");

    // Rules outlive the process.
    srv.stop().await;
    let srv = start(state, database_url, json!([])).await;
    let (_, list) = send("GET", &srv.api("/rules"), None).await;
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [all_id.as_str(), id.as_str()]);
    assert_eq!(who(&srv, "/ext/z").await.1["who"], "one");
    for rid in [&all_id, &id] {
        assert_eq!(send("DELETE", &srv.api(&format!("/rules/{rid}")), None).await.0, 200);
    }
    let (status, got) = send("GET", &srv.api(&format!("/rules/{id}")), None).await;
    assert_eq!((status, got["code"].as_str()), (StatusCode::NOT_FOUND, Some("RULE_NOT_FOUND")));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_on_sqlite() {
    let state = tempfile::tempdir().unwrap();
    crud_and_live_changes(state.path(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_on_postgres() {
    let Ok(url) = std::env::var("MARINA_TEST_DATABASE_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI must test PostgreSQL (source .ci/postgres.sh)");
        eprintln!("skip: MARINA_TEST_DATABASE_URL is unset; PostgreSQL case skipped");
        return;
    };
    // A clean table: earlier runs share the database.
    let state = tempfile::tempdir().unwrap();
    let store = marina_store::Store::open(Some(&url), state.path()).await.unwrap();
    store.migrate_system().await.unwrap();
    store.execute("DELETE FROM marina_proxy_rules", &[]).await.unwrap();
    // Other test binaries (data services, auth) leave API keys in the shared database, and once
    // a key exists the rules API needs one; this case is about the rules, so it starts keyless.
    store.execute("DELETE FROM marina_api_keys", &[]).await.unwrap();
    crud_and_live_changes(state.path(), Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_a_clear_error() {
    let state = tempfile::tempdir().unwrap();
    let srv =
        start(state.path(), None, json!([{"id": "fixed", "pattern": "^/fixed", "target": "http://127.0.0.1:9"}])).await;
    let own = srv.addr;
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        // (method, body, status, code, field or text the message must name)
        ("POST", "not json".into(), 400, "INVALID_JSON", "invalid JSON"),
        ("POST", "[1,2]".into(), 400, "INVALID_JSON", "an array"),
        ("POST", r#"{"target":"http://a"}"#.into(), 400, "INVALID_PROXY_RULE", "pattern"),
        ("POST", r#"{"pattern":"^/x"}"#.into(), 400, "INVALID_PROXY_RULE", "target"),
        ("POST", r#"{"pattern":"(","target":"http://a"}"#.into(), 400, "INVALID_PROXY_RULE", "pattern"),
        ("POST", r#"{"pattern":"^/(?!x)","target":"http://a"}"#.into(), 400, "INVALID_PROXY_RULE", "look-around"),
        ("POST", r#"{"pattern":"a{1000}{1000}","target":"http://a"}"#.into(), 400, "INVALID_PROXY_RULE", "pattern"),
        (
            "POST",
            r#"{"pattern":"^/","target":"http://169.254.169.254/"}"#.into(),
            400,
            "INVALID_PROXY_RULE",
            "metadata",
        ),
        ("POST", format!(r#"{{"pattern":"^/","target":"http://{own}"}}"#), 400, "INVALID_PROXY_RULE", "own listener"),
        ("POST", r#"{"pattern":"^/","target":"gopher://a"}"#.into(), 400, "INVALID_PROXY_RULE", "target"),
        (
            "POST",
            r#"{"pattern":"^/(a)","target":"http://a","rewrite":"/$2"}"#.into(),
            400,
            "INVALID_PROXY_RULE",
            "rewrite",
        ),
        (
            "POST",
            r#"{"pattern":"^/","target":"http://a","enabled":"yes"}"#.into(),
            400,
            "INVALID_PROXY_RULE",
            "enabled",
        ),
        (
            "POST",
            r#"{"pattern":"^/","target":"http://a","changeorigin":true}"#.into(),
            400,
            "INVALID_PROXY_RULE",
            "changeorigin",
        ),
        (
            "POST",
            r#"{"pattern":"^/","target":"http://a","headers":{"bad name":"x"}}"#.into(),
            400,
            "INVALID_PROXY_RULE",
            "headers.bad name",
        ),
        (
            "POST",
            r#"{"pattern":"^/","target":"http://a","headers":{"x":1}}"#.into(),
            400,
            "INVALID_PROXY_RULE",
            "headers.x",
        ),
        ("POST", r#"{"pattern":"^/","target":"http://a","order":"first"}"#.into(), 400, "INVALID_PROXY_RULE", "order"),
        ("PUT /rules/nope", r#"{"name":"x"}"#.into(), 404, "RULE_NOT_FOUND", "nope"),
        ("PUT /rules/fixed", r#"{"name":"x"}"#.into(), 403, "RULE_READONLY", "fixed"),
        ("DELETE /rules/fixed", String::new(), 403, "RULE_READONLY", "fixed"),
        ("PATCH /rules/fixed/toggle", String::new(), 403, "RULE_READONLY", "fixed"),
        ("PATCH /rules/nope/toggle", String::new(), 404, "RULE_NOT_FOUND", "nope"),
        ("DELETE /rules/nope", String::new(), 404, "RULE_NOT_FOUND", "nope"),
        ("PUT /rules/reorder", r#"{"ids":"x"}"#.into(), 400, "INVALID_JSON", "ids"),
        ("PUT /rules/reorder", r#"{"ids":[],"extra":1}"#.into(), 400, "INVALID_JSON", "extra"),
        ("PUT /rules/reorder", r#"{"ids":["fixed"]}"#.into(), 400, "INVALID_REORDER", "configuration"),
        ("PUT /rules/reorder", r#"{"ids":["ghost"]}"#.into(), 400, "INVALID_REORDER", "ghost"),
        ("DELETE /rules", String::new(), 405, "METHOD_NOT_ALLOWED", ""),
    ];
    for (what, body, status, code, needle) in cases {
        let (method, path) = what.split_once(' ').unwrap_or((what, "/rules"));
        let (got, v) = send(method, &srv.api(path), (!body.is_empty()).then_some(body.as_str())).await;
        assert_eq!(got.as_u16(), status, "{what} {body}: {v}");
        assert_eq!(v["code"], code, "{what} {body}: {v}");
        assert_eq!(v["success"], false);
        let text = v.to_string();
        assert!(text.contains(needle), "{what} {body}: '{v}' should mention '{needle}'");
    }
    // A bad PUT leaves the rule as it was.
    let (_, rule) = send("POST", &srv.api("/rules"), Some(r#"{"pattern":"^/ok","target":"http://127.0.0.1:9"}"#)).await;
    let id = rule["id"].as_str().unwrap();
    let (status, v) = send("PUT", &srv.api(&format!("/rules/{id}")), Some(r#"{"pattern":"("}"#)).await;
    assert_eq!((status.as_u16(), v["data"]["field"].as_str()), (400, Some("pattern")));
    assert_eq!(send("GET", &srv.api(&format!("/rules/{id}")), None).await.1, rule);
    // An upstream that is down is the upstream's failure (502), not the plugin's (503).
    let (status, v) = who(&srv, "/ok").await;
    assert_eq!((status.as_u16(), v["code"].as_str()), (502, Some("UPSTREAM_UNREACHABLE")), "{v}");
    // Duplicates and omissions in a reorder.
    let (_, v) = send("PUT", &srv.api("/rules/reorder"), Some(&json!({"ids": [id, id]}).to_string())).await;
    assert_eq!(v["data"]["field"], "ids[1]", "{v}");
    let (_, v) = send("PUT", &srv.api("/rules/reorder"), Some(r#"{"ids":[]}"#)).await;
    assert_eq!(v["data"]["field"], "ids", "{v}");
    // The configuration rule is listed, read-only, first.
    let (_, list) = send("GET", &srv.api("/rules"), None).await;
    assert_eq!((list[0]["id"].as_str(), list[0]["readonly"].as_bool()), (Some("fixed"), Some(true)));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_behind_the_api_keys() {
    use marina_auth::keys::{KeyStore, NewKey};
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), None, json!([])).await;
    let body = r#"{"pattern":"^/k","target":"http://127.0.0.1:9"}"#;
    // Keyless, before any key exists: writes need a same-host Origin (CSRF).
    let resp = reqwest::Client::new().post(srv.api("/rules")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "ORIGIN_REQUIRED");

    // Once a key exists, every call needs one; reading takes any key, changing an admin key.
    let store = marina_store::Store::open(None, state.path()).await.unwrap();
    // As `marina keys create` does: the server's new marina.db may still be being migrated.
    store.migrate_system().await.unwrap();
    let keys = KeyStore::new(store);
    let key =
        |name: &str, role: &str| NewKey { name: Some(name.into()), role: Some(role.into()), ..Default::default() };
    let viewer = keys.create(key("v", "viewer"), None).await.unwrap().key;
    let admin = keys.create(key("a", "admin"), None).await.unwrap().key;
    let (status, v) = send("GET", &srv.api("/rules"), None).await;
    assert_eq!((status.as_u16(), v["code"].as_str()), (401, Some("AUTH_REQUIRED")));
    let (status, v) = send_with("GET", &srv.api("/rules"), None, Some("btk_wrong")).await;
    assert_eq!((status.as_u16(), v["code"].as_str()), (401, Some("API_KEY_INVALID")));
    let (status, _) = send_with("GET", &srv.api("/rules"), None, Some(&viewer)).await;
    assert_eq!(status, 200);
    let (status, v) = send_with("POST", &srv.api("/rules"), Some(body), Some(&viewer)).await;
    assert_eq!((status.as_u16(), v["code"].as_str()), (403, Some("PERMISSION_DENIED")));
    let (status, v) = send_with("POST", &srv.api("/rules"), Some(body), Some(&admin)).await;
    assert_eq!(status, 201, "{v}");
    srv.stop().await;
}

/// `RUNTIME_PROXY_DENY` and `RUNTIME_PROXY_ALLOW` reach the rules' policy; a target that is a
/// spelling of marina's own address the validator cannot read (`127.1`) is caught as a loop
/// when it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_ranges_come_from_the_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream("one").await;
    let vars = [("RUNTIME_PROXY_DENY", "127.0.0.0/8"), ("RUNTIME_PROXY_ALLOW", "169.254.7.0/24")];
    let srv = start_with(tmp.path(), None, json!([]), &vars).await;
    let post = |target: String| format!(r#"{{"pattern":"^/x","target":"{target}"}}"#);
    let (status, body) = send("POST", &srv.api("/rules"), Some(&post(format!("http://127.0.0.1:{}", up.port())))).await;
    assert_eq!(
        (status, body["code"].as_str(), body["data"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_PROXY_RULE"), Some("target")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("denies"), "{body}");
    let (status, body) = send("POST", &srv.api("/rules"), Some(&post("http://169.254.7.1".into()))).await;
    assert_eq!(status, 201, "an allowed link-local range: {body}");
    let (status, body) = send("POST", &srv.api("/rules"), Some(&post("http://169.254.169.254".into()))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the rest of link-local is still refused: {body}");
    srv.stop().await;

    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path(), None, json!([])).await;
    let body = format!(r#"{{"pattern":"^/loop","target":"http://127.1:{}"}}"#, srv.addr.port());
    let (status, rule) = send("POST", &srv.api("/rules"), Some(&body)).await;
    assert_eq!(status, 201, "a host name is checked when it is used: {rule}");
    let (status, got) = who(&srv, "/loop").await;
    assert_eq!((status, got["code"].as_str()), (StatusCode::BAD_GATEWAY, Some("PROXY_TARGET_REFUSED")), "{got}");
    assert!(got["message"].as_str().unwrap().contains("would loop"), "{got}");
    srv.stop().await;
}

/// A database of its own on the test server, so that this case neither sees nor disturbs the
/// rules and API keys other cases write into the shared one.
async fn fresh_postgres_database(url: &str, state: &Path) -> String {
    let store = marina_store::Store::open(Some(url), state).await.unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let name = format!("marina_proxy_follow_{}_{nanos}", std::process::id());
    store.execute(&format!("CREATE DATABASE {name}"), &[]).await.unwrap();
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').unwrap();
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Two marina instances on one PostgreSQL database: a rule created, changed, toggled or deleted
/// through one instance's API is followed by the other without a restart (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_changed_on_one_instance_reach_another_on_postgres() {
    let Ok(url) = std::env::var("MARINA_TEST_DATABASE_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI must test PostgreSQL (source .ci/postgres.sh)");
        eprintln!("skip: MARINA_TEST_DATABASE_URL is unset; PostgreSQL case skipped");
        return;
    };
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = fresh_postgres_database(&url, state_a.path()).await;
    let one = upstream("one").await;
    let two = upstream("two").await;
    let a = start(state_a.path(), Some(&url), json!([])).await;
    let b = start(state_b.path(), Some(&url), json!([])).await;

    /// Polls `srv` until `path` answers as `want` says (the change crosses via PostgreSQL).
    async fn until(srv: &Running, path: &str, want: impl Fn(StatusCode, &Value) -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, got) = who(srv, path).await;
            if want(status, &got) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: still {status} {got}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let is = |name: &'static str| move |s: StatusCode, v: &Value| s == StatusCode::OK && v["who"] == name;

    let body = format!(r#"{{"pattern":"^/ext/(.*)$","target":"http://{one}","rewrite":"/$1"}}"#);
    let (status, rule) = send("POST", &a.api("/rules"), Some(&body)).await;
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().unwrap().to_string();
    until(&b, "/ext/x", is("one"), "a rule created on A reaches B").await;
    let (status, list) = send("GET", &b.api("/rules"), None).await;
    assert_eq!((status, list[0]["id"].as_str()), (StatusCode::OK, Some(id.as_str())), "B's API lists it");

    // Changed on B: A follows.
    let (status, _) =
        send("PUT", &b.api(&format!("/rules/{id}")), Some(&format!(r#"{{"target":"http://{two}"}}"#))).await;
    assert_eq!(status, 200);
    until(&a, "/ext/x", is("two"), "a change on B reaches A").await;

    // Toggled off on A: B stops proxying (the path falls through to B's 404).
    let (status, _) = send("PATCH", &a.api(&format!("/rules/{id}/toggle")), None).await;
    assert_eq!(status, 200);
    until(&b, "/ext/x", |s, _| s == StatusCode::NOT_FOUND, "a toggle on A reaches B").await;
    let (status, _) = send("PATCH", &b.api(&format!("/rules/{id}/toggle")), None).await;
    assert_eq!(status, 200);
    until(&a, "/ext/x", is("two"), "a toggle on B reaches A").await;

    // Deleted on A: gone on B.
    let (status, _) = send("DELETE", &a.api(&format!("/rules/{id}")), None).await;
    assert_eq!(status, 200);
    until(&b, "/ext/x", |s, _| s == StatusCode::NOT_FOUND, "a delete on A reaches B").await;
    let (status, list) = send("GET", &b.api("/rules"), None).await;
    assert_eq!((status, list), (StatusCode::OK, json!([])));
    a.stop().await;
    b.stop().await;
}

/// Buntime's plugin-proxy server/api.test.ts compares these `error` texts exactly; marina's
/// `message` keeps its detail and `data` the field or id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_buntime_s_fixed_texts() {
    let state = tempfile::tempdir().unwrap();
    let srv = start(state.path(), None, json!([{"pattern": "^/api/(.*)$", "target": "http://127.0.0.1:9"}])).await;
    let (status, list) = send("GET", &srv.api("/rules"), None).await;
    assert_eq!(status, 200, "{list}");
    let fixed = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["readonly"], true);
    for (method, path, body, want_status, text) in [
        ("GET", "/rules/nonexistent".to_string(), None, 404, "Rule not found"),
        ("PUT", "/rules/nonexistent".to_string(), Some(r#"{"target":"http://127.0.0.1:9"}"#), 404, "Rule not found"),
        ("DELETE", "/rules/nonexistent".to_string(), None, 404, "Rule not found"),
        (
            "PUT",
            format!("/rules/{fixed}"),
            Some(r#"{"target":"http://127.0.0.1:9"}"#),
            403,
            "Cannot modify static rules",
        ),
        ("DELETE", format!("/rules/{fixed}"), None, 403, "Cannot delete static rules"),
        (
            "POST",
            "/rules".to_string(),
            Some(r#"{"target":"http://127.0.0.1:9"}"#),
            400,
            "pattern and target are required",
        ),
        ("POST", "/rules".to_string(), Some(r#"{"pattern":"^/test$"}"#), 400, "pattern and target are required"),
        (
            "POST",
            "/rules".to_string(),
            Some(r#"{"pattern":"[invalid","target":"http://127.0.0.1:9"}"#),
            400,
            "Invalid regex pattern",
        ),
    ] {
        let (status, v) = send(method, &srv.api(&path), body).await;
        assert_eq!((status.as_u16(), v["error"].as_str()), (want_status, Some(text)), "{method} {path}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()) && v["code"].is_string(), "{v}");
    }
    // A PUT that makes a rule's pattern invalid says so in the same words.
    let (status, rule) =
        send("POST", &srv.api("/rules"), Some(r#"{"pattern":"^/test/(.*)$","target":"http://127.0.0.1:9"}"#)).await;
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().unwrap();
    let (status, v) = send("PUT", &srv.api(&format!("/rules/{id}")), Some(r#"{"pattern":"[invalid"}"#)).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str(), v["data"]["field"].as_str()),
        (400, Some("Invalid regex pattern"), Some("pattern")),
        "{v}"
    );
    srv.stop().await;
}
