//! The process kinds, `js` and `process`: an OS process that answers HTTP.
//!
//! A `js` worker is Bun (or Node) running the host shim ([`js`]) on a Unix socket, started
//! directly and ready when the shim says so on its readiness pipe ([`ready`]); a `process`
//! worker is the manifest's `command`, listening on the loopback `PORT` it is given, run under
//! a supervising shell ([`spawn`]) and ready once it accepts a connection (and answers
//! `healthPath`). Each runs in its own process group and takes requests over pooled
//! keep-alive HTTP/1.1 connections ([`marina_proxy::Upstream`]).

mod js;
mod ready;
pub mod sandbox;
mod spawn;
pub mod timing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use marina_apps::{App, WorkerKind};
use marina_core::{Body, Error, body};
use marina_proxy::{Target, Upstream};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::watch;

use self::sandbox::output::Output;
use self::sandbox::{Jail, JailRequest, Sandbox, SandboxOptions, SandboxStatus};
use self::spawn::{SpawnSpec, StderrTail};
use crate::backend::{Backend, CallError, Event, Instance, StartSpec};

/// How long a worker may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long `autoInstall` may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(120);
/// How long a lifecycle call (`onIdle`, `onTerminate`) may take.
const LIFECYCLE_LIMIT: Duration = Duration::from_secs(2);
/// How long a failed start waits for its process to be gone before reporting.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// The header carrying a worker's lifecycle token (see the shim).
pub(crate) static CONTROL_HEADER: http::HeaderName = http::HeaderName::from_static("x-marina-control");

/// Settings every process worker starts with.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// `RUNTIME_STATE_DIR`: the shim and worker sockets go under it.
    pub state_dir: PathBuf,
    /// `RUNTIME_API_URL` as workers see it.
    pub runtime_api_url: String,
    /// `NODE_ENV` as workers see it.
    pub node_env: String,
    /// `RUNTIME_LOG_LEVEL` as workers see it.
    pub log_level: String,
    /// `RUNTIME_JS`: `bun`, `node` or a path; `None` = Bun when on PATH, else Node.
    pub js_runtime: Option<String>,
    /// `RUNTIME_WORKER_DIRS` as workers see it (colon-separated, absolute).
    pub worker_dirs: String,
    /// `RUNTIME_PLUGIN_DIRS` as workers see it.
    pub plugin_dirs: String,
    /// `APP_DATABASE_PATH` for an app name.
    pub app_database: Option<crate::pool::AppDatabasePath>,
    /// Issues each worker its `LIBSQL_AUTH_TOKEN` (see [`crate::tokens`]).
    pub tokens: Option<crate::tokens::WorkerTokens>,
    /// Worker user, uid range, cgroups (see [`sandbox`] and docs/security.md).
    pub sandbox: SandboxOptions,
}

/// Starts `js` and `process` workers.
pub struct ProcessBackend {
    opts: ProcessOptions,
    shim: PathBuf,
    js_runtime: Result<js::JsRuntime, Arc<Error>>,
    sandbox: Arc<Sandbox>,
}

