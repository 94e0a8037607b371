//! Isolation attacks through the whole server, with real worker processes: a hostile JS app
//! (tests/apps/hostile) tries to read marina's environment and database, another app's `.env`,
//! another worker's socket (with a forged lifecycle call), grows its memory without bound,
//! forks without bound and floods its output. Each attack must fail while marina keeps serving.
//!
//! The uid and Landlock attacks need marina to run as root on a kernel with Landlock (CI does);
//! elsewhere they print why they skip. The cgroup ones need a memory (and pids) cgroup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use serde_json::Value;

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/hostile")
}

/// A worker dir that other users may enter (temp dirs are 0700), with `hostile` and `victim`.
fn apps(extra_manifest: &str) -> tempfile::TempDir {
    let apps = tempfile::tempdir().unwrap();
    set_mode(apps.path(), 0o755);
    for (name, manifest) in [
        ("hostile", format!("entrypoint: index.js\nttl: 60s\ntimeout: 30s\n{extra_manifest}")),
        ("victim", "entrypoint: index.js\nttl: 60s\n".to_string()),
    ] {
        let dir = apps.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let src = std::fs::read_to_string(hostile_dir().join("index.js")).unwrap();
        std::fs::write(dir.join("index.js"), src).unwrap();
        set_mode(&dir.join("index.js"), 0o644);
        std::fs::write(dir.join("manifest.yaml"), manifest).unwrap();
        set_mode(&dir.join("manifest.yaml"), 0o644);
    }
    let env = apps.path().join("victim/.env");
    std::fs::write(&env, "VICTIM_SECRET=hunter2\n").unwrap();
    set_mode(&env, 0o644);
    apps
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let resp =
        reqwest::Client::new().get(format!("{base}{path}")).timeout(Duration::from_secs(60)).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn q(s: &str) -> String {
    common::query_value(s)
}

async fn sandbox_status(base: &str) -> Value {
    get(base, "/api/workers").await.1["sandbox"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_app_cannot_reach_marina_other_apps_or_other_workers() {
    let apps = apps("");
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
        r.set("RUNTIME_WORKER_UIDS", "200000-265535");
    })
    .await;
    let sandbox = sandbox_status(&srv.base).await;
    if !is_root() {
        eprintln!("skipping: marina is not root here, so workers run as its own user (CI runs as root)");
        srv.stop().await;
        return;
    }
    eprintln!("sandbox: {sandbox}");
    assert_eq!(sandbox["perAppUid"], true, "{sandbox}");
    // The victim is running, with its socket in the state dir.
    let (status, _) = get(&srv.base, "/victim/").await;
    assert_eq!(status, 200);
    let (_, me) = get(&srv.base, "/hostile/whoami").await;
    let (_, victim) = get(&srv.base, "/victim/whoami").await;
    let uid = me["uid"].as_u64().unwrap();
    assert!(uid >= 200000, "the worker runs as uid {uid}, not one of the range");
    assert_ne!(me["uid"], victim["uid"], "two apps share a uid");
    // The lifecycle token is in neither argv nor the environment.
    let argv: Vec<String> = serde_json::from_value(me["argv"].clone()).unwrap();
    assert_eq!(argv.len(), 4, "argv is runtime, shim, socket, readiness fd: {argv:?}");
    assert_eq!(argv[3], "3", "{argv:?}");
    let env: Vec<String> = serde_json::from_value(me["env"].clone()).unwrap();
    // (LIBSQL_AUTH_TOKEN is the app's own data-services token, meant for it.)
    assert!(!env.iter().any(|k| k.contains("CONTROL") || k.contains("LIFECYCLE")), "{env:?}");
    assert!(me["tmpdir"].as_str().unwrap().starts_with(srv.state_dir.to_str().unwrap()), "{me}");

    eprintln!("me: {me}");
    let marina = std::process::id();
    let try_read = |path: String| {
        let base = srv.base.clone();
        async move { get(&base, &format!("/hostile/read?path={}", q(&path))).await.1 }
    };
    // marina's own environment, memory maps and database.
    // Another app's own database (APP_DATABASE_PATH), as `marina db migrate` would leave it.
    let victim_db = srv.state_dir.join("apps/victim/app.db");
    std::fs::write(&victim_db, "victim data").unwrap();
    for path in [
        format!("/proc/{marina}/environ"),
        format!("/proc/{marina}/mem"),
        srv.state_dir.join("marina.db").display().to_string(),
        victim_db.display().to_string(),
    ] {
        let r = try_read(path.clone()).await;
        assert_eq!(r["ok"], false, "the hostile app read {path}: {r}");
    }
    let r = get(&srv.base, &format!("/hostile/list?path={}", q(srv.state_dir.to_str().unwrap()))).await.1;
    assert_eq!(r["ok"], false, "the hostile app listed marina's state dir: {r}");
    // The other worker's environment and socket, and a forged lifecycle call through it.
    let victim_pid = victim["pid"].as_u64().unwrap();
    let r = try_read(format!("/proc/{victim_pid}/environ")).await;
    assert_eq!(r["ok"], false, "the hostile app read the victim's environment: {r}");
    let victim_sock = victim["argv"][2].as_str().unwrap().to_string();
    let r = get(&srv.base, &format!("/hostile/forge?path={}", q(&victim_sock))).await.1;
    assert_eq!(r["ok"], false, "the hostile app reached the victim's socket: {r}");
    let r = get(&srv.base, &format!("/hostile/signal?pid={victim_pid}")).await.1;
    assert_eq!(r["ok"], false, "the hostile app can signal the victim: {r}");
    let (status, _) = get(&srv.base, "/victim/").await;
    assert_eq!(status, 200, "the victim still serves");

    // Files: another app's .env, and writes outside its own data and tmp dirs.
    if sandbox["landlock"] == true {
        let r = try_read(apps.path().join("victim/.env").display().to_string()).await;
        assert_eq!(r["ok"], false, "the hostile app read the victim's .env: {r}");
        let r = get(&srv.base, &format!("/hostile/write?path={}", q(apps.path().join("hostile/x").to_str().unwrap())))
            .await
            .1;
        assert_eq!(r["ok"], false, "the hostile app wrote into its own app dir: {r}");
        let r = get(&srv.base, "/hostile/write?path=/tmp/marina-hostile-was-here").await.1;
        assert_eq!(r["ok"], false, "the hostile app wrote to /tmp: {r}");
    } else {
        eprintln!("skipping the file confinement checks: this kernel has no Landlock");
    }
    let own = format!("{}/ok", me["data"].as_str().unwrap());
    let r = get(&srv.base, &format!("/hostile/write?path={}", q(&own))).await.1;
    assert_eq!(r["ok"], true, "the app cannot write its own data dir: {r}");
    let own_db = srv.state_dir.join("apps/hostile/app.db");
    let r = get(&srv.base, &format!("/hostile/write?path={}", q(own_db.to_str().unwrap()))).await.1;
    assert_eq!(r["ok"], true, "the app cannot write its own database: {r}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_near_max_memory_and_the_app_recovers() {
    let apps = apps("maxMemory: 96mb\n");
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
    })
    .await;
    let sandbox = sandbox_status(&srv.base).await;
    let started = Instant::now();
    let (status, body) = get(&srv.base, "/hostile/bomb").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "WORKER_MEMORY_LIMIT", "{body}");
    assert!(started.elapsed() < Duration::from_secs(50));
    let workers = get(&srv.base, "/api/workers").await.1;
    let row = workers["workers"].as_array().unwrap().iter().find(|w| w["app"] == "hostile").cloned();
    if let Some(row) = row {
        assert!(row["lastRestartReason"].as_str().unwrap_or("").contains("maxMemory"), "{row}");
    }
    if sandbox["memoryLimit"] == "kernel" {
        // The kernel stopped it at the limit: the peak of the new worker is far below it.
        let (status, _) = get(&srv.base, "/hostile/whoami").await;
        assert_eq!(status, 200, "the app serves again");
    } else {
        eprintln!("no memory cgroup here: the limit was enforced by sampling");
    }
    let (status, _) = get(&srv.base, "/hostile/whoami").await;
    assert_eq!(status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_by_the_process_limit() {
    let apps = apps("");
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
        r.set("RUNTIME_WORKER_MAX_PROCS", "64");
    })
    .await;
    let sandbox = sandbox_status(&srv.base).await;
    if sandbox["maxProcs"].is_null() {
        eprintln!("skipping: no pids cgroup on this machine ({sandbox})");
        srv.stop().await;
        return;
    }
    let (status, body) = get(&srv.base, "/hostile/forks?n=300").await;
    assert_eq!(status, 200, "{body}");
    let started = body["started"].as_u64().unwrap();
    assert!(started < 64, "{started} processes started under a limit of 64: {body}");
    assert!(body["failed"].as_u64().unwrap() > 0, "{body}");
    // marina and the other apps are unaffected.
    let (status, _) = get(&srv.base, "/victim/").await;
    assert_eq!(status, 200);
    srv.stop().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_without_newlines_leaves_marina_small_and_the_app_serving() {
    let apps = apps("");
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
    })
    .await;
    let (status, _) = get(&srv.base, "/hostile/").await;
    assert_eq!(status, 200);
    let before = rss_kib();
    let (status, body) = get(&srv.base, "/hostile/flood?mb=200").await;
    assert_eq!(status, 200, "{body}");
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "marina grew by {grown} KiB while the app printed 200 MB");
    // Output keeps flowing: the app was never blocked on a full pipe, and serves again.
    let (status, body) = get(&srv.base, "/hostile/flood?mb=1").await;
    assert_eq!(status, 200, "{body}");
    srv.stop().await;
}

