//! Live reload over real HTTP with real Node workers (issue 8, items 1 and 3): editing a running
//! app's code, its manifest `env` and its `.env` switches to the new behaviour while a
//! concurrent request loop sees no failure; a broken edit keeps the old version serving and says
//! why in `/api/apps` and `/api/workers`; the next change retries; files the app writes itself
//! do not reload it; old workers get `onTerminate`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use serde_json::Value;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Write beside and rename, as editors do, so a reader never sees half a file.
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The app: answers `{code} {GREETING} {pid}`; `/write` writes into its own data dir and
/// node_modules; `onTerminate` appends its pid to `$MARKER`.
fn code(version: &str) -> String {
    format!(
        r#"import {{ appendFileSync, mkdirSync, writeFileSync }} from "node:fs";
export default {{
  fetch(req) {{
    if (new URL(req.url).pathname === "/write") {{
      mkdirSync("data", {{ recursive: true }});
      writeFileSync("data/out.txt", String(Date.now()));
      mkdirSync("node_modules/.cache", {{ recursive: true }});
      writeFileSync("node_modules/.cache/x", "y");
      writeFileSync("app.log", "line");
      return new Response("wrote");
    }}
    return new Response(`{version} ${{process.env.GREETING}} ${{process.pid}}`);
  }},
  onTerminate() {{ appendFileSync(process.env.MARKER, `${{process.pid}}\n`); }},
}};
"#
    )
}

fn manifest(greeting: &str, marker: &Path) -> String {
    format!(
        "entrypoint: index.js\nttl: 5m\ntimeout: 10s\nenv:\n  GREETING: {greeting}\n  MARKER: {}\n",
        marker.display()
    )
}

/// Requests in a loop until stopped; counts answers and failures (anything but 200).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut workers = Vec::new();
            for _ in 0..4 {
                let (s, o, f, client, url) = (s.clone(), o.clone(), f.clone(), client.clone(), url.clone());
                workers.push(tokio::spawn(async move {
                    while !s.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                                o.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                f.lock().push(format!("{status}: {body}"));
                            }
                            Err(e) => f.lock().push(format!("transport: {e}")),
                        }
                    }
                }));
            }
            for w in workers {
                let _ = w.await;
            }
        });
        Load { stop, ok, failures, task }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), self.failures.lock().clone())
    }
}