impl ProcessBackend {
    /// Writes the JS host shim under `{state_dir}/shim/`, prepares `{state_dir}/sock/` (removing
    /// sockets a previous run left) and picks the JS engine.
    pub fn new(opts: ProcessOptions) -> Result<Self, Error> {
        let sandbox = Arc::new(Sandbox::init(&opts.sandbox, &opts.state_dir)?);
        // Socket dirs (and sockets) of workers of an earlier run.
        if let Ok(entries) = std::fs::read_dir(opts.state_dir.join("sock")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        let shim = js::write_shim(&opts.state_dir)?;
        let js_runtime = js::resolve(opts.js_runtime.as_deref()).map_err(Arc::new);
        match &js_runtime {
            Ok(rt) => tracing::info!(runtime = rt.name(), "JS workers will run under {}", rt.name()),
            Err(e) => tracing::warn!("JS workers cannot run: {}", e.message()),
        }
        Ok(Self { opts, shim, js_runtime, sandbox })
    }

    /// How workers are isolated on this machine, and what is not isolated.
    pub fn sandbox_status(&self) -> SandboxStatus {
        self.sandbox.status()
    }

    /// Tells a worker's connection to marina from anyone else's.
    pub fn callers(&self) -> sandbox::callers::CallerProbe {
        self.sandbox.callers()
    }

    fn runtime(&self) -> Result<js::JsRuntime, Error> {
        match &self.js_runtime {
            Ok(r) => Ok(r.clone()),
            Err(e) => Err(clone_error(e)),
        }
    }
}

impl Backend for ProcessBackend {
    fn start(&self, spec: StartSpec) -> BoxFuture<'static, Result<Arc<dyn Instance>, Error>> {
        let boot = Boot {
            key: spec.app.key().to_string(),
            spec,
            opts: self.opts.clone(),
            shim: self.shim.clone(),
            runtime: self.runtime(),
            stderr: StderrTail::default(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            sandbox: self.sandbox.clone(),
        };
        Box::pin(async move { boot.run().await.map(|i| i as Arc<dyn Instance>) })
    }
}

/// One start of one worker process.
struct Boot {
    spec: StartSpec,
    key: String,
    opts: ProcessOptions,
    shim: PathBuf,
    runtime: Result<js::JsRuntime, Error>,
    stderr: StderrTail,
    token: String,
    sandbox: Arc<Sandbox>,
}

impl Boot {
    async fn run(self) -> Result<Arc<ProcessInstance>, Error> {
        let app = self.spec.app.clone();
        let mut marina_env: Vec<(&str, String)> = vec![
            ("APP_DIR", app.dir.display().to_string()),
            ("ENTRYPOINT", app.entrypoint.display().to_string()),
            ("WORKER_CONFIG", worker_config_json(&app)),
            ("WORKER_ID", self.spec.worker_id.clone()),
            ("NODE_ENV", self.opts.node_env.clone()),
            ("RUNTIME_API_URL", self.opts.runtime_api_url.clone()),
            ("RUNTIME_LOG_LEVEL", self.opts.log_level.clone()),
            ("RUNTIME_WORKER_DIRS", self.opts.worker_dirs.clone()),
            ("RUNTIME_PLUGIN_DIRS", self.opts.plugin_dirs.clone()),
        ];
        if let Some(db) = self.opts.app_database.as_ref().and_then(|f| (f.0)(&app.name)) {
            marina_env.push(("APP_DATABASE_PATH", db.display().to_string()));
        }
        // The guard revokes the token when the process exits (it moves into the exit task
        // below), or on any early return if it never starts.
        let mut token_guard = crate::tokens::Revoke::default();
        if let Some(tokens) = &self.opts.tokens {
            marina_env.push(("LIBSQL_URL", format!("{}/database/api/", self.opts.runtime_api_url)));
            marina_env.push(("LIBSQL_AUTH_TOKEN", tokens.issue(&app.name, &self.spec.worker_id)));
            token_guard = crate::tokens::Revoke::new(tokens.clone(), self.spec.worker_id.clone());
        }
        let mut times = timing::enabled().then(timing::StartTimes::new);
        let mut socket = None;
        let jail_started = std::time::Instant::now();
        let (spec, target, mut jail) = if app.kind == WorkerKind::Js {
            let runtime = self.runtime.as_ref().map_err(clone_error)?;
            let mut env = self.worker_env(&marina_env);
            if app.config.auto_install {
                self.auto_install(&env).await?;
            }
            let mut jail = self.jail(runtime.path(), self.shim.parent().map(PathBuf::from).into_iter().collect())?;
            let path = jail.sock_dir.join("w.sock");
            if path.as_os_str().len() >= 100 {
                tokio::task::spawn_blocking(move || jail.clean_up());
                return Err(self.start_error(format!(
                    "the worker socket path {} is too long for a Unix socket (limit about 100 bytes); use a shorter RUNTIME_STATE_DIR",
                    path.display()
                )));
            }
            socket = Some(path.clone());
            let (program, args) = js::command(runtime, &self.shim, &app.entrypoint, &path, app.config.low_memory)?;
            env.append(&mut jail.env);
            let stdin = Some(format!("{}\n", self.token));
            (SpawnSpec { program, args, cwd: app.dir.clone(), env, stdin, direct: true }, Target::Unix(path), jail)
        } else {
            let command = app.config.command.as_deref().unwrap_or_default();
            let Some((program, rest)) = command.split_first() else {
                return Err(self
                    .start_error("the manifest's `command` is empty; expected e.g. [\"python3\", \"app.py\"]".into()));
            };
            let port =
                free_port().map_err(|e| self.start_error(format!("could not find a free loopback port: {e}")))?;
            marina_env.push(("PORT", port.to_string()));
            let mut env = self.worker_env(&marina_env);
            let resolved = spawn::resolve_program(program.as_ref(), env.get("PATH").map(String::as_str));
            let mut jail = self.jail(resolved.as_deref().unwrap_or(std::path::Path::new(program)), Vec::new())?;
            env.append(&mut jail.env);
            let spec = SpawnSpec {
                program: program.into(),
                args: rest.iter().map(Into::into).collect(),
                cwd: app.dir.clone(),
                env,
                stdin: None,
                direct: false,
            };
            (spec, Target::Tcp(([127, 0, 0, 1], port).into()), jail)
        };

        if let Some(t) = &mut times {
            t.prepare = jail_started.elapsed();
            t.cgroup = jail.cgroup_time;
            t.landlock = jail.landlock_time;
        }
        let output = Output::new(&self.key, &self.spec.worker_id);
        let spawned = match spawn::spawn(&spec, &mut jail, &output, &self.stderr, times.as_mut()) {
            Ok(spawned) => spawned,
            Err(e) => {
                tokio::task::spawn_blocking(move || jail.clean_up());
                return Err(self.start_error(format!("could not run '{}': {e}", spec.program.to_string_lossy())));
            }
        };
        let spawn::Spawned { mut child, stderr: mut stderr_pump, ready: ready_pipe } = spawned;
        let jail = Arc::new(jail);
        let pid = child.id().unwrap_or(0);
        let upstream = Arc::new(Upstream::new(target));
        let (exit_tx, exit_rx) = watch::channel(None);
        let memory_killed = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        {
            let upstream = upstream.clone();
            let socket = socket.clone();
            let jail = jail.clone();
            let memory_killed = memory_killed.clone();
            let peak = peak.clone();
            tokio::spawn(async move {
                let text = match child.wait().await {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                if let Some(socket) = socket {
                    let _ = std::fs::remove_file(socket);
                }
                drop(token_guard);
                // Children of the worker that outlived it die with it.
                spawn::signal_group(pid, Signal::SIGKILL);
                if let Some(cg) = &jail.cgroup {
                    if cg.oom_kills() > 0 {
                        memory_killed.store(true, Ordering::SeqCst);
                    }
                    peak.fetch_max(cg.peak().unwrap_or(0), Ordering::Relaxed);
                }
                // Whatever left the process group (setsid) is still in the cgroup: kill it,
                // then remove the worker's cgroups and socket dir. Not on the exit's path: the
                // exit (which frees a `ttl: 0` worker's gate slot) is told first.
                let cleaning = std::time::Instant::now();
                let cleanup = tokio::task::spawn_blocking(move || jail.clean_up());
                upstream.close_idle();
                exit_tx.send_replace(Some(text));
                let _ = cleanup.await;
                tracing::debug!(target: timing::TARGET, pid, cleanup_us = timing::us(cleaning.elapsed()), "worker cleaned up");
            });
        }
        let instance = Arc::new(ProcessInstance {
            pid,
            app_pid: AtomicU32::new(0),
            cgroup: jail,
            output,
            memory_killed,
            peak,
            upstream,
            hooks: std::sync::OnceLock::new(),
            supervised: !spec.direct,
            token: self.token.clone(),
            key: self.key.clone(),
            id: self.spec.worker_id.clone(),
            exit: exit_rx,
        });
        tracing::info!(app = %self.key, worker = %self.spec.worker_id, pid, listen = %instance.upstream.target(), "worker started");

        let spawned = std::time::Instant::now();
        match self.wait_ready(&instance, &app, &mut stderr_pump, ready_pipe).await {
            Ok(hooks) => {
                if let Some(t) = &times {
                    t.log(&self.key, &self.spec.worker_id, pid, spawned.elapsed());
                }
                let _ = instance.hooks.set(hooks);
                if instance.supervised
                    && let Some(app) = spawn::app_pid(pid)
                {
                    instance.app_pid.store(app, Ordering::Relaxed);
                }
                Ok(instance)
            }
            Err(e) => {
                instance.kill();
                let mut exit = instance.exit.clone();
                let _ = tokio::time::timeout(REAP_LIMIT, exit.wait_for(Option::is_some)).await;
                Err(e)
            }
        }
    }

    /// Waits until the worker is ready: the shim's readiness line on `pipe` (JS workers), else
    /// polling until the process listens (and answers `healthPath`). Fails when it exits, is
    /// cancelled, or [`START_LIMIT`] passes. Returns the lifecycle hooks it has.
    async fn wait_ready(
        &self,
        instance: &ProcessInstance,
        app: &App,
        stderr_pump: &mut Option<tokio::task::JoinHandle<()>>,
        pipe: Option<std::os::fd::OwnedFd>,
    ) -> Result<ready::Hooks, Error> {
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        if let Some(pipe) = pipe {
            let mut exit = instance.exit.clone();
            tokio::select! {
                hooks = ready::signalled(pipe) => {
                    if let Some(hooks) = hooks {
                        return Ok(hooks);
                    }
                    // EOF first: it exited (reported below), or closed fd 3 itself (probed).
                }
                _ = exit.wait_for(Option::is_some) => {}
                () = self.spec.cancel.cancelled() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        self.wait_listening(instance, app, stderr_pump, deadline).await?;
        Ok(if app.kind == WorkerKind::Js { ready::Hooks::UNKNOWN } else { ready::Hooks::NONE })
    }

    /// Polls until the process listens (and answers `healthPath`), exits, is cancelled, or
    /// `deadline` passes.
    async fn wait_listening(
        &self,
        instance: &ProcessInstance,
        app: &App,
        stderr_pump: &mut Option<tokio::task::JoinHandle<()>>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        let upstream = &instance.upstream;
        let health = app.config.health_path.clone().filter(|_| app.kind == WorkerKind::Process);
        // A JS worker listens within a few ms of starting: probe every millisecond at first
        // (a failed probe is one connect(2)), then every 15 ms for slow starters.
        let mut probes = 0u32;
        loop {
            let exited = instance.exit.borrow().clone();
            if let Some(status) = exited {
                // Let the stderr pump read the last lines, which usually say why.
                if let Some(pump) = stderr_pump.take() {
                    let _ = tokio::time::timeout(Duration::from_millis(500), pump).await;
                }
                return Err(self.start_error(format!("the process exited while starting ({status})")));
            }
            if self.spec.cancel.is_cancelled() {
                return Err(self.start_error("the worker was stopped while starting".into()));
            }
            if upstream.probe().await.is_ok() && healthy(upstream, health.as_deref()).await {
                return Ok(());
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
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.spec.cancel.cancelled() => {}
            }
        }
    }

    async fn auto_install(&self, env: &BTreeMap<String, String>) -> Result<(), Error> {
        let bun = spawn::which("bun").ok_or_else(|| {
            self.start_error(
                "autoInstall needs Bun (`bun install`), which is not on PATH; install Bun (https://bun.sh)".into(),
            )
        })?;
        let args = ["install", "--frozen-lockfile", "--ignore-scripts"].map(Into::into);
        let mut cmd = spawn::command(bun.as_os_str(), &args, &self.spec.app.dir, env);
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

    /// The worker's environment ([`spawn::worker_env`]) with a `PATH` its user can use.
    fn worker_env(&self, marina_env: &[(&str, String)]) -> BTreeMap<String, String> {
        let app = &self.spec.app;
        let mut env = spawn::worker_env(&app.config.env, marina_env);
        if !app.config.env.contains_key("PATH")
            && let Some(path) = env.get_mut("PATH")
        {
            *path = self.sandbox.worker_path(&app.name, path);
        }
        env
    }

    /// Prepares the worker's confinement; `program` is the executable (its install prefix may be
    /// read), `reads` more paths it may read.
    fn jail(&self, program: &std::path::Path, mut reads: Vec<PathBuf>) -> Result<Jail, Error> {
        let app = &self.spec.app;
        reads.extend(runtime_prefix(program));
        if !app.config.sandbox_read.is_empty() {
            let off_limits = sandbox::off_limits(
                &self.opts.state_dir,
                std::env::split_paths(&self.opts.worker_dirs).chain(std::env::split_paths(&self.opts.plugin_dirs)),
            );
            for p in &app.config.sandbox_read {
                sandbox::check_extra_read(p, &off_limits).map_err(|why| self.start_error(why))?;
                reads.push(p.clone());
            }
        }
        self.sandbox
            .jail(JailRequest {
                app_name: &app.name,
                db_dir: self
                    .opts
                    .app_database
                    .as_ref()
                    .and_then(|f| (f.0)(&app.name))
                    .and_then(|db| db.parent().map(PathBuf::from)),
                app_dir: &app.dir,
                worker_id: &self.spec.worker_id[..13],
                reads,
                max_memory: app.config.max_memory,
            })
            .map_err(|reason| self.start_error(reason))
    }

    fn start_error(&self, reason: String) -> Error {
        let stderr: Vec<String> = self.stderr.lines();
        Error::new(
            StatusCode::BAD_GATEWAY,
            "WORKER_START_FAILED",
            format!("app '{}' did not start: {reason}", self.key),
        )
        .with_data(json!({ "app": self.key, "worker": self.spec.worker_id, "reason": reason, "stderr": stderr }))
    }
}

async fn healthy(upstream: &Upstream, path: Option<&str>) -> bool {
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

/// A running worker process.
struct ProcessInstance {
    /// The process group leader: the runtime itself (`js`) or the supervising shell
    /// (`process`, see `spawn::SUPERVISOR`).
    pid: u32,
    /// The app's own process under it, once known.
    app_pid: AtomicU32,
    /// Its confinement: the cgroups that measure (and limit) its memory, once it has them.
    cgroup: Arc<Jail>,
    /// Its log output, with the count of lines the rate limit dropped.
    output: Output,
    /// Set when the kernel killed it for going over `maxMemory`.
    memory_killed: Arc<AtomicBool>,
    /// The highest memory use seen (the cgroup's peak, kept after the cgroup is gone).
    peak: Arc<AtomicU64>,
    upstream: Arc<Upstream>,
    /// The lifecycle hooks it has (set once it is ready).
    hooks: std::sync::OnceLock<ready::Hooks>,
    /// Whether it runs under the supervising shell (`pid` is the shell's, not the app's).
    supervised: bool,
    token: String,
    key: String,
    id: String,
    exit: watch::Receiver<Option<String>>,
}

impl ProcessInstance {
    fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

impl Instance for ProcessInstance {
    fn call(self: Arc<Self>, req: Request<Body>) -> BoxFuture<'static, Result<Response<Body>, CallError>> {
        Box::pin(async move {
            self.upstream.forward(req).await.map_err(|e| {
                if e.is_body_too_large() {
                    CallError::BodyTooLarge
                } else if e.is_bad_response() {
                    // A head too large or malformed is the app's answer, not a crash: the worker
                    // stays, and the message says what was wrong with it.
                    CallError::Failed(
                        Error::bad_gateway(
                            "WORKER_BAD_RESPONSE",
                            format!("app '{}' sent a response marina cannot pass on: {e}", self.key),
                        )
                        .with_data(json!({ "app": self.key, "worker": self.id })),
                    )
                } else {
                    CallError::Lost(Box::new(e))
                }
            })
        })
    }

    fn event(self: Arc<Self>, event: Event) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let hooks = self.hooks.get().copied().unwrap_or(ready::Hooks::NONE);
            let has = match event {
                Event::Idle => hooks.idle,
                Event::Terminate => hooks.terminate,
            };
            if !has || self.has_exited() {
                return;
            }
            let req = Request::post("/__marina/lifecycle")
                .header(&CONTROL_HEADER, self.token.as_str())
                .header("x-marina-event", event.as_str())
                .body(body::empty())
                .expect("static request parts are valid");
            let call = async {
                if let Ok(resp) = self.upstream.forward(req).await {
                    let _ = resp.into_body().collect().await;
                }
            };
            if tokio::time::timeout(LIFECYCLE_LIMIT, call).await.is_err() {
                let name = event.as_str();
                tracing::warn!(app = %self.key, worker = %self.id, "on{name} did not finish within {LIFECYCLE_LIMIT:?}");
            }
        })
    }

    fn stop(self: Arc<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if !self.has_exited() {
                spawn::signal_group(self.pid, Signal::SIGTERM);
                let mut exit = self.exit.clone();
                if tokio::time::timeout(grace, exit.wait_for(Option::is_some)).await.is_err() {
                    spawn::signal_group(self.pid, Signal::SIGKILL);
                }
            }
            // Children that ignored SIGTERM or outlived the leader still get SIGKILL.
            spawn::signal_group(self.pid, Signal::SIGKILL);
            self.upstream.close_idle();
        })
    }

