//! `/gateway/api`'s managing half through a real server: rate-limit buckets forgotten one by
//! one and all at once, the per-second metrics history, the SSE stream (its shape, and its end
//! when marina shuts down), the cache answer, shell excludes added and removed at runtime and the
//! history, both kept across a restart (on SQLite and on PostgreSQL), and the key and Origin
//! rules on all of them.

mod common;

use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{Value, json};

const ROOT: &str = "root-key-for-gateway-api-tests-0123456789";

/// A call with `Origin` set to the server itself (the CSRF rule for calls without a key).
async fn call(c: &Client, srv: &common::Running, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = c.request(method, format!("{}{path}", srv.base)).header("origin", &srv.base);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_history_sse_and_cache() {
    let tmp = common::gateway_fixture(
        "rateLimit:\n  routes:\n    - path: \"/echo/**\"\n      requests: 3\n      window: 1h\n",
    );
    let plugins = tmp.path().join("plugins");
    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "node")
            .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
            .set("RUNTIME_SHUTDOWN_TIMEOUT", "20");
    })
    .await;
    let c = Client::new();
    let statuses = |n: usize| {
        let (c, url) = (c.clone(), format!("{}/echo/x", srv.base));
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(c.get(&url).send().await.unwrap().status().as_u16());
            }
            out
        }
    };
    assert_eq!(statuses(4).await, [200, 200, 200, 429]);

    // One key forgotten: its next request meets a full allowance.
    let (s, v) = call(&c, &srv, Method::DELETE, "/gateway/api/rate-limit/buckets/ip:127.0.0.1", None).await;
    assert_eq!((s, v), (200, json!({ "deleted": true, "key": "ip:127.0.0.1", "rules": ["/echo/**"] })));
    assert_eq!(statuses(4).await, [200, 200, 200, 429]);
    let (s, v) = call(&c, &srv, Method::DELETE, "/gateway/api/rate-limit/buckets/ip%3A10.9.9.9", None).await;
    assert_eq!((s, v), (200, json!({ "deleted": false, "key": "ip:10.9.9.9", "rules": [] })));
    // Identity keys hold slashes (`jwt:<iss>:<sub>`): sent percent-encoded, as Buntime's client does.
    let path = "/gateway/api/rate-limit/buckets/jwt%3Ahttps%3A%2F%2Fissuer.example%2F%3Aann";
    let (s, v) = call(&c, &srv, Method::DELETE, path, None).await;
    assert_eq!((s, v["key"].as_str()), (200, Some("jwt:https://issuer.example/:ann")), "{v}");
    // All keys forgotten.
    let (s, v) = call(&c, &srv, Method::POST, "/gateway/api/rate-limit/clear", None).await;
    assert_eq!((s, v), (200, json!({ "cleared": 1 })));
    let buckets: Value =
        c.get(format!("{}/gateway/api/rate-limit/buckets", srv.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(buckets, json!([]));
    assert_eq!(statuses(1).await, [200]);
    // State-changing calls without a key need a same-host Origin (CSRF).
    for (method, path) in [
        (Method::DELETE, "/gateway/api/rate-limit/buckets/ip:127.0.0.1"),
        (Method::POST, "/gateway/api/rate-limit/clear"),
        (Method::DELETE, "/gateway/api/metrics/history"),
    ] {
        let resp = c.request(method.clone(), format!("{}{path}", srv.base)).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
        assert_eq!(resp.json::<Value>().await.unwrap()["code"], "ORIGIN_REQUIRED");
    }
    assert_eq!(statuses(1).await, [200], "refused calls changed nothing");

    // History: one snapshot a second, newest first, Buntime's fields.
    let history = |limit: &'static str| {
        let c = c.clone();
        let url = format!("{}/gateway/api/metrics/history?limit={limit}", srv.base);
        async move { c.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    until("two snapshots", || async { history("5").await.as_array().is_some_and(|a| a.len() >= 2) }).await;
    let h = history("5").await;
    let h = h.as_array().unwrap();
    assert!(h.len() <= 5);
    let keys: Vec<&String> = h[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["activeBuckets", "allowedRequests", "blockedRequests", "timestamp", "totalRequests"]);
    assert!(h[0]["timestamp"].as_u64() > h[1]["timestamp"].as_u64());
    assert!(h[0]["totalRequests"].as_u64() >= h[1]["totalRequests"].as_u64());
    until("a snapshot counting the blocked requests", || async {
        history("1").await[0]["blockedRequests"].as_u64() == Some(2)
    })
    .await;
    for (q, expect) in [("0", "limit: expected 1 to 3600, found 0"), ("3601", "found 3601")] {
        let resp = c.get(format!("{}/gateway/api/metrics/history?limit={q}", srv.base)).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!((v["code"].as_str(), v["data"]["field"].as_str()), (Some("INVALID_QUERY"), Some("limit")));
        assert!(v["message"].as_str().unwrap().contains(expect), "{v}");
    }
    let resp = c.get(format!("{}/gateway/api/metrics/history?limit=many", srv.base)).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("limit"));
    let cleared_at = common_now_ms();
    assert_eq!(
        call(&c, &srv, Method::DELETE, "/gateway/api/metrics/history", None).await,
        (200, json!({ "cleared": true }))
    );
    let after = history("3600").await;
    assert!(after.as_array().unwrap().iter().all(|s| s["timestamp"].as_u64().unwrap() + 1000 >= cleared_at), "{after}");

    // No cache: 400 as Buntime's "Cache not enabled".
    let (s, v) = call(&c, &srv, Method::POST, "/gateway/api/cache/invalidate", Some(json!({ "key": "x" }))).await;
    assert_eq!(
        (s, v["code"].as_str(), v["error"].as_str().map(|e| e.contains("Cache not enabled"))),
        (400, Some("CACHE_DISABLED"), Some(true))
    );
    // No shell here.
    let (s, v) = call(&c, &srv, Method::GET, "/gateway/api/shell/excludes", None).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("SHELL_DISABLED")));
    assert!(v["error"].as_str().unwrap().contains("Shell not configured"), "{v}");
    for (method, path) in
        [(Method::POST, "/gateway/api/shell/excludes"), (Method::DELETE, "/gateway/api/shell/excludes/x")]
    {
        let body = (method == Method::POST).then(|| json!({ "basename": "new-app" }));
        let (s, v) = call(&c, &srv, method, path, body).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("SHELL_DISABLED")), "{path}: {v}");
    }

    // SSE: an event a second in Buntime's shape.
    let mut sse = c.get(format!("{}/gateway/api/sse", srv.base)).send().await.unwrap();
    assert_eq!(common::header(&sse, "content-type"), Some("text/event-stream"));
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk()).await.expect("an event").unwrap();
        text.push_str(std::str::from_utf8(&chunk.expect("the stream goes on")).unwrap());
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let data = event.strip_prefix("data: ").expect("a data line").trim_end();
            events.push(serde_json::from_str::<Value>(data).unwrap());
        }
    }
    let e = &events[1];
    assert!(e["timestamp"].as_u64().unwrap() >= events[0]["timestamp"].as_u64().unwrap() + 900);
    assert_eq!(e["rateLimit"]["metrics"]["blockedRequests"], 2);
    assert!(e["rateLimit"]["config"].is_object());
    assert_eq!((e["cors"].clone(), e["shell"].clone()), (Value::Null, Value::Null));
    let logs = e["recentLogs"].as_array().unwrap();
    assert!(!logs.is_empty() && logs.len() <= 10 && logs[0]["path"].is_string(), "{logs:?}");

    // Shutdown ends the stream at once, not at the 20 s deadline.
    let started = Instant::now();
    srv.stop().await;
    assert!(started.elapsed() < Duration::from_secs(8), "stop took {:?}", started.elapsed());
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sse.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the stream ended");
    assert!(end.is_ok(), "a clean end of the stream: {end:?}");
}