/// `sandbox.read` widens what an app may read, and only that: a file outside its dir is denied
/// without the key and readable with it; a key reaching marina's state dir or the worker dirs
/// is refused when the worker starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_read_widens_reads_only_where_allowed() {
    let outside = tempfile::tempdir().unwrap();
    set_mode(outside.path(), 0o755);
    let file = outside.path().join("model.txt");
    std::fs::write(&file, "weights").unwrap();
    set_mode(&file, 0o644);
    let apps = apps("");
    // `wide` is the hostile app with the key.
    let wide = apps.path().join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    set_mode(&wide, 0o755);
    std::fs::copy(apps.path().join("hostile/index.js"), wide.join("index.js")).unwrap();
    set_mode(&wide.join("index.js"), 0o644);
    std::fs::write(
        wide.join("manifest.yaml"),
        format!("entrypoint: index.js\nttl: 60s\nsandbox:\n  read: [{}]\n", outside.path().display()),
    )
    .unwrap();
    set_mode(&wide.join("manifest.yaml"), 0o644);
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_JS", "node");
    })
    .await;
    let sandbox = sandbox_status(&srv.base).await;
    if sandbox["landlock"] != true {
        eprintln!("skipping: no Landlock on this kernel, so nothing confines reads ({sandbox})");
        srv.stop().await;
        return;
    }
    let path = q(file.to_str().unwrap());
    let r = get(&srv.base, &format!("/hostile/read?path={path}")).await.1;
    assert_eq!(r["ok"], false, "an app without sandbox.read read a file outside its dir: {r}");
    let r = get(&srv.base, &format!("/wide/read?path={path}")).await.1;
    assert_eq!(r["ok"], true, "sandbox.read did not let the app read {}: {r}", file.display());
    assert_eq!(r["value"], 7);
    // Still nothing else: another app's .env stays out of reach of the widened app.
    let r =
        get(&srv.base, &format!("/wide/read?path={}", q(apps.path().join("victim/.env").to_str().unwrap()))).await.1;
    assert_eq!(r["ok"], false, "{r}");

    // An app asking for marina's state dir, or for the worker dirs, does not start.
    for (name, target) in [("greedy", srv.state_dir.clone()), ("nosy", apps.path().to_path_buf())] {
        let dir = apps.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        std::fs::copy(apps.path().join("hostile/index.js"), dir.join("index.js")).unwrap();
        set_mode(&dir.join("index.js"), 0o644);
        std::fs::write(
            dir.join("manifest.yaml"),
            format!("entrypoint: index.js\nttl: 60s\nsandbox: {{read: [{}]}}\n", target.display()),
        )
        .unwrap();
        set_mode(&dir.join("manifest.yaml"), 0o644);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (status, body) = loop {
            let (status, body) = get(&srv.base, &format!("/{name}/whoami")).await;
            if status != 404 || Instant::now() > deadline {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status, 502, "{name}: {body}");
        assert_eq!(body["code"], "WORKER_START_FAILED", "{body}");
        assert!(body["message"].as_str().unwrap().contains("sandbox.read"), "{body}");
    }
    srv.stop().await;
}

