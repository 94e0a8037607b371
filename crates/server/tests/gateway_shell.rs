//! The gateway's app shell through a real server: a static shell app from `GATEWAY_SHELL_DIR`
//! answers what no app or plugin claimed, by Buntime's `Sec-Fetch-Dest` rules, after the apps
//! in the route table; excludes by variable and by cookie; a bad shell stops start-up.

mod common;

use std::path::Path;

use reqwest::Client;

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workers/tests/apps/js-echo");
    let app = tmp.path().join("apps/echo");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(from.join("index.js"), app.join("index.js")).unwrap();
    std::fs::write(app.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
    let shell = tmp.path().join("shell");
    std::fs::create_dir_all(&shell).unwrap();
    std::fs::write(shell.join("index.html"), "<!doctype html><title>shell</title><p>the shell</p>\n").unwrap();
    std::fs::write(shell.join("main.js"), "console.log('shell');\n").unwrap();
    std::fs::write(shell.join("manifest.yaml"), "entrypoint: index.html\n").unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/gateway/manifest.yaml");
    let plugin = tmp.path().join("plugins/gateway");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::copy(manifest, plugin.join("manifest.yaml")).unwrap();
    tmp
}

async fn get(c: &Client, url: String, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_answers_page_loads_nothing_else_claimed() {
    let tmp = setup();
    let (plugins, shell) = (tmp.path().join("plugins"), tmp.path().join("shell"));
    let srv = common::start(&tmp.path().join("apps"), |r| {
        r.set("RUNTIME_JS", "node")
            .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
            .set("GATEWAY_SHELL_DIR", shell.display().to_string())
            .set("GATEWAY_SHELL_EXCLUDES", "cpanel, legacy");
    })
    .await;
    let c = Client::new();
    let at = |p: &str| format!("{}{p}", srv.base);
    let doc = [("sec-fetch-dest", "document")];
    let is_shell = |(s, body): &(u16, String)| *s == 200 && body.contains("the shell");

    // Page loads: `/`, unknown first segments, deep paths.
    for p in ["/", "/dashboard", "/settings/profile/x"] {
        let got = get(&c, at(p), &doc).await;
        assert!(is_shell(&got), "{p}: {got:?}");
    }
    // Single-segment paths that are not embedded: the shell's own assets, with or without
    // Sec-Fetch-Dest (curl sends none).
    for headers in [vec![("sec-fetch-dest", "script")], vec![]] {
        let (s, body) = get(&c, at("/main.js"), &headers).await;
        assert_eq!((s, body.as_str()), (200, "console.log('shell');\n"), "{headers:?}");
    }
    // Apps and plugin routes come first; the internal API is never the shell's.
    let (s, body) = get(&c, at("/echo/echo"), &doc).await;
    assert_eq!(s, 200);
    assert!(body.contains("\"method\":\"GET\""), "{body}");
    assert_eq!(get(&c, at("/gateway/api/stats"), &doc).await.0, 200);
    let (s, body) = get(&c, at("/api/health"), &doc).await;
    assert!(s == 200 && body.contains("healthy"), "{body}");
    assert_eq!(get(&c, at("/api/nope"), &doc).await.0, 404);
    // Not the shell's: embedded, multi-segment non-documents, excluded segments (by variable
    // or by cookie).
    for (p, headers) in [
        ("/page", vec![("sec-fetch-dest", "iframe")]),
        ("/page", vec![("sec-fetch-dest", "embed")]),
        ("/a/b.js", vec![("sec-fetch-dest", "script")]),
        ("/a/b", vec![]),
        ("/cpanel", vec![("sec-fetch-dest", "document")]),
        ("/legacy/x", vec![("sec-fetch-dest", "document")]),
        ("/todo/x", vec![("sec-fetch-dest", "document"), ("cookie", "theme=dark; gateway_shell_excludes=todo,blog")]),
    ] {
        let (s, body) = get(&c, at(p), &headers).await;
        assert_eq!(s, 404, "{p} {headers:?}: {body}");
        assert!(body.contains("\"success\":false"), "{body}");
    }
    let config: serde_json::Value = c.get(at("/gateway/api/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["shell"]["excludes"], serde_json::json!(["cpanel", "legacy"]));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_shell_stops_start_up_naming_the_variable() {
    let tmp = setup();
    let plugins = tmp.path().join("plugins");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (dir, excludes, expect) in [
        (tmp.path().join("missing"), "", "is not a directory"),
        (empty.clone(), "", "does not load"),
        (tmp.path().join("shell"), "ok, not/ok", "not/ok"),
    ] {
        let state = tempfile::tempdir().unwrap();
        let mut raw = marina_server::RawConfig::new();
        raw.set("PORT", "0")
            .set("RUNTIME_WORKER_DIRS", tmp.path().join("apps").display().to_string())
            .set("RUNTIME_PLUGIN_DIRS", plugins.display().to_string())
            .set("RUNTIME_STATE_DIR", state.path().display().to_string())
            .set("GATEWAY_SHELL_DIR", dir.display().to_string());
        if !excludes.is_empty() {
            raw.set("GATEWAY_SHELL_EXCLUDES", excludes);
            let err = marina_server::RuntimeConfig::from_raw(&raw, Path::new("/")).expect_err("refused");
            assert_eq!(err.var, "GATEWAY_SHELL_EXCLUDES");
            continue;
        }
        let config = marina_server::RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap();
        let err = marina_server::Server::bind(config).await.err().expect("does not start");
        assert!(err.message().contains("GATEWAY_SHELL_DIR") && err.message().contains(expect), "{err}");
    }
}
