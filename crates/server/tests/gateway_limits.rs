//! The gateway's rate limits through a real server in front of a real Node app, with real API
//! keys created through `/api/keys`: refused requests are counted (a flood of bad keys meets
//! 429), valid and root keys skip nothing, limits by identity and per route glob, exact counts
//! under concurrency, `X-Forwarded-For` believed only from `RUNTIME_TRUSTED_PROXIES`, the
//! gateway API behind the key rules, `WWW-Authenticate` on 401, and bad limits stopping start-up.

mod common;

use std::path::Path;

use reqwest::Client;
use serde_json::{Value, json};

const ROOT: &str = "root-key-for-gateway-tests-0123456789";

async fn create_key(c: &Client, base: &str, role: &str) -> String {
    let resp = c
        .post(format!("{base}/api/keys"))
        .header("x-api-key", ROOT)
        .json(&json!({ "name": format!("{role} key"), "role": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    v["data"]["key"].as_str().unwrap().to_string()
}

/// Send `n` requests at once; the statuses, sorted.
async fn burst(c: &Client, n: usize, make: impl Fn(&Client) -> reqwest::RequestBuilder) -> Vec<u16> {
    let sends: Vec<_> = (0..n).map(|_| tokio::spawn(make(c).send())).collect();
    let mut statuses = Vec::new();
    for s in sends {
        statuses.push(s.await.unwrap().unwrap().status().as_u16());
    }
    statuses.sort_unstable();
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_counted_and_keys_skip_nothing() {
    let tmp = common::gateway_fixture("");
    let plugins = tmp.path().join("plugins");
    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "node")
            .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
            .set("RUNTIME_ROOT_KEY", ROOT)
            .set("GATEWAY_RATE_LIMIT_REQUESTS", "10")
            .set("GATEWAY_RATE_LIMIT_WINDOW", "1h")
            .set("GATEWAY_RATE_LIMIT_HEADERS", "always");
    })
    .await;
    let c = Client::new();
    let base = srv.base.clone();
    // 1 request: a real editor key, created with the root key.
    let key = create_key(&c, &base, "editor").await;
    // 4 more with the key: allowed, and the limit's headers show the shared budget shrinking.
    for left in [8, 7, 6, 5] {
        let resp = c.get(format!("{base}/api/apps")).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(common::header(&resp, "ratelimit-remaining"), Some(left.to_string().as_str()));
    }
    // A flood of bad keys: 5 refused by auth (401), the other 15 by the limit (429).
    let statuses = burst(&c, 20, |c| c.get(format!("{base}/api/apps")).header("x-api-key", "btk_not-a-key")).await;
    assert_eq!((count(&statuses, 401), count(&statuses, 429)), (5, 15), "{statuses:?}");
    let resp = c.get(format!("{base}/api/apps")).send().await.unwrap();
    assert_eq!(resp.status(), 429, "the address is out of requests, whatever it sends");
    // The valid key and the root key are limited like everyone else.
    for k in [key.as_str(), ROOT] {
        let resp = c.get(format!("{base}/api/apps")).header("x-api-key", k).send().await.unwrap();
        assert_eq!(resp.status(), 429);
        assert!(common::header(&resp, "retry-after").is_some());
        let v: Value = resp.json().await.unwrap();
        assert_eq!((v["code"].as_str(), v["data"]["rule"].as_str()), (Some("RATE_LIMITED"), Some("default")));
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn www_authenticate_and_the_gateway_api_behind_keys() {
    let tmp = common::gateway_fixture("");
    let plugins = tmp.path().join("plugins");
    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "node")
            .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
            .set("RUNTIME_ROOT_KEY", ROOT)
            .set("GATEWAY_CORS_ORIGIN", "*")
            .set("GATEWAY_RATE_LIMIT_REQUESTS", "1000");
    })
    .await;
    let c = Client::new();
    let base = srv.base.clone();
    let viewer = create_key(&c, &base, "viewer").await;

    let resp = c.get(format!("{base}/gateway/api/stats")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(common::header(&resp, "www-authenticate"), Some("Bearer realm=\"marina\""));
    let resp = c.get(format!("{base}/gateway/api/stats")).header("x-api-key", "btk_wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = common::header(&resp, "www-authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"marina\", error=\"invalid_token\", error_description="),
        "{challenge}"
    );
    let resp = c.get(format!("{base}/api/keys")).bearer_auth("btk_wrong").send().await.unwrap();
    assert!(common::header(&resp, "www-authenticate").unwrap().contains("invalid_token"));

    // Reading takes any valid key; changing takes an admin key or the root key.
    let resp = c.get(format!("{base}/gateway/api/logs?limit=5")).header("x-api-key", &viewer).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let logs: Value = resp.json().await.unwrap();
    assert!(logs.as_array().unwrap().len() <= 5);
    let resp = c.delete(format!("{base}/gateway/api/logs")).header("x-api-key", &viewer).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(common::header(&resp, "www-authenticate").unwrap().contains("insufficient_scope"));
    let resp = c.delete(format!("{base}/gateway/api/logs")).header("x-api-key", ROOT).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({ "cleared": true }));
    let resp = c
        .post(format!("{base}/api/keys"))
        .header("x-api-key", &viewer)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(common::header(&resp, "www-authenticate").unwrap().contains("insufficient_scope"));

    // The gateway's CORS never covers the internal API (it approves no cross-site call).
    let resp = c
        .request(reqwest::Method::OPTIONS, format!("{base}/api/keys"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-buntime-internal")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 204);
    assert_eq!(common::header(&resp, "access-control-allow-origin"), None);
    let resp = c.get(format!("{base}/api/health")).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(common::header(&resp, "access-control-allow-origin"), None);
    let resp = c.get(format!("{base}/echo/echo")).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(common::header(&resp, "access-control-allow-origin"), Some("*"), "apps still get CORS");

    // Bad queries are clear errors.
    for q in ["ip=nope", "rateLimited=maybe", "statusRange=9", "limit=-1", "bogus=1"] {
        let resp = c.get(format!("{base}/gateway/api/logs?{q}")).header("x-api-key", ROOT).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{q}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["success"], false, "{q}: {v}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_by_identity_and_per_route_glob_with_exact_counts() {
    let tmp = common::gateway_fixture(
        "rateLimit:\n  requests: 3\n  window: 1h\n  keyBy: identity\n  excludePaths: [\"/api/health\"]\n  routes:\n    - path: \"/echo/login/**\"\n      methods: [POST]\n      requests: 2\n      window: 1h\n",
    );
    let plugins = tmp.path().join("plugins");
    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "node")
            .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
            .set("RUNTIME_ROOT_KEY", ROOT);
    })
    .await;
    let c = Client::new();
    let base = srv.base.clone();
    // Two keys (2 of the root key's 3 requests).
    let a = create_key(&c, &base, "viewer").await;
    let b = create_key(&c, &base, "viewer").await;
    let resp = c.get(format!("{base}/gateway/api/config")).header("x-api-key", &a).send().await.unwrap();
    // Counted, allowed, and (by default, as in Buntime) without the limit's headers.
    assert_eq!(resp.status(), 200);
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after"] {
        assert_eq!(common::header(&resp, name), None, "{name} on an allowed answer");
    }
    let config: Value = resp.json().await.unwrap();
    assert_eq!(config["rateLimit"]["headers"], "limited");
    assert_eq!(config["rateLimit"]["keyBy"], "identity");
    assert_eq!(config["rateLimit"]["excludePaths"], json!(["/api/health"]));
    assert_eq!(config["rateLimit"]["routes"][0]["path"], "/echo/login/**");
    assert_eq!(config["rateLimit"]["routes"][0]["methods"], json!(["POST"]));
    // Key A (one request spent on the config): exactly 2 of 8 concurrent requests; key B
    // keeps its own 3.
    let statuses = burst(&c, 8, |c| c.get(format!("{base}/api/apps")).header("x-api-key", &a)).await;
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (2, 6), "{statuses:?}");
    let statuses = burst(&c, 4, |c| c.get(format!("{base}/api/apps")).header("x-api-key", &b)).await;
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (3, 1), "{statuses:?}");
    // Anonymous and refused requests share the address's bucket: 3 answers, then 429.
    let statuses = burst(&c, 6, |c| c.get(format!("{base}/api/apps")).header("x-api-key", "btk_bad")).await;
    assert_eq!((count(&statuses, 401), count(&statuses, 429)), (3, 3), "{statuses:?}");
    // Excluded from the default rule.
    for _ in 0..5 {
        assert_eq!(c.get(format!("{base}/api/health")).send().await.unwrap().status(), 200);
    }

    // The root key's own bucket has 1 request left (it created the keys).
    let statuses = burst(&c, 3, |c| c.get(format!("{base}/api/apps")).header("x-api-key", ROOT)).await;
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (1, 2), "{statuses:?}");

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_rule_alone_counts_exactly_and_leaves_other_methods_alone() {
    let tmp = common::gateway_fixture(
        "rateLimit:\n  routes:\n    - path: \"/echo/login/**\"\n      methods: [post]\n      requests: 2\n      window: 1h\n",
    );
    let plugins = tmp.path().join("plugins");
    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "node").set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string());
    })
    .await;
    let c = Client::new();
    let base = srv.base.clone();
    let statuses = burst(&c, 12, |c| c.post(format!("{base}/echo/login/form"))).await;
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (2, 10), "{statuses:?}");
    let statuses = burst(&c, 6, |c| c.get(format!("{base}/echo/login/form"))).await;
    assert_eq!(count(&statuses, 429), 0, "{statuses:?}");
    // `*` stays within a segment: /echo/login itself is not under the glob.
    assert_ne!(c.post(format!("{base}/echo/login")).send().await.unwrap().status(), 429);
    let buckets: Value =
        c.get(format!("{base}/gateway/api/rate-limit/buckets")).send().await.unwrap().json().await.unwrap();
    assert_eq!(buckets[0]["key"], "ip:127.0.0.1");
    assert_eq!(buckets[0]["rule"], "/echo/login/**");
    assert_eq!((buckets[0]["requests"].as_u64(), buckets[0]["blocked"].as_u64()), (Some(12), Some(10)));
    let logs: Value = c
        .get(format!("{base}/gateway/api/logs?rateLimited=true&limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(logs.as_array().unwrap().len(), 10);
    assert!(logs.as_array().unwrap().iter().all(|e| e["status"] == 429 && e["path"] == "/echo/login/form"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    for (trusted, honoured) in [("127.0.0.0/8, ::1", true), ("10.0.0.0/8", false)] {
        let tmp = common::gateway_fixture("");
        let plugins = tmp.path().join("plugins");
        let srv = common::start(&tmp.path().join("apps"), |r| {
            r.set("RUNTIME_JS", "node")
                .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
                .set("RUNTIME_TRUSTED_PROXIES", trusted)
                .set("GATEWAY_RATE_LIMIT_REQUESTS", "2")
                .set("GATEWAY_RATE_LIMIT_WINDOW", "1h");
        })
        .await;
        let c = Client::new();
        let url = format!("{}/echo/echo", srv.base);
        // The client claims 198.51.100.1; the (trusted) proxy appended what it saw.
        let from = |ip: &str| c.get(&url).header("x-forwarded-for", format!("198.51.100.1, {ip}"));
        let resp = from("203.0.113.1").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().await.unwrap();
        let seen = if honoured { "203.0.113.1" } else { "127.0.0.1" };
        assert_eq!(echo["forwardedFor"], seen, "the app is told the same client address");
        assert_eq!(from("203.0.113.1").send().await.unwrap().status(), 200);
        assert_eq!(from("203.0.113.1").send().await.unwrap().status(), 429);
        // Another client behind the proxy: its own budget only when the proxy is trusted.
        let other = from("203.0.113.2").send().await.unwrap().status();
        assert_eq!(other, if honoured { 200 } else { 429 }, "{trusted}");
        // The gateway's log shows the address it counted.
        assert_eq!(from("203.0.113.3").send().await.unwrap().status(), if honoured { 200 } else { 429 });
        if honoured {
            let logs: Value =
                c.get(format!("{}/gateway/api/logs", srv.base)).send().await.unwrap().json().await.unwrap();
            assert_eq!(logs[0]["ip"], "203.0.113.3");
            assert_eq!(logs[1]["ip"], "203.0.113.2");
        }
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_limits_stop_start_up_naming_what_is_wrong() {
    // The variables: checked with the configuration (exit code 2 in `marina serve`).
    for (requests, window) in [("10", "0"), ("1000000000", "0.5")] {
        let mut raw = marina_server::RawConfig::new();
        raw.set("GATEWAY_RATE_LIMIT_REQUESTS", requests).set("GATEWAY_RATE_LIMIT_WINDOW", window);
        let err = marina_server::RuntimeConfig::from_raw(&raw, Path::new("/")).expect_err("refused");
        assert_eq!(err.var, "GATEWAY_RATE_LIMIT_WINDOW", "{err}");
        assert!(err.to_string().contains("GATEWAY_RATE_LIMIT_WINDOW"), "{err}");
    }
    let mut raw = marina_server::RawConfig::new();
    raw.set("RUNTIME_TRUSTED_PROXIES", "10.0.0.0/33");
    let err = marina_server::RuntimeConfig::from_raw(&raw, Path::new("/")).expect_err("refused");
    assert_eq!(err.var, "RUNTIME_TRUSTED_PROXIES");

    // The manifest's options: the server does not start (no gateway silently skipped).
    for (extra, key) in [
        ("rateLimit:\n  requests: 5\n  window: soon\n", "rateLimit.window"),
        ("rateLimit:\n  routes:\n    - path: nope\n      requests: 1\n", "rateLimit.routes[0].path"),
        ("rateLimit:\n  keyBy: cookie\n  requests: 1\n", "rateLimit.keyBy"),
        ("cors:\n  origin: app.example.com\n", "cors.origin"),
        ("cors:\n  methods: [GET, \"NO WAY\"]\n", "cors.methods"),
    ] {
        let tmp = common::gateway_fixture(extra);
        let state = tempfile::tempdir().unwrap();
        let mut raw = marina_server::RawConfig::new();
        raw.set("PORT", "0")
            .set("RUNTIME_WORKER_DIRS", tmp.path().join("apps").display().to_string())
            .set("RUNTIME_PLUGIN_DIRS", tmp.path().join("plugins").display().to_string())
            .set("RUNTIME_STATE_DIR", state.path().display().to_string());
        let config = marina_server::RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap();
        let err = marina_server::Server::bind(config).await.err().expect("does not start");
        assert!(err.message().contains("@buntime/plugin-gateway") && err.message().contains(key), "{key}: {err}");
    }
}