/// A process app speaking raw HTTP/1.1: `/huge` sends a 20 MiB header, `/many` 20,000 headers,
/// `/badname` a header name with `(`, anything else `ok` with the process id.
const RAW_HEAD_APP: &str = r#"import os, socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(os.environ["PORT"])))
srv.listen(64)
def handle(c):
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d:
            return
        data += d
    path = data.split(b" ")[1]
    try:
        if path.startswith(b"/huge"):
            c.sendall(b"HTTP/1.1 200 OK\r\nX-Big: ")
            for _ in range(320):
                c.sendall(b"a" * 65536)
            c.sendall(b"\r\n\r\n")
        elif path.startswith(b"/many"):
            c.sendall(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20000)) + b"Content-Length: 2\r\n\r\nok")
        elif path.startswith(b"/badname"):
            c.sendall(b"HTTP/1.1 200 OK\r\nX(A): b\r\nContent-Length: 2\r\n\r\nok")
        else:
            body = str(os.getpid()).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answering_with_a_huge_or_malformed_head_gets_502_and_is_not_blamed_as_crashed() {
    let apps = tempfile::tempdir().unwrap();
    set_mode(apps.path(), 0o755);
    let dir = apps.path().join("raw");
    std::fs::create_dir_all(&dir).unwrap();
    set_mode(&dir, 0o755);
    std::fs::write(dir.join("app.py"), RAW_HEAD_APP).unwrap();
    std::fs::write(dir.join("manifest.yaml"), "command: [\"python3\", \"app.py\"]\nttl: 60s\n").unwrap();
    for f in ["app.py", "manifest.yaml"] {
        set_mode(&dir.join(f), 0o644);
    }
    let srv = common::start(apps.path(), |_| {}).await;
    let (status, pid) = get(&srv.base, "/raw/").await;
    assert_eq!(status, 200, "{pid}");
    // (hyper reads at most its buffer's worth of a head before refusing it, so the 20 MiB
    // header is never held.)
    for path in ["/raw/huge", "/raw/many", "/raw/badname"] {
        let (status, body) = get(&srv.base, path).await;
        assert_eq!((status, body["code"].as_str()), (502, Some("WORKER_BAD_RESPONSE")), "{path}: {body}");
    }
    let (status, again) = get(&srv.base, "/raw/").await;
    assert_eq!((status, &again), (200, &pid), "the same worker still serves");
    srv.stop().await;
}