async fn text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Poll the app until its answer starts with `want`; how long that took.
async fn until_serves(url: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = text(url).await;
        if got.starts_with(want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "still {got:?}, not {want:?}, after 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_to_code_manifest_env_and_dotenv_switch_without_a_failed_request() {
    let apps = tempfile::tempdir().unwrap();
    // marina's state dir, so the marker can be in the app's data dir: the one place (with its
    // tmp dir) a confined worker may write (docs/security.md).
    let marks = tempfile::tempdir().unwrap();
    let marker = marks.path().join("workers/live/data/terminated");
    let dir = apps.path().join("live");
    write(&dir.join("index.js"), &code("v1"));
    write(&dir.join("manifest.yaml"), &manifest("hello", &marker));
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
        r.set("RUNTIME_STATE_DIR", marks.path().display().to_string());
    })
    .await;
    let url = format!("{}/live/", srv.base);
    assert!(text(&url).await.starts_with("v1 hello "));
    let first_pid = text(&url).await.rsplit(' ').next().unwrap().to_string();

    // 1. The code.
    let load = Load::start(url.clone());
    write(&dir.join("index.js"), &code("v2"));
    let took = until_serves(&url, "v2 hello ").await;
    eprintln!("code edit served after {took:?}");
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "requests failed during the switch: {failures:?}");
    assert!(ok > 0);
    // The old worker drained and got onTerminate.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&marker).unwrap_or_default().lines().any(|l| l == first_pid) {
        assert!(Instant::now() < deadline, "onTerminate of the old worker {first_pid} not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 2. The manifest's env.
    let load = Load::start(url.clone());
    write(&dir.join("manifest.yaml"), &manifest("bonjour", &marker));
    let took = until_serves(&url, "v2 bonjour ").await;
    eprintln!("manifest edit served after {took:?}");
    let (_, failures) = load.finish().await;
    assert!(failures.is_empty(), "requests failed during the switch: {failures:?}");

    // 3. The .env (which wins over the manifest's env).
    let load = Load::start(url.clone());
    write(&dir.join(".env"), "GREETING=hola\n");
    let took = until_serves(&url, "v2 hola ").await;
    eprintln!(".env edit served after {took:?}");
    let (_, failures) = load.finish().await;
    assert!(failures.is_empty(), "requests failed during the switch: {failures:?}");

    // 4. What the app writes itself does not reload it.
    let created = |m: &Value| m["pool"]["totalWorkersCreated"].as_u64().unwrap();
    let before = created(&json(&format!("{}/api/workers", srv.base)).await);
    let pid = text(&url).await;
    let wrote = text(&format!("{}/live/write", srv.base)).await;
    if wrote.contains("EACCES") {
        // A confined worker (root + Landlock, docs/security.md) cannot write its app dir at all.
        eprintln!("the worker is confined to its data and tmp dirs: it cannot write its app dir");
        srv.stop().await;
        return;
    }
    assert_eq!(wrote, "wrote");
    assert!(dir.join("data/out.txt").is_file() && dir.join("node_modules/.cache/x").is_file());
    // Absence can only be watched for a while: several debounce periods.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(text(&url).await, pid, "the app's own writes restarted it");
    assert_eq!(created(&json(&format!("{}/api/workers", srv.base)).await), before);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_keeps_the_old_version_serving_and_the_next_change_retries() {
    let apps = tempfile::tempdir().unwrap();
    // marina's state dir, so the marker can be in the app's data dir: the one place (with its
    // tmp dir) a confined worker may write (docs/security.md).
    let marks = tempfile::tempdir().unwrap();
    let marker = marks.path().join("workers/fragile/data/terminated");
    let dir = apps.path().join("fragile");
    write(&dir.join("index.js"), &code("v1"));
    write(&dir.join("manifest.yaml"), &manifest("hello", &marker));
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
        r.set("RUNTIME_STATE_DIR", marks.path().display().to_string());
    })
    .await;
    let url = format!("{}/fragile/", srv.base);
    let serving = text(&url).await;
    assert!(serving.starts_with("v1 hello "));

    // Code that does not even parse: the new worker cannot start.
    let load = Load::start(url.clone());
    write(&dir.join("index.js"), "export default { fetch( ");
    let apps_url = format!("{}/api/apps", srv.base);
    let deadline = Instant::now() + Duration::from_secs(15);
    let state = loop {
        let list = json(&apps_url).await;
        let state = list[0]["states"][0].clone();
        if state.get("reloadError").is_some() {
            break state;
        }
        assert!(Instant::now() < deadline, "no reload error shown: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state["state"], "ok", "{state}");
    assert!(state["reloadError"].as_str().unwrap().contains("did not start"), "{state}");
    assert_eq!(text(&url).await, serving, "the old worker keeps serving");
    let workers = json(&format!("{}/api/workers", srv.base)).await;
    let row = workers["workers"].as_array().unwrap().iter().find(|w| w["app"] == "fragile").unwrap().clone();
    assert!(row["reloadError"].as_str().is_some_and(|e| !e.is_empty()), "{row}");
    assert_eq!(row["restarts"], 0, "a failed reload is not a crash of the running version");

    // A manifest that does not load: still the old worker, and /api/apps says what is wrong.
    write(&dir.join("manifest.yaml"), "entrypoint: index.js\nttl: 5x\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = json(&apps_url).await;
        if list[0]["states"][0]["state"] == "invalid" {
            assert_eq!(list[0]["states"][0]["code"], "APP_MANIFEST_INVALID");
            assert_eq!(list[0]["states"][0]["errors"][0]["path"], "ttl");
            break;
        }
        assert!(Instant::now() < deadline, "invalid manifest not shown: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text(&url).await, serving, "a broken manifest does not take the app down");

    // Fixing both retries and switches.
    write(&dir.join("manifest.yaml"), &manifest("hello", &marker));
    write(&dir.join("index.js"), &code("v3"));
    until_serves(&url, "v3 hello ").await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "requests failed while edits were broken: {failures:?}");
    assert!(ok > 0);
    // The registry's view (`/api/apps`) catches up with the switch on its own refresh, which
    // may land just after the first v3 answer: wait for it rather than assume the order.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = json(&apps_url).await;
        if list[0]["states"][0]["state"] == "ok" {
            assert!(list[0]["states"][0].get("reloadError").is_none(), "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "the fixed manifest is not shown as ok: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}
