//! The built-in gateway plugin through a real server, loaded by its Buntime name from a
//! manifest in `RUNTIME_PLUGIN_DIRS`, in front of a real Node app: the CORS matrix on the wire,
//! preflights answered without a worker, and the rate limit under concurrent load with exact
//! counts, keyed by the socket address so a spoofed `X-Forwarded-For` gains nothing.

mod common;

use serde_json::Value;

fn has_cors(resp: &reqwest::Response) -> bool {
    resp.headers().keys().any(|k| k.as_str().starts_with("access-control-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_echoes_allowed_origins_and_answers_preflights_itself() {
    let tmp = common::gateway_fixture("");
    let plugins = tmp.path().join("plugins");
    let srv = common::start_with(
        &tmp.path().join("apps"),
        |r| {
            r.set("RUNTIME_JS", "node")
                .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
                .set("GATEWAY_CORS_ORIGIN", "https://a.example, http://localhost:3000")
                .set("GATEWAY_CORS_CREDENTIALS", "true");
        },
        Vec::new(),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/echo/echo", srv.base);

    let resp = client.get(&url).header("origin", "https://a.example").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(common::header(&resp, "access-control-allow-origin"), Some("https://a.example"));
    assert_eq!(common::header(&resp, "access-control-allow-credentials"), Some("true"));
    assert_eq!(common::header(&resp, "vary"), Some("Origin"));
    assert!(common::header(&resp, "access-control-expose-headers").unwrap().contains("RateLimit-Limit"));
    assert_eq!(common::header(&resp, "ratelimit-limit"), None, "no rate limit configured");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["method"], "GET", "the app answered");

    // A disallowed origin, and no origin at all: no CORS header, the app still answers.
    for origin in [Some("https://evil.example"), Some("https://a.example.evil.example"), None] {
        let mut req = client.get(&url);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{origin:?}");
        assert!(!has_cors(&resp), "{origin:?}: {:?}", resp.headers());
    }

    // Preflight: 204 from the gateway, with an empty body (the echo app answers 200 JSON).
    let resp = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type, x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(common::header(&resp, "access-control-allow-origin"), Some("http://localhost:3000"));
    assert!(common::header(&resp, "access-control-allow-methods").unwrap().contains("PUT"));
    assert_eq!(common::header(&resp, "access-control-allow-headers"), Some("content-type, x-api-key"));
    assert_eq!(common::header(&resp, "access-control-max-age"), Some("86400"));
    assert_eq!(common::header(&resp, "access-control-allow-credentials"), Some("true"));
    assert!(resp.text().await.unwrap().is_empty());

    // A preflight from a disallowed origin: still not the worker's, and no CORS headers.
    let resp = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!has_cors(&resp), "{:?}", resp.headers());

    // An OPTIONS that is not a preflight goes to the app.
    let resp = client.request(reqwest::Method::OPTIONS, &url).send().await.unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["method"], "OPTIONS");

    let stats: Value =
        client.get(format!("{}/gateway/api/stats", srv.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["preflights"], 2);
    assert_eq!(stats["blockedRequests"], 0);
    // Allowed are counted exactly: three more requests and the next stats call itself.
    for _ in 0..3 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let again: Value =
        client.get(format!("{}/gateway/api/stats", srv.base)).send().await.unwrap().json().await.unwrap();
    let moved = |k: &str| again[k].as_u64().unwrap() - stats[k].as_u64().unwrap();
    assert_eq!((moved("totalRequests"), moved("allowedRequests"), moved("preflights")), (4, 4, 0), "{again}");
    assert_eq!(stats["shell"], serde_json::json!({"enabled": false}), "Buntime's shell summary without a shell");
    let config: Value =
        client.get(format!("{}/gateway/api/config", srv.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["cors"]["origin"], serde_json::json!(["https://a.example", "http://localhost:3000"]));
    assert_eq!(config["cors"]["credentials"], true);
    assert_eq!(config["rateLimit"], Value::Null);
    let loaded: Value =
        client.get(format!("{}/api/plugins/loaded", srv.base)).send().await.unwrap().json().await.unwrap();
    assert!(loaded.to_string().contains("@buntime/plugin-gateway"), "{loaded}");
    let resp = client.get(format!("{}/gateway/api/nope", srv.base)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // Its API follows the internal API's rules: a keyless change needs a same-host Origin.
    let resp = client.post(format!("{}/gateway/api/stats", srv.base)).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = client
        .post(format!("{}/gateway/api/stats", srv.base))
        .header("x-buntime-internal", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_exact_under_load_and_ignores_forwarded_headers() {
    let tmp = common::gateway_fixture("");
    let plugins = tmp.path().join("plugins");
    let srv = common::start_with(
        &tmp.path().join("apps"),
        |r| {
            r.set("RUNTIME_JS", "node")
                .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
                .set("GATEWAY_CORS_ORIGIN", "*")
                .set("GATEWAY_RATE_LIMIT_REQUESTS", "5")
                .set("GATEWAY_RATE_LIMIT_WINDOW", "1h")
                .set("GATEWAY_RATE_LIMIT_HEADERS", "always");
        },
        Vec::new(),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/echo/echo", srv.base);

    // 24 requests at once, each claiming a different client: all share the socket's bucket.
    let sends = (0..24).map(|i| {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            client
                .get(&url)
                .header("x-forwarded-for", format!("203.0.113.{i}"))
                .header("x-real-ip", format!("198.51.100.{i}"))
                .header("origin", "https://any.example")
                .send()
                .await
                .unwrap()
        })
    });
    let mut ok = 0;
    let mut limited = 0;
    for send in sends {
        let resp = send.await.unwrap();
        match resp.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(common::header(&resp, "ratelimit-limit"), Some("5"));
                let left: u32 = common::header(&resp, "ratelimit-remaining").unwrap().parse().unwrap();
                assert!(left < 5);
            }
            429 => {
                limited += 1;
                assert_eq!(common::header(&resp, "ratelimit-limit"), Some("5"));
                assert_eq!(common::header(&resp, "ratelimit-remaining"), Some("0"));
                let retry: u64 = common::header(&resp, "retry-after").unwrap().parse().unwrap();
                assert!((1..=720).contains(&retry), "one request every 12 minutes: {retry}");
                assert_eq!(common::header(&resp, "ratelimit-reset"), Some(retry.to_string().as_str()));
                // Buntime's names as well, its reset in epoch milliseconds.
                assert_eq!(common::header(&resp, "x-ratelimit-limit"), Some("5"));
                assert_eq!(common::header(&resp, "x-ratelimit-remaining"), Some("0"));
                let reset_at: u128 = common::header(&resp, "x-ratelimit-reset").unwrap().parse().unwrap();
                let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
                assert!(reset_at > now_ms && reset_at <= now_ms + 721_000, "{reset_at} vs now {now_ms}");
                assert_eq!(common::header(&resp, "access-control-allow-origin"), Some("*"), "a page can read the 429");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["success"], false);
                assert_eq!(body["code"], "RATE_LIMITED");
                assert_eq!(body["data"]["limit"], 5);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (5, 19));

    // The gateway's own API is behind the same limit, and a key-looking header changes nothing.
    let resp =
        client.get(format!("{}/gateway/api/stats", srv.base)).header("x-api-key", "btk_anything").send().await.unwrap();
    assert_eq!(resp.status(), 429);
    srv.stop().await;
}

/// The manifest's `cors` option (Buntime's keys): methods, headers and max-age shape the
/// preflight answer; `preflight: false` lets preflights reach the app, with CORS headers added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_from_the_manifest_shapes_preflights() {
    for preflight in [true, false] {
        let tmp = common::gateway_fixture(&format!(
            "cors:\n  origin: [\"https://a.example\"]\n  methods: [get, post]\n  allowedHeaders: content-type\n  \
             exposedHeaders: [x-total-count]\n  maxAge: 600\n  preflight: {preflight}\n"
        ));
        let plugins = tmp.path().join("plugins");
        let srv = common::start_with(
            &tmp.path().join("apps"),
            |r| {
                r.set("RUNTIME_JS", "node").set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string());
            },
            Vec::new(),
        )
        .await;
        let client = reqwest::Client::new();
        let url = format!("{}/echo/echo", srv.base);
        let resp = client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "https://a.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-evil")
            .send()
            .await
            .unwrap();
        assert_eq!(common::header(&resp, "access-control-allow-origin"), Some("https://a.example"));
        if preflight {
            assert_eq!(resp.status(), 204);
            assert_eq!(common::header(&resp, "access-control-allow-methods"), Some("GET, POST"));
            assert_eq!(common::header(&resp, "access-control-allow-headers"), Some("content-type"), "not reflected");
            assert_eq!(common::header(&resp, "access-control-max-age"), Some("600"));
        } else {
            assert_eq!(resp.status(), 200);
            assert_eq!(common::header(&resp, "access-control-allow-methods"), None);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["method"], "OPTIONS", "the app answered the preflight");
        }
        let resp = client.get(&url).header("origin", "https://a.example").send().await.unwrap();
        assert_eq!(common::header(&resp, "access-control-expose-headers"), Some("x-total-count"));
        let resp = client.get(&url).header("origin", "https://b.example").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!has_cors(&resp), "{:?}", resp.headers());
        let config: Value =
            client.get(format!("{}/gateway/api/config", srv.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(config["cors"]["maxAge"], 600);
        assert_eq!(config["cors"]["preflight"], preflight);
        srv.stop().await;
    }
}