/// Apps whose names differ only in characters a file name cannot hold (`x y` and `x_y`) get
/// private data and tmp dirs of their own: what one writes there the other cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_with_look_alike_names_do_not_share_their_private_dirs() {
    let apps = tempfile::tempdir().unwrap();
    set_mode(apps.path(), 0o755);
    let src = std::fs::read_to_string(hostile_dir().join("index.js")).unwrap();
    for name in ["x y", "x_y"] {
        let dir = apps.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        std::fs::write(dir.join("index.js"), &src).unwrap();
        set_mode(&dir.join("index.js"), 0o644);
        std::fs::write(dir.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
        set_mode(&dir.join("manifest.yaml"), 0o644);
    }
    let srv = common::start(apps.path(), |raw| {
        raw.set("RUNTIME_JS", "node");
    })
    .await;
    let (status, a) = get(&srv.base, "/x%20y/whoami").await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = get(&srv.base, "/x_y/whoami").await;
    assert_eq!(status, 200, "{b}");
    for dir in ["data", "tmpdir"] {
        assert_ne!(a[dir], b[dir], "{dir} is shared: {a} {b}");
    }
    let secret = format!("{}/secret", b["data"].as_str().unwrap());
    let (_, wrote) = get(&srv.base, &format!("/x_y/write?path={}", q(&secret))).await;
    assert_eq!(wrote["ok"], true, "{wrote}");
    let mine = format!("{}/secret", a["data"].as_str().unwrap());
    let (_, read) = get(&srv.base, &format!("/x%20y/read?path={}", q(&mine))).await;
    assert_eq!(read["error"], "ENOENT", "x y sees x_y's file in its own data dir: {read}");
    srv.stop().await;
}
