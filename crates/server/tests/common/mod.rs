//! A marina server in the test process, on 127.0.0.1 and a free port, stopped gracefully.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use marina_plugins::Loaded;
use marina_server::{RawConfig, RuntimeConfig, Server};
use tokio::sync::oneshot;

/// A running server; `stop` shuts it down the way SIGTERM does.
pub struct Running {
    pub base: String,
    #[allow(dead_code)]
    pub addr: SocketAddr,
    /// marina's state dir (a temp dir removed when the server is dropped).
    #[allow(dead_code)]
    pub state_dir: std::path::PathBuf,
    /// The server's shared state (its worker pool, plugins, ...).
    #[allow(dead_code)]
    pub runtime: std::sync::Arc<marina_server::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _state: tempfile::TempDir,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task).await.expect("server stops").unwrap();
    }
}

/// The repository's bundled plugin dir (`examples/plugins`: gateway, keyval, database, ...), for
/// `RUNTIME_PLUGIN_DIRS`.
#[allow(dead_code)]
pub fn bundled_plugins() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins").display().to_string()
}

/// Serve the apps in `worker_dir` with a fresh state dir; `tweak` adjusts the raw config.
#[allow(dead_code)]
pub async fn start(worker_dir: &Path, tweak: impl FnOnce(&mut RawConfig)) -> Running {
    start_with(worker_dir, tweak, Vec::new()).await
}

/// [`start`] with plugins built in code, in load order.
pub async fn start_with(worker_dir: &Path, tweak: impl FnOnce(&mut RawConfig), plugins: Vec<Loaded>) -> Running {
    let state = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::new();
    raw.set("PORT", "0")
        .set("RUNTIME_WORKER_DIRS", worker_dir.display().to_string())
        .set("RUNTIME_STATE_DIR", state.path().display().to_string())
        .set("NODE_ENV", "test");
    tweak(&mut raw);
    let config = RuntimeConfig::from_raw(&raw, Path::new("/")).unwrap();
    let server = Server::bind_with(config, plugins).await.expect("server binds");
    let addr = server.local_addr();
    let runtime = server.runtime();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        base: format!("http://{addr}"),
        addr,
        state_dir: state.path().to_path_buf(),
        runtime,
        stop: Some(tx),
        task,
        _state: state,
    }
}

/// The echo app (`crates/workers/tests/apps/js-echo`) at `/echo` and the bundled gateway
/// manifest with `extra` appended, in a temp dir with `apps/` and `plugins/` — the set-up of the
/// gateway tests.
#[allow(dead_code)]
pub fn gateway_fixture(extra: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workers/tests/apps/js-echo");
    let to = tmp.path().join("apps/echo");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(from.join("index.js"), to.join("index.js")).unwrap();
    std::fs::write(to.join("manifest.yaml"), "entrypoint: index.js\nttl: 60s\n").unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/gateway/manifest.yaml");
    let plugin = tmp.path().join("plugins/gateway");
    std::fs::create_dir_all(&plugin).unwrap();
    let text = std::fs::read_to_string(manifest).unwrap();
    std::fs::write(plugin.join("manifest.yaml"), format!("{text}\n{extra}")).unwrap();
    tmp
}

/// A response header as text (`None` when absent).
#[allow(dead_code)]
pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

/// `s` percent-encoded for a query value (letters, digits and `/._-` kept), the way the hostile
/// test apps read their `?path=` and `?body=`.
#[allow(dead_code)]
pub fn query_value(s: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC.remove(b'/').remove(b'.').remove(b'_').remove(b'-');
    utf8_percent_encode(s, KEEP).to_string()
}