/// An app that sets CORS headers of its own does not widen the gateway's policy: its
/// `Access-Control-Allow-Origin: *` and its exposed headers are replaced by the policy's for an
/// allowed origin and dropped for any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_own_cors_headers_give_way_to_the_policy() {
    let tmp = common::gateway_fixture("");
    let own = tmp.path().join("apps/own");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
    std::fs::write(
        own.join("index.js"),
        r#"export default { fetch() { return new Response("own", { headers: {
  "access-control-allow-origin": "*",
  "access-control-allow-credentials": "true",
  "access-control-expose-headers": "x-secret",
  "x-secret": "s" } }); } };"#,
    )
    .unwrap();
    let plugins = tmp.path().join("plugins");
    let srv = common::start_with(
        &tmp.path().join("apps"),
        |r| {
            r.set("RUNTIME_JS", "node")
                .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
                .set("GATEWAY_CORS_ORIGIN", "https://a.example");
        },
        Vec::new(),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/own/", srv.base);

    let resp = client.get(&url).header("origin", "https://a.example").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let allow: Vec<_> = resp.headers().get_all("access-control-allow-origin").iter().collect();
    assert_eq!(allow, ["https://a.example"], "the policy's echo alone, not the app's *");
    assert_eq!(common::header(&resp, "access-control-allow-credentials"), None, "credentials are not configured");
    let exposed = common::header(&resp, "access-control-expose-headers").unwrap();
    assert!(exposed.contains("X-Request-Id") && !exposed.contains("x-secret"), "{exposed}");
    assert_eq!(resp.text().await.unwrap(), "own", "the app answered");

    for origin in [Some("https://evil.example"), None] {
        let mut req = client.get(&url);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{origin:?}");
        for name in ["access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers"]
        {
            assert_eq!(common::header(&resp, name), None, "{origin:?}: {name} {:?}", resp.headers());
        }
    }
    srv.stop().await;
}