fn common_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_rate_limit_the_bucket_routes_say_so() {
    let tmp = common::gateway_fixture("");
    let plugins = tmp.path().join("plugins");
    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string());
    })
    .await;
    let c = Client::new();
    for (method, path) in [
        (Method::DELETE, "/gateway/api/rate-limit/buckets/ip:1.2.3.4"),
        (Method::POST, "/gateway/api/rate-limit/clear"),
    ] {
        let (s, v) = call(&c, &srv, method, path, None).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("RATE_LIMIT_DISABLED")), "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("Rate limiting not enabled"), "{v}");
    }
    srv.stop().await;
}

/// A shell app and the bundled gateway manifest.
fn shell_fixture() -> tempfile::TempDir {
    let tmp = common::gateway_fixture("");
    let shell = tmp.path().join("shell");
    std::fs::create_dir_all(&shell).unwrap();
    std::fs::write(shell.join("index.html"), "<!doctype html><p>the shell</p>\n").unwrap();
    std::fs::write(shell.join("manifest.yaml"), "entrypoint: index.html\n").unwrap();
    tmp
}

async fn is_shell(c: &Client, srv: &common::Running, path: &str) -> bool {
    let resp = c.get(format!("{}{path}", srv.base)).header("sec-fetch-dest", "document").send().await.unwrap();
    resp.status() == 200 && resp.text().await.unwrap().contains("the shell")
}

