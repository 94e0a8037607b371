//! The example apps in `examples/apps` run as documented (manifests read by the real loader).

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use marina_apps::{App, WorkerKind, manifest};

fn example(name: &str) -> Arc<App> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps").join(name).canonicalize().unwrap();
    let loaded = manifest::load(&dir).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let config = loaded.config;
    let kind = if config.command.is_some() { WorkerKind::Process } else { WorkerKind::Js };
    let entry = config.entrypoint.clone().unwrap_or_else(|| "app.py".into());
    Arc::new(App {
        name: name.into(),
        version: "latest".into(),
        entrypoint: dir.join(entry),
        dir,
        kind,
        config: Arc::new(config),
        proxy: Default::default(),
        key: App::key_of(name, "latest"),
        migrated: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_answer_as_their_comments_say() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), None, |_| {});

    let routes = example("routes-js");
    assert!(get(&pool, &routes, "/todos").await.text.contains("try marina"));
    let r = call(&pool, &routes, "POST", "/todos", r#"{"title":"ship it"}"#).await.unwrap();
    assert_eq!(r.status, 201);
    assert!(get(&pool, &routes, "/todos/2").await.text.contains("ship it"));
    assert_eq!(get(&pool, &routes, "/assets/css/site.css").await.text, "asset css/site.css");

    let py = example("hello-py");
    assert!(get(&pool, &py, "/anything").await.text.contains(r#""path": "/anything""#));

    if runtimes().contains(&"bun") {
        let hello = example("hello-js");
        assert!(get(&pool, &hello, "/greet?name=Ada").await.text.contains(r#""hello":"Ada""#));
    }

    let sse = example("sse-js");
    let req = http::Request::get("/events").body(marina_core::body::empty()).unwrap();
    let resp = pool.dispatch(sse.clone(), req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(3), body.frame()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(frame.data_ref().unwrap()).contains("data: tick 0"));
    drop(body);
    pool.shutdown(Duration::from_secs(2)).await;
}
