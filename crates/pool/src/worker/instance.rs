//! One worker process: how it starts, how marina knows it is ready, and how it stops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use marina_core::{Error, body};
use marina_proxy::{Target, Upstream};
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::Inner;
use super::js;
use super::spawn::{self, SpawnSpec, StderrTail};
use super::stats::LatencyRing;
use crate::app::{App, WorkerKind};

/// How long a worker may take to start listening.
pub(crate) const START_LIMIT: Duration = Duration::from_secs(30);
/// How long `autoInstall` may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(120);
/// How long a lifecycle call (`onIdle`, `onTerminate`) may take.
const LIFECYCLE_LIMIT: Duration = Duration::from_secs(2);

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Dead = 3,
}

#[derive(Debug, Clone)]
pub(crate) enum Boot {
    Pending,
    Ready,
    Failed(Arc<Error>),
}

/// One running (or starting) worker process.
pub(crate) struct Worker {
    pub id: String,
    pub app: Arc<App>,
    pub key: String,
    pub ephemeral: bool,
    pub created: Instant,
    /// The supervising shell: the process group leader (see `spawn::SUPERVISOR`).
    pid: AtomicU32,
    /// The app's own process under it, once known.
    app_pid: AtomicU32,
    upstream: OnceLock<Upstream>,
    /// A JS worker's socket file, removed when the worker exits.
    socket: OnceLock<PathBuf>,
    phase: AtomicU8,
    boot: watch::Sender<Boot>,
    exited: watch::Sender<bool>,
    pub in_flight: AtomicUsize,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Microseconds after `created` of the last request start or end (the sliding TTL clock).
    last_used_us: AtomicU64,
    pub idle_notified: AtomicBool,
    pub latency: Mutex<LatencyRing>,
    stderr: StderrTail,
    token: String,
    /// Set when marina asked it to stop, so its exit is not counted as a crash.
    expected_exit: AtomicBool,
    pub exit_status: Mutex<Option<String>>,
    pub drained: Notify,
    pub rss: AtomicU64,
    pool: Weak<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).field("key", &self.key).field("pid", &self.pid()).finish()
    }
}