async fn excludes_lifecycle(database_url: Option<&str>) {
    let tmp = shell_fixture();
    let state = tempfile::tempdir().unwrap();
    let apps = tmp.path().join("apps");
    let start = || {
        let (plugins, shell, state) = (tmp.path().join("plugins"), tmp.path().join("shell"), state.path());
        common::start(&apps, move |r| {
            r.set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
                .set("RUNTIME_STATE_DIR", state.display().to_string())
                .set("RUNTIME_ROOT_KEY", ROOT)
                .set("GATEWAY_SHELL_DIR", shell.display().to_string())
                .set("GATEWAY_SHELL_EXCLUDES", "cpanel");
            if let Some(url) = database_url {
                r.set("DATABASE_URL", url);
            }
        })
    };
    // Unique per run: several runs may share one PostgreSQL database.
    let name = format!("todo{}", std::process::id());
    let page = format!("/{name}");
    let c = Client::new();
    let srv = start().await;
    let api = |method: Method, path: String, body: Option<Value>| {
        let mut req = c.request(method, format!("{}/gateway/api{path}", srv.base)).header("x-api-key", ROOT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    assert!(is_shell(&c, &srv, &page).await);
    let (s, list) = api(Method::GET, "/shell/excludes".into(), None).await;
    assert_eq!(s, 200);
    assert_eq!(list[0], json!({ "basename": "cpanel", "source": "env" }));

    // Added: the very next request bypasses the shell.
    let (s, v) = api(Method::POST, "/shell/excludes".into(), Some(json!({ "basename": name }))).await;
    assert_eq!((s, v), (200, json!({ "added": true, "basename": name, "source": "keyval" })));
    // Buntime's `/stats` summary: enabled, the dir, and every exclude counted (configured + stored).
    let (s, stats) = api(Method::GET, "/stats".into(), None).await;
    let (_, listed) = api(Method::GET, "/shell/excludes".into(), None).await;
    let count = listed.as_array().unwrap().len();
    assert!(count >= 2, "cpanel and {name}: {listed}");
    assert_eq!(
        (s, &stats["shell"]["enabled"], &stats["shell"]["excludesCount"]),
        (200, &json!(true), &json!(count)),
        "{stats}"
    );
    assert!(stats["shell"]["dir"].as_str().is_some_and(|d| !d.is_empty()), "{stats}");
    assert!(!is_shell(&c, &srv, &page).await);
    assert!(!is_shell(&c, &srv, &format!("{page}/deep")).await);
    let (_, v) = api(Method::POST, "/shell/excludes".into(), Some(json!({ "basename": format!(" {name} ") }))).await;
    assert_eq!(v["added"], false, "already there");

    // Bad inputs: status, code, field, and what was sent.
    for (body, code, quoted, buntime_word) in [
        (json!({ "basename": "a/b" }), "INVALID_BASENAME", "\"a/b\"", "Invalid"),
        (json!({ "basename": "  " }), "INVALID_BASENAME", "found nothing", "required"),
        (json!({ "basename": "" }), "INVALID_BASENAME", "found nothing", "required"),
        (json!({ "basename": "x.y" }), "INVALID_BASENAME", "\"x.y\"", "Invalid"),
    ] {
        let (s, v) = api(Method::POST, "/shell/excludes".into(), Some(body.clone())).await;
        assert_eq!((s, v["code"].as_str(), v["data"]["field"].as_str()), (400, Some(code), Some("basename")), "{body}");
        assert!(v["message"].as_str().unwrap().contains(quoted), "{v}");
        // Buntime's clients read `error`, and its tests look for these words in it.
        assert!(v["error"].as_str().unwrap().contains(buntime_word), "{v}");
    }
    // A basename is at most 255 bytes (a file name's limit): longer is refused by its length.
    for (method, path, body) in [
        (Method::POST, "/shell/excludes".to_string(), Some(json!({ "basename": "a".repeat(256) }))),
        (Method::DELETE, format!("/shell/excludes/{}", "b".repeat(300)), None),
    ] {
        let (s, v) = api(method.clone(), path, body).await;
        assert_eq!(
            (s, v["code"].as_str(), v["data"]["field"].as_str()),
            (400, Some("INVALID_BASENAME"), Some("basename"))
        );
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("at most 255 bytes") && m.contains("found") && !m.contains("aaaa"), "{method}: {v}");
        assert_eq!(v["data"]["limit"], 255, "{v}");
    }
    let longest = format!("{name}{}", "a".repeat(255 - name.len()));
    let (s, v) = api(Method::POST, "/shell/excludes".into(), Some(json!({ "basename": longest }))).await;
    assert_eq!((s, v["added"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = api(Method::DELETE, format!("/shell/excludes/{longest}"), None).await;
    assert_eq!((s, v["removed"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = api(Method::POST, "/shell/excludes".into(), Some(json!({ "name": "x" }))).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("INVALID_JSON")), "{v}");
    let (s, v) = api(Method::POST, "/shell/excludes".into(), Some(json!({ "basename": 7 }))).await;
    assert_eq!((s, v["data"]["path"].as_str()), (400, Some("basename")), "{v}");
    // Configured excludes belong to the configuration.
    let (s, v) = api(Method::POST, "/shell/excludes".into(), Some(json!({ "basename": "cpanel" }))).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("EXCLUDE_CONFIGURED")), "{v}");
    let (s, v) = api(Method::DELETE, "/shell/excludes/cpanel".into(), None).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("EXCLUDE_CONFIGURED")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("GATEWAY_SHELL_EXCLUDES"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("environment"), "{v}");
    let (s, v) = api(Method::DELETE, "/shell/excludes/bad.name".into(), None).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("INVALID_BASENAME")), "{v}");
    // Without a key: 401 to read, and changing takes an admin key.
    let resp = c.get(format!("{}/gateway/api/shell/excludes", srv.base)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    srv.stop().await;

    // A restart keeps it, with the time it was added.
    let srv = start().await;
    assert!(!is_shell(&c, &srv, &page).await);
    let list: Value = c
        .get(format!("{}/gateway/api/shell/excludes", srv.base))
        .header("x-api-key", ROOT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mine = list.as_array().unwrap().iter().find(|e| e["basename"] == name.as_str()).expect("kept").clone();
    assert_eq!(mine["source"], "keyval");
    assert!(mine["addedAt"].as_u64().unwrap() > 1_700_000_000_000, "{mine}");
    let del = |path: String| {
        c.delete(format!("{}/gateway/api/shell/excludes/{path}", srv.base)).header("x-api-key", ROOT).send()
    };
    let v: Value = del(name.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({ "removed": true, "basename": name }));
    assert!(is_shell(&c, &srv, &page).await, "removed: the shell answers again at once");
    let v: Value = del(name.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(v["removed"], false);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_excludes_at_runtime_on_sqlite() {
    excludes_lifecycle(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_excludes_at_runtime_on_postgres() {
    let Some(url) = std::env::var("MARINA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        assert!(std::env::var("CI").is_err(), "CI must test PostgreSQL (MARINA_TEST_DATABASE_URL)");
        eprintln!("skip: MARINA_TEST_DATABASE_URL is unset");
        return;
    };
    excludes_lifecycle(Some(&url)).await;
}

/// The metrics history survives a restart (written at shutdown at the latest), and a clear
/// reaches the stored rows.
/// With a root key and every API call carrying it: on PostgreSQL the database is shared with
/// other test binaries, which leave API keys behind, and once a key exists `/gateway/api`
/// needs one (a keyless run passed or failed with the order the binaries ran in).
/// The history follows the state dir (its `instance-id`), not the host name nor the dir's path:
/// here the state dir moves between two runs (a volume mounted elsewhere).
async fn history_lifecycle(database_url: Option<&str>) {
    let tmp = common::gateway_fixture("");
    let states = tempfile::tempdir().unwrap();
    let (first, moved) = (states.path().join("first"), states.path().join("moved"));
    std::fs::create_dir(&first).unwrap();
    let apps = tmp.path().join("apps");
    let start = |state: &std::path::Path| {
        let (plugins, state) = (tmp.path().join("plugins"), state.to_path_buf());
        common::start(&apps, move |r| {
            r.set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
                .set("RUNTIME_STATE_DIR", state.display().to_string())
                .set("RUNTIME_ROOT_KEY", ROOT);
            if let Some(url) = database_url {
                r.set("DATABASE_URL", url);
            }
        })
    };
    let c = Client::new();
    let history = |srv: &common::Running| {
        let url = format!("{}/gateway/api/metrics/history?limit=3600", srv.base);
        let c = c.clone();
        async move {
            let body = c.get(url).header("x-api-key", ROOT).send().await.unwrap().json::<Value>().await.unwrap();
            body.as_array().unwrap_or_else(|| panic!("expected the history, got {body}")).clone()
        }
    };
    let srv = start(&first).await;
    for _ in 0..3 {
        assert_eq!(c.get(format!("{}/api/health", srv.base)).send().await.unwrap().status(), 200);
    }
    until("a snapshot of the requests", || async {
        history(&srv).await.first().is_some_and(|s| s["totalRequests"].as_u64() >= Some(3))
    })
    .await;
    let seen = history(&srv).await[0].clone();
    srv.stop().await;

    std::fs::rename(&first, &moved).unwrap();
    let srv = start(&moved).await;
    let got = history(&srv).await;
    assert!(got.contains(&seen), "{seen} not in {got:?}");
    let cleared_at = common_now_ms();
    let resp =
        c.delete(format!("{}/gateway/api/metrics/history", srv.base)).header("x-api-key", ROOT).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    srv.stop().await;

    let srv = start(&moved).await;
    let got = history(&srv).await;
    assert!(got.iter().all(|s| s["timestamp"].as_u64().unwrap() + 1000 >= cleared_at), "{got:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_survives_a_restart_on_sqlite() {
    history_lifecycle(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_survives_a_restart_on_postgres() {
    let Some(url) = std::env::var("MARINA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        assert!(std::env::var("CI").is_err(), "CI must test PostgreSQL (MARINA_TEST_DATABASE_URL)");
        eprintln!("skip: MARINA_TEST_DATABASE_URL is unset");
        return;
    };
    history_lifecycle(Some(&url)).await;
}
