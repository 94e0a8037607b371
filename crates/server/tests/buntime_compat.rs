//! Buntime behaviours a Buntime user's apps and scripts rely on, each checked over real HTTP
//! (issue 8, item 4). Behaviours below the server (layouts, manifest coercion, WORKER_CONFIG,
//! pool metrics) are tested in marina-pool's tests.

use std::path::Path;

mod common;

use common::start;
use serde_json::Value;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The 404 for an unknown app says which worker dirs were searched (outside production).
#[tokio::test]
async fn unknown_app_404_names_the_dirs_searched() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), |_| {}).await;
    let resp = reqwest::get(format!("{}/nope/", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "APP_NOT_FOUND");
    let shown = dir.path().display().to_string();
    assert!(body["message"].as_str().unwrap().contains(&shown), "{body}");
    assert_eq!(body["data"]["dirs"], serde_json::json!([shown]));
    srv.stop().await;

    // Production hides server paths from clients.
    let srv = start(dir.path(), |r| {
        r.set("NODE_ENV", "production");
    })
    .await;
    let body: Value = reqwest::get(format!("{}/nope/", srv.base)).await.unwrap().json().await.unwrap();
    assert_eq!(body["code"], "APP_NOT_FOUND");
    assert!(!body.to_string().contains(&shown), "{body}");
    srv.stop().await;
}

/// `maxBodySize` holds for static apps too, and comes before the method check: 413, not 405.
#[tokio::test]
async fn static_apps_enforce_the_body_limit_before_the_method() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("site/index.html"), "<html><body>site</body></html>");
    write(&dir.path().join("site/manifest.yaml"), "entrypoint: index.html\nmaxBodySize: 1kb\n");
    let srv = start(dir.path(), |_| {}).await;
    let client = reqwest::Client::new();
    let resp = client.post(format!("{}/site/", srv.base)).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "PAYLOAD_TOO_LARGE");
    let resp = client.post(format!("{}/site/", srv.base)).body(vec![b'x'; 16]).send().await.unwrap();
    assert_eq!(resp.status(), 405, "under the limit the method decides");
    assert_eq!(client.get(format!("{}/site/", srv.base)).send().await.unwrap().status(), 200);
    srv.stop().await;
}

/// With `RUNTIME_API_PREFIX` set the API moves, and an app named `api` is served at `/api/`.
#[tokio::test]
async fn an_app_named_api_is_served_when_the_api_has_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("api/index.html"), "<html><body>the api app</body></html>");
    let srv = start(dir.path(), |_| {}).await;
    let resp = reqwest::get(format!("{}/api/", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 404, "without a prefix /api/ is the internal API");
    srv.stop().await;

    let srv = start(dir.path(), |r| {
        r.set("RUNTIME_API_PREFIX", "/_");
    })
    .await;
    let resp = reqwest::get(format!("{}/api/", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("the api app"));
    assert_eq!(reqwest::get(format!("{}/_/api/health", srv.base)).await.unwrap().status(), 200);
    let apps: Value = reqwest::get(format!("{}/_/api/apps", srv.base)).await.unwrap().json().await.unwrap();
    assert_eq!(apps[0]["name"], "api");
    srv.stop().await;
}
