//! Manifests and `.env` files cannot reach outside their app (issue 7, item 7), through a real
//! marina serving requests: a manifest or `.env` symlinked to a secret outside the app dir, a
//! FIFO and a file over 1 MiB are refused with `APP_FILE_REFUSED`, the secret's content appears
//! in no response body and not in `/api/apps`, nothing blocks on the FIFO, and the other apps
//! keep serving meanwhile — also when an app's manifest turns into such a file while marina runs.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use serde_json::Value;

const SECRET: &str = "s3cr3t-root-key-0123456789";

fn fifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

fn static_app(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), format!("<h1>{name}</h1>")).unwrap();
    dir
}

/// A worker dir with one good app and one app per way of reaching outside.
fn apps(secret_file: &Path) -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    let r = apps.path();
    static_app(r, "good");
    std::os::unix::fs::symlink(secret_file, static_app(r, "linked").join("manifest.yaml")).unwrap();
    std::os::unix::fs::symlink(secret_file, static_app(r, "linked-json").join("worker.config.json")).unwrap();
    fifo(&static_app(r, "piped").join("manifest.yaml"));
    // Over 1 MiB, with the secret inside: refused before a byte is read.
    let mut huge = format!("# {SECRET}\n").into_bytes();
    huge.resize(1024 * 1024 + 10, b'#');
    std::fs::write(static_app(r, "huge").join("manifest.yaml"), &huge).unwrap();
    std::os::unix::fs::symlink(secret_file, static_app(r, "env-linked").join(".env")).unwrap();
    fifo(&static_app(r, "env-piped").join(".env"));
    std::fs::write(static_app(r, "env-huge").join(".env"), &huge).unwrap();
    apps
}

const BAD: [(&str, &str); 7] = [
    ("linked", "manifest.yaml"),
    ("linked-json", "worker.config.json"),
    ("piped", "manifest.yaml"),
    ("huge", "manifest.yaml"),
    ("env-linked", ".env"),
    ("env-piped", ".env"),
    ("env-huge", ".env"),
];

async fn get(base: &str, path: &str) -> (u16, String) {
    let resp =
        reqwest::Client::new().get(format!("{base}{path}")).timeout(Duration::from_secs(30)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn secret_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), format!("ROOT_KEY={SECRET}\nentrypoint: {SECRET}\n")).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_fifo_and_huge_manifests_and_env_files_are_refused_without_leaking() {
    let secret = secret_file();
    let apps = apps(secret.path());
    let srv = common::start(apps.path(), |_| {}).await;

    // Other apps keep serving while the bad ones are hammered (none blocks on its FIFO).
    let base = srv.base.clone();
    let good = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        for _ in 0..40 {
            let t = Instant::now();
            let (status, body) = get(&base, "/good/").await;
            assert_eq!(status, 200, "{body}");
            worst = worst.max(t.elapsed());
        }
        worst
    });
    for round in 0..3 {
        for (app, file) in BAD {
            let (status, text) = get(&srv.base, &format!("/{app}/")).await;
            assert!(!text.contains(SECRET), "/{app}/ leaks the secret: {text}");
            assert!(!text.contains(&secret.path().display().to_string()), "/{app}/ names the target: {text}");
            assert_eq!(status, 500, "/{app}/ (round {round}): {text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["success"], false);
            assert_eq!(body["code"], "APP_FILE_REFUSED", "/{app}/: {body}");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(file) && message.contains("refused"), "{message}");
            assert!(body["data"]["file"].as_str().unwrap().ends_with(&format!("{app}/{file}")), "{body}");
            assert_eq!(body["data"]["errors"][0]["path"], "", "{body}");
        }
    }
    let worst = good.await.unwrap();
    eprintln!("slowest request to the good app while the bad ones were refused: {worst:?}");

    // /api/apps shows each as invalid with the code, and quotes nothing of the secret.
    let (status, text) = get(&srv.base, "/api/apps").await;
    assert_eq!(status, 200);
    assert!(!text.contains(SECRET), "/api/apps leaks the secret: {text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    for (app, _) in BAD {
        let entry = list.as_array().unwrap().iter().find(|a| a["name"] == app).unwrap_or_else(|| panic!("{app}"));
        assert_eq!(entry["states"][0]["state"], "invalid", "{entry}");
        assert_eq!(entry["states"][0]["code"], "APP_FILE_REFUSED", "{entry}");
    }
    let good_entry = list.as_array().unwrap().iter().find(|a| a["name"] == "good").unwrap();
    assert_eq!(good_entry["states"][0]["state"], "ok");
    srv.stop().await;
}

/// An app whose manifest becomes a symlink to a secret while marina runs is refused once the
/// change is seen; the other app never stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_swapped_for_a_symlink_while_running_is_refused() {
    let secret = secret_file();
    let apps = tempfile::tempdir().unwrap();
    static_app(apps.path(), "good");
    let flip = static_app(apps.path(), "flip");
    std::fs::write(flip.join("manifest.yaml"), "ttl: 1m\n").unwrap();
    let srv = common::start(apps.path(), |_| {}).await;
    assert_eq!(get(&srv.base, "/flip/").await.0, 200);

    std::fs::remove_file(flip.join("manifest.yaml")).unwrap();
    std::os::unix::fs::symlink(secret.path(), flip.join("manifest.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = get(&srv.base, "/flip/").await;
        assert!(!text.contains(SECRET), "{text}");
        if status == 500 {
            assert!(text.contains("APP_FILE_REFUSED"), "{text}");
            break;
        }
        assert_eq!(status, 200, "{text}");
        assert!(Instant::now() < deadline, "the swapped manifest was never refused");
        assert_eq!(get(&srv.base, "/good/").await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&srv.base, "/good/").await.0, 200);
    let (_, text) = get(&srv.base, "/api/apps").await;
    assert!(!text.contains(SECRET), "{text}");
    srv.stop().await;
}

/// In production the refusal shows only its code and the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_production_a_refused_file_shows_only_the_code_and_request_id() {
    let secret = secret_file();
    let apps = apps(secret.path());
    let srv = common::start(apps.path(), |r| {
        r.set("NODE_ENV", "production");
    })
    .await;
    for (app, _) in BAD {
        let resp = reqwest::get(format!("{}/{app}/", srv.base)).await.unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let text = resp.text().await.unwrap();
        assert!(!text.contains(SECRET) && !text.contains(apps.path().to_str().unwrap()), "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["code"], "APP_FILE_REFUSED", "{body}");
        assert_eq!(body["data"]["requestId"], id, "{body}");
    }
    srv.stop().await;
}