impl Worker {
    pub fn new(app: Arc<App>, ephemeral: bool, pool: Weak<Inner>) -> Arc<Self> {
        let id = uuid::Uuid::new_v4().to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        Arc::new(Self {
            key: app.key(),
            id,
            app,
            ephemeral,
            created: Instant::now(),
            pid: AtomicU32::new(0),
            app_pid: AtomicU32::new(0),
            upstream: OnceLock::new(),
            socket: OnceLock::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            boot: watch::Sender::new(Boot::Pending),
            exited: watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_used_us: AtomicU64::new(0),
            idle_notified: AtomicBool::new(false),
            latency: Mutex::new(LatencyRing::new(100)),
            stderr: Default::default(),
            token,
            expected_exit: AtomicBool::new(false),
            exit_status: Mutex::new(None),
            drained: Notify::new(),
            rss: AtomicU64::new(0),
            pool,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::SeqCst) {
            0 => None,
            p => Some(p),
        }
    }

    /// The pid to show: the app's own process when known, else the group leader.
    pub fn app_pid(&self) -> Option<u32> {
        match self.app_pid.load(Ordering::Relaxed) {
            0 => self.pid(),
            p => Some(p),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Dead,
        }
    }

    fn set_phase(&self, p: Phase) {
        // Dead is final; Draining only moves on to Dead.
        let _ = self.phase.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
            if cur == Phase::Dead as u8 || (cur == Phase::Draining as u8 && p != Phase::Dead) {
                None
            } else {
                Some(p as u8)
            }
        });
    }

    /// Whether marina asked this worker to stop (drain, kill, shutdown).
    fn stop_requested(&self) -> bool {
        self.expected_exit.load(Ordering::SeqCst)
    }

    /// Starting or ready: may take new requests.
    pub fn usable(&self) -> bool {
        matches!(self.phase(), Phase::Starting | Phase::Ready)
    }

    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.get()
    }

    pub fn touch(&self) {
        let us = u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_used_us.store(us, Ordering::Release);
    }

    /// Time since the last request started or ended (or since start, if none).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_used_us.load(Ordering::Acquire));
        self.created.elapsed().saturating_sub(last)
    }

    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr.lock().iter().cloned().collect()
    }

    /// Waits until the worker is ready, or returns why it never will be.
    pub async fn wait_ready(&self) -> Result<(), Error> {
        if self.upstream.get().is_some() {
            return Ok(()); // the warm path: no channel involved
        }
        let mut rx = self.boot.subscribe();
        let state = rx.wait_for(|b| !matches!(b, Boot::Pending)).await.map(|b| b.clone());
        match state {
            Ok(Boot::Ready) => Ok(()),
            Ok(Boot::Failed(e)) => Err(clone_error(&e)),
            _ => Err(Error::internal(format!("worker {} of app '{}' vanished while starting", self.id, self.key))),
        }
    }

    /// Waits up to `limit` for the process to exit; true when it has.
    pub async fn wait_exit(&self, limit: Duration) -> bool {
        if self.pid().is_none() && !matches!(*self.boot.borrow(), Boot::Pending) {
            return true; // never spawned
        }
        let mut rx = self.exited.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|e| *e)).await.is_ok()
    }

    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// SIGKILL to the whole process group, now. The exit is expected, not a crash.
    pub fn kill(&self) {
        self.expected_exit.store(true, Ordering::SeqCst);
        self.set_phase(Phase::Dead);
        if let Some(pid) = self.pid() {
            spawn::signal_group(pid, Signal::SIGKILL);
        }
    }

    /// Marks the worker as leaving: no new requests reach it.
    pub fn begin_drain(&self) -> bool {
        self.expected_exit.store(true, Ordering::SeqCst);
        let before = self.phase();
        self.set_phase(Phase::Draining);
        before != Phase::Draining && before != Phase::Dead
    }

    /// Waits until no request is in flight, or `limit` passes; true when drained.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.drained.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// `onTerminate`, then SIGTERM, then SIGKILL after `grace`.
    pub async fn terminate(&self, grace: Duration) {
        self.expected_exit.store(true, Ordering::SeqCst);
        if self.phase() != Phase::Dead && !self.has_exited() {
            self.lifecycle("terminate").await;
        }
        self.stop(grace).await;
    }

    /// SIGTERM, then SIGKILL after `grace` (no lifecycle call).
    pub async fn stop(&self, grace: Duration) {
        self.expected_exit.store(true, Ordering::SeqCst);
        if let Some(pid) = self.pid() {
            if !self.has_exited() {
                spawn::signal_group(pid, Signal::SIGTERM);
                if !self.wait_exit(grace).await {
                    spawn::signal_group(pid, Signal::SIGKILL);
                }
            }
            // Children that ignored SIGTERM or outlived the leader still get SIGKILL.
            spawn::signal_group(pid, Signal::SIGKILL);
        }
        self.set_phase(Phase::Dead);
        if let Some(up) = self.upstream() {
            up.close_idle();
        }
    }

    /// Tells a JS worker about a lifecycle event (`idle` → `onIdle`, `terminate` → `onTerminate`).
    /// Process apps have no such hooks; they get SIGTERM when stopping.
    pub async fn lifecycle(&self, event: &'static str) {
        if self.app.kind != WorkerKind::Js || self.phase() == Phase::Starting {
            return;
        }
        let Some(up) = self.upstream() else { return };
        let req = Request::post("/__marina/lifecycle")
            .header("x-marina-control", self.token.as_str())
            .header("x-marina-event", event)
            .body(body::empty())
            .expect("static request parts are valid");
        let call = async {
            if let Ok(resp) = up.forward(req).await {
                let _ = resp.into_body().collect().await;
            }
        };
        if tokio::time::timeout(LIFECYCLE_LIMIT, call).await.is_err() {
            tracing::warn!(app = %self.key, worker = %self.id, "on{event} did not finish within {LIFECYCLE_LIMIT:?}");
        }
    }

    /// Starts the process and waits for it to listen. Run as its own task.
    pub async fn boot(self: Arc<Self>, ctx: BootContext) {
        let outcome = self.clone().boot_inner(&ctx).await;
        match outcome {
            Ok(()) => {
                self.touch();
                self.set_phase(Phase::Ready);
                self.boot.send_replace(Boot::Ready);
            }
            Err(e) => {
                let stopped = self.stop_requested();
                tracing::warn!(app = %self.key, worker = %self.id, "worker did not start: {}", e.message());
                self.kill();
                if !stopped && let Some(pool) = self.pool.upgrade() {
                    pool.on_start_failed(&self, e.message());
                }
                self.boot.send_replace(Boot::Failed(Arc::new(clone_error(&e))));
                if self.pid().is_none() {
                    self.exited.send_replace(true);
                    if let Some(pool) = self.pool.upgrade() {
                        pool.forget(&self);
                    }
                }
            }
        }
    }

    async fn boot_inner(self: Arc<Self>, ctx: &BootContext) -> Result<(), Error> {
        let app = &self.app;
        let mut marina_env: Vec<(&str, String)> = vec![
            ("APP_DIR", app.dir.display().to_string()),
            ("ENTRYPOINT", app.entrypoint.display().to_string()),
            ("WORKER_CONFIG", worker_config_json(app)),
            ("WORKER_ID", self.id.clone()),
            ("NODE_ENV", ctx.node_env.clone()),
            ("RUNTIME_API_URL", ctx.runtime_api_url.clone()),
            ("RUNTIME_LOG_LEVEL", ctx.log_level.clone()),
        ];
        let (spec, target) = match app.kind {
            WorkerKind::Js => {
                let runtime = ctx.runtime()?;
                let socket = ctx.state_dir.join("sock").join(format!("{}.sock", &self.id[..13]));
                if socket.as_os_str().len() >= 100 {
                    return Err(self.start_error(format!(
                        "the worker socket path {} is too long for a Unix socket (limit about 100 bytes); use a shorter RUNTIME_STATE_DIR",
                        socket.display()
                    )));
                }
                let _ = std::fs::remove_file(&socket);
                let _ = self.socket.set(socket.clone());
                let (program, args) =
                    js::command(&runtime, &ctx.shim, &app.entrypoint, &socket, &self.token, app.config.low_memory)?;
                let env = spawn::worker_env(&app.config.env, &marina_env);
                if app.config.auto_install {
                    self.auto_install(&env).await?;
                }
                (SpawnSpec { program, args, cwd: app.dir.clone(), env }, Target::Unix(socket))
            }
            WorkerKind::Process => {
                let command = app.config.command.as_deref().unwrap_or_default();
                let Some((program, rest)) = command.split_first() else {
                    return Err(self.start_error(
                        "the manifest's `command` is empty; expected e.g. [\"python3\", \"app.py\"]".into(),
                    ));
                };
                let port =
                    free_port().map_err(|e| self.start_error(format!("could not find a free loopback port: {e}")))?;
                marina_env.push(("PORT", port.to_string()));
                let env = spawn::worker_env(&app.config.env, &marina_env);
                let spec = SpawnSpec {
                    program: program.into(),
                    args: rest.iter().map(Into::into).collect(),
                    cwd: app.dir.clone(),
                    env,
                };
                (spec, Target::Tcp(([127, 0, 0, 1], port).into()))
            }
            WorkerKind::Static => {
                return Err(Error::internal(format!("app '{}' is static and has no worker process", self.key)));
            }
        };

        let (mut child, mut stderr_pump) = spawn::spawn(&spec, &self.key, &self.id, &self.stderr)
            .map_err(|e| self.start_error(format!("could not run '{}': {e}", spec.program.to_string_lossy())))?;
        let pid = child.id().unwrap_or(0);
        self.pid.store(pid, Ordering::SeqCst);
        // Stopped (shutdown, eviction) while we were spawning: whoever stopped us may have read
        // no pid, so the process is ours to kill. SeqCst pairs with `begin_drain` then `pid()`.
        if self.stop_requested() {
            spawn::signal_group(pid, Signal::SIGKILL);
        }
        tracing::info!(app = %self.key, worker = %self.id, pid, target = %target, "worker started");
        let this = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let text = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            *this.exit_status.lock() = Some(text);
            if let Some(socket) = this.socket.get() {
                let _ = std::fs::remove_file(socket);
            }
            this.set_phase(Phase::Dead);
            if let Some(pool) = this.pool.upgrade() {
                pool.on_exit(&this, !this.expected_exit.load(Ordering::Acquire));
            }
            this.exited.send_replace(true);
        });

        let upstream = Upstream::new(target);
        let health = app.config.health_path.clone().filter(|_| app.kind == WorkerKind::Process);
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        // A JS worker listens within a few ms of starting: probe every millisecond at first
        // (a failed probe is one connect(2)), then every 15 ms for slow starters.
        let mut probes = 0u32;
        loop {
            if self.has_exited() {
                let status = self.exit_status.lock().clone().unwrap_or_default();
                // Let the stderr pump read the last lines, which usually say why.
                if let Some(pump) = stderr_pump.take() {
                    let _ = tokio::time::timeout(Duration::from_millis(500), pump).await;
                }
                return Err(self.start_error(format!("the process exited while starting ({status})")));
            }
            if self.stop_requested() {
                return Err(self.start_error("the worker was stopped while starting".into()));
            }
            if upstream.probe().await.is_ok() && self.healthy(&upstream, health.as_deref()).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.start_error(format!(
                    "it did not listen on {} within {}s",
                    upstream.target(),
                    START_LIMIT.as_secs()
                )));
            }
            probes += 1;
            let pause = if probes <= 200 { Duration::from_millis(1) } else { Duration::from_millis(15) };
            tokio::time::sleep(pause).await;
        }
        let _ = self.upstream.set(upstream);
        if let Some(app) = spawn::app_pid(pid) {
            self.app_pid.store(app, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn healthy(&self, upstream: &Upstream, path: Option<&str>) -> bool {
        let Some(path) = path else { return true };
        let Ok(req) = Request::get(path).body(body::empty()) else { return false };
        match tokio::time::timeout(Duration::from_secs(2), upstream.forward(req)).await {
            Ok(Ok(resp)) => {
                let ok = resp.status().is_success() || resp.status().is_redirection();
                let _ = resp.into_body().collect().await;
                ok
            }
            _ => false,
        }
    }

    async fn auto_install(&self, env: &BTreeMap<String, String>) -> Result<(), Error> {
        let bun = spawn::which("bun").ok_or_else(|| {
            self.start_error(
                "autoInstall needs Bun (`bun install`), which is not on PATH; install Bun (https://bun.sh)".into(),
            )
        })?;
        let mut cmd = tokio::process::Command::new(bun);
        cmd.args(["install", "--frozen-lockfile", "--ignore-scripts"])
            .current_dir(&self.app.dir)
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(INSTALL_LIMIT, cmd.output())
            .await
            .map_err(|_| {
                self.start_error(format!("autoInstall (bun install) took longer than {}s", INSTALL_LIMIT.as_secs()))
            })?
            .map_err(|e| self.start_error(format!("autoInstall could not run bun install: {e}")))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = text.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(self.start_error(format!(
                "autoInstall: bun install failed ({}): {}",
                out.status,
                tail.join("\n")
            )));
        }
        Ok(())
    }

    fn start_error(&self, reason: String) -> Error {
        let stderr = self.stderr_tail();
        Error::new(
            StatusCode::BAD_GATEWAY,
            "WORKER_START_FAILED",
            format!("app '{}' did not start: {reason}", self.key),
        )
        .with_data(json!({ "app": self.key, "worker": self.id, "reason": reason, "stderr": stderr }))
    }
}

