//! `/api/openapi.json` and `/api/docs` on a real server, and the document against the routes:
//! every documented operation is routed (never "no API route" or 405), and every other method on
//! a documented path answers 405. (That the document lists every routed path is a unit test in
//! `crates/server/src/openapi.rs`.)

use std::time::Duration;

mod common;

use serde_json::Value;

fn filled(path: &str) -> String {
    path.replace("{scope}", "_").replace("{name}", "nope").replace("{version}", "1.0.0").replace("{id}", "999")
}

/// Whether the concrete `path` matches the `template`'s segments (`{x}` matches any one).
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
}

async fn call(client: &reqwest::Client, method: &str, url: String) -> (u16, Value) {
    let resp = client
        .request(method.parse().unwrap(), url)
        .header("x-buntime-internal", "true")
        .header("content-type", "application/json")
        .body("{}")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_routes_agree() {
    let apps = tempfile::tempdir().unwrap();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_API_PREFIX", "/_");
    })
    .await;
    let client = reqwest::Client::new();
    let api = format!("{}/_/api", srv.base);
    let (status, doc) = call(&client, "GET", format!("{api}/openapi.json")).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"][0]["url"], "/_/api");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{doc}");
    for (path, item) in paths {
        // The methods of every template the concrete path matches (`/keys/meta` is also `/keys/{id}`).
        let concrete = filled(path);
        let documented: Vec<String> = item.as_object().unwrap().keys().map(|m| m.to_ascii_uppercase()).collect();
        let mut elsewhere: Vec<String> = Vec::new();
        for (other, other_item) in paths {
            if other != path && matches(other, &concrete) {
                elsewhere.extend(other_item.as_object().unwrap().keys().map(|m| m.to_ascii_uppercase()));
            }
        }
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let (status, body) = call(&client, method, format!("{api}{}", filled(path))).await;
            if documented.iter().any(|m| m == method) {
                assert_ne!(status, 405, "{method} {path} is documented: {body}");
                assert!(body["code"] != "NOT_FOUND", "{method} {path} is documented but not routed: {body}");
            } else if !elsewhere.iter().any(|m| m == method) {
                assert_eq!(status, 405, "{method} {path} is not documented: {body}");
            }
        }
    }
    let resp = client.get(format!("{api}/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = resp.text().await.unwrap();
    assert!(page.contains("/_/api/openapi.json") && page.contains("/_/api/apps/{scope}/{name}/{version}"), "{page}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_stay_public_once_keys_exist() {
    let apps = tempfile::tempdir().unwrap();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_ROOT_KEY", "a-root-key-of-some-length");
    })
    .await;
    for path in ["/api/openapi.json", "/api/docs"] {
        let resp = reqwest::get(format!("{}{path}", srv.base)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = reqwest::get(format!("{}/api/apps", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 401);
    srv.stop().await;
}