    fn kill(&self) {
        spawn::signal_group(self.pid, Signal::SIGKILL);
        if let Some(cg) = &self.cgroup.cgroup {
            cg.kill_all();
        }
    }

    fn memory(&self) -> Option<u64> {
        match &self.cgroup.cgroup {
            Some(cg) => cg.current(),
            None => spawn::tree_rss(self.pid),
        }
    }

    fn peak_memory(&self) -> Option<u64> {
        let now = self.cgroup.cgroup.as_ref().and_then(|cg| cg.peak()).unwrap_or(0);
        match self.peak.fetch_max(now, Ordering::Relaxed).max(now) {
            0 => None,
            p => Some(p),
        }
    }

    fn memory_enforced(&self) -> bool {
        self.cgroup.cgroup.is_some()
    }

    fn memory_killed(&self) -> bool {
        self.memory_killed.load(Ordering::SeqCst)
    }

    fn log_lines_dropped(&self) -> u64 {
        self.output.dropped.load(Ordering::Relaxed)
    }

    fn pid(&self) -> Option<u32> {
        match self.app_pid.load(Ordering::Relaxed) {
            0 => Some(self.pid),
            p => Some(p),
        }
    }

    fn exit(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
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

/// The normalized config a worker sees as `WORKER_CONFIG` (durations in ms, sizes in bytes),
/// with the merged `env` (manifest + `.env`) and `publicRoutes` as Buntime passes them: a list
/// when only `ALL` routes are given, else a map of method to list.
fn worker_config_json(app: &App) -> String {
    let c = &app.config;
    let routes = &c.public_routes.by_method;
    let public_routes = match routes.get("ALL") {
        Some(all) if routes.len() == 1 => json!(all),
        _ => json!(routes),
    };
    json!({
        "env": c.env,
        "publicRoutes": public_routes,
        "visibility": match c.visibility {
            marina_apps::manifest::Visibility::Public => "public",
            marina_apps::manifest::Visibility::Protected => "protected",
            marina_apps::manifest::Visibility::Internal => "internal",
        },
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

/// The install prefix of a runtime (`/usr/bin/node` → `/usr`,
/// `…/node_modules/bun/bin/bun.exe` → `…/node_modules/bun`), which a confined worker may read.
fn runtime_prefix(program: &std::path::Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(program).ok()?;
    let bin = real.parent()?;
    Some(bin.parent().filter(|p| p.parent().is_some()).unwrap_or(bin).to_path_buf())
}

/// A loopback port that was free a moment ago (the process app binds it right after).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
