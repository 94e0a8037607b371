//! No worker outlives marina, even when marina is killed with SIGKILL.
//!
//! The test re-runs this test binary as a stand-in for marina (`orphan_host`, which only does
//! anything when MARINA_ORPHAN_HOST is set), lets it start a Node, a Bun and a Python worker and
//! a process app that forks a grandchild, SIGKILLs it, and checks that every one is gone.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_host() {
    let Some(state) = std::env::var_os("MARINA_ORPHAN_HOST") else { return };
    let pool = pool(std::path::Path::new(&state), Some("node"), |_| {});
    let mut pids = Vec::new();
    let js = js_app("js", "js-echo", "index.js", |_| {});
    pids.push(get(&pool, &js, "/pid").await.text);
    let py = py_app("py", |_| {});
    pids.push(get(&pool, &py, "/pid").await.text);
    // A process app whose command starts a grandchild of its own (like `npm start` does).
    // In the app's data dir: the one place (with its tmp dir) a worker may write.
    let grandchild_file = std::path::Path::new(&state).join("workers/forking/data/grandchild.pid");
    let forking = py_app("forking", |c| {
        c.command =
            Some(vec!["sh".into(), "-c".into(), r#"sleep 300 & echo $! > "$GRANDCHILD_FILE"; python3 app.py"#.into()]);
        c.env.insert("GRANDCHILD_FILE".into(), grandchild_file.display().to_string());
    });
    pids.push(get(&pool, &forking, "/pid").await.text);
    pids.push(std::fs::read_to_string(&grandchild_file).unwrap().trim().to_string());
    if runtimes().contains(&"bun") {
        let bun_pool = common::pool(&std::path::Path::new(&state).join("bun"), Some("bun"), |_| {});
        pids.push(get(&bun_pool, &js, "/pid").await.text);
        std::mem::forget(bun_pool);
    }
    println!("PIDS {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(30)).await;
}

#[test]
fn no_orphans_after_sigkill_of_marina() {
    let state = tempfile::tempdir().unwrap();
    // The host starts with SIGHUP, SIGINT and SIGQUIT ignored, as marina does under `nohup` or
    // as a script's background job: ignored signals survive `exec`, and a shell cannot trap one
    // that was ignored when it started, so marina must reset them for its workers (the process
    // apps' supervising shell kills its group on SIGHUP). Without that reset this test fails.
    let mut host = Command::new("sh")
        .args(["-c", r#"trap '' HUP INT QUIT; exec "$0" "$@""#])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "orphan_host", "--nocapture", "--test-threads=1"])
        .env("MARINA_ORPHAN_HOST", state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(state.path().join("host.log")).unwrap()))
        .spawn()
        .unwrap();
    let stdout = host.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest may print "test orphan_host ... " on the same line first.
            if let Some((_, p)) = line.split_once("PIDS ") {
                let _ = tx.send(p.split_whitespace().map(|s| s.parse::<u32>().unwrap()).collect::<Vec<_>>());
            }
        }
    });
    let pids = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(p) => p,
        Err(e) => {
            let _ = host.kill();
            let log = std::fs::read_to_string(state.path().join("host.log")).unwrap_or_default();
            panic!("the host did not report its workers: {e}\n{log}");
        }
    };
    assert!(pids.len() >= 4, "{pids:?}");
    for &p in &pids {
        assert!(!gone(p), "worker {p} should be running before the kill");
    }
    host.kill().unwrap(); // SIGKILL: no cleanup code in marina runs
    host.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !pids.iter().all(|&p| gone(p)) {
        assert!(
            Instant::now() < deadline,
            "orphaned workers: {:?}",
            pids.iter().filter(|&&p| !gone(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