/// Everything a worker needs from the pool to start.
#[derive(Clone)]
pub(crate) struct BootContext {
    pub state_dir: PathBuf,
    pub shim: PathBuf,
    pub js_runtime: Result<js::JsRuntime, Arc<Error>>,
    pub node_env: String,
    pub runtime_api_url: String,
    pub log_level: String,
}

impl BootContext {
    fn runtime(&self) -> Result<js::JsRuntime, Error> {
        match &self.js_runtime {
            Ok(r) => Ok(r.clone()),
            Err(e) => Err(clone_error(e)),
        }
    }
}

/// `marina_core::Error` is not `Clone` (it may hold a source); copies keep status, code, message, data.
pub(crate) fn clone_error(e: &Error) -> Error {
    let copy = Error::new(e.status(), e.code().to_string(), e.message().to_string());
    match e.data() {
        Some(d) => copy.with_data(d.clone()),
        None => copy,
    }
}

/// The normalized config a worker sees as `WORKER_CONFIG` (durations in ms, sizes in bytes;
/// `env` left out: the worker has it as its environment already).
fn worker_config_json(app: &App) -> String {
    let c = &app.config;
    json!({
        "entrypoint": app.entrypoint,
        "ttlMs": c.ttl.as_millis() as u64,
        "idleTimeoutMs": c.idle_timeout.as_millis() as u64,
        "timeoutMs": c.timeout.as_millis() as u64,
        "maxRequests": c.max_requests,
        "lowMemory": c.low_memory,
        "autoInstall": c.auto_install,
        "maxBodySizeBytes": c.max_body_size,
        "injectBase": c.inject_base,
        "envPrefix": c.env_prefix,
        "command": c.command,
        "healthPath": c.health_path,
        "instances": { "min": c.instances.min, "max": c.instances.max },
        "maxMemoryBytes": c.max_memory,
    })
    .to_string()
}

/// A loopback port that was free a moment ago (the process app binds it right after).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
