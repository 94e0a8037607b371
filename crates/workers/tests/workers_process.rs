//! Process apps: a real Python worker on a loopback port.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_app_serves_with_health_path_env_and_cookies() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), None, |_| {});
    let app = py_app("py", |c| {
        c.health_path = Some("/health".into());
        c.env = BTreeMap::from([("GREETING".into(), "hola".into())]);
    });
    let r = get(&pool, &app, "/hello?x=1").await;
    assert_eq!(r.text, "python says /hello?x=1 base=/py");

    let r = call(&pool, &app, "POST", "/upload", "0123456789").await.unwrap();
    assert_eq!(r.text, "got 10 bytes");

    let r = get(&pool, &app, "/cookies").await;
    assert_eq!(r.headers.get_all("set-cookie").iter().count(), 2);

    let env: BTreeMap<String, String> = serde_json::from_str(&get(&pool, &app, "/env").await.text).unwrap();
    assert_eq!(env["GREETING"], "hola");
    assert!(env["PORT"].parse::<u16>().is_ok());
    assert_eq!(env["APP_DIR"], app.dir.display().to_string());
    assert!(!env.contains_key("CARGO_PKG_NAME"), "the runtime's env leaked: {env:?}");
    let allowed = [
        "PATH",
        "HOME",
        "GREETING",
        "PORT",
        "APP_DIR",
        "ENTRYPOINT",
        "WORKER_CONFIG",
        "WORKER_ID",
        "NODE_ENV",
        "RUNTIME_API_URL",
        "RUNTIME_LOG_LEVEL",
        "RUNTIME_WORKER_DIRS",
        "RUNTIME_PLUGIN_DIRS",
        "APP_DATABASE_PATH",
        "LC_CTYPE",
        "TMPDIR",
        "APP_DATA_DIR",
    ];
    for k in env.keys() {
        // pyenv's python3 shim is a bash script: bash and pyenv add their own variables.
        let shell_added =
            ["PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str()) || k.trim_start_matches('_').starts_with("PYENV");
        assert!(allowed.contains(&k.as_str()) || shell_added, "unexpected variable {k} in a worker's environment");
    }

    let w = pool.workers();
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].kind, w[0].state), ("process", "ready"));
    assert!(w[0].rss_bytes.unwrap_or(0) > 0);
    pool.shutdown(Duration::from_secs(2)).await;
    assert!(pool.workers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_gets_a_scoped_token_revoked_when_it_stops() {
    let state = tempfile::tempdir().unwrap();
    let tokens = marina_workers::WorkerTokens::default();
    let t = tokens.clone();
    let pool = pool(state.path(), None, move |o| o.tokens = Some(t));
    let app = py_app("tok", |_| {});
    let env: BTreeMap<String, String> = serde_json::from_str(&get(&pool, &app, "/env").await.text).unwrap();
    assert_eq!(env["LIBSQL_URL"], "http://127.0.0.1:8000/database/api/");
    let token = &env["LIBSQL_AUTH_TOKEN"];
    let grant = tokens.verify(token).expect("the worker's token is live while it runs");
    assert_eq!((grant.app.as_str(), grant.worker_id.as_str()), ("tok", env["WORKER_ID"].as_str()));
    pool.shutdown(Duration::from_secs(2)).await;
    assert!(
        eventually(Duration::from_secs(10), || tokens.verify(token).is_none()).await,
        "the token outlived its worker"
    );
    assert_eq!(tokens.live(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_program_is_a_clear_start_error() {
    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), None, |_| {});
    let app = py_app("nope", |c| c.command = Some(vec!["no-such-program-xyz".into()]));
    let err = call(&pool, &app, "GET", "/", "").await.err().unwrap();
    assert_eq!(err.code(), "WORKER_START_FAILED");
    assert!(err.message().contains("no-such-program-xyz"), "{}", err.message());
}

/// Collects everything the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_output_goes_to_the_log_tagged_with_the_app() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), None, |_| {});
    let app = py_app("logpy", |_| {});
    get(&pool, &app, "/logged-path").await;
    let text = || String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        eventually(Duration::from_secs(3), || {
            let t = text();
            t.lines().any(|l| {
                l.contains("app=logpy@1.0.0") && l.contains("stream=\"stdout\"") && l.contains("py-echo listening on")
            }) && t
                .lines()
                .any(|l| l.contains("app=logpy@1.0.0") && l.contains("stream=\"stderr\"") && l.contains("/logged-path"))
        })
        .await,
        "worker output not in the log:\n{}",
        text()
    );
    pool.shutdown(Duration::from_secs(2)).await;
}
