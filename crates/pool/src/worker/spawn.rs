//! Starting a worker process: a clean environment, its own process group, death with marina,
//! and its output in marina's log.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::pdeathsig::die_with_parent;

/// How many of a worker's last stderr lines are kept for start-failure messages.
const STDERR_TAIL: usize = 20;

/// The last lines a worker wrote to stderr.
pub(crate) type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// The worker's entire environment (see [`worker_env`]).
    pub env: BTreeMap<String, String>,
}

/// Builds the environment a worker sees: its app's `env` (manifest merged with `.env`), then
/// marina's own variables, which the app cannot override. `PATH` and `HOME` come from marina
/// unless the app sets them, because interpreters (python3, node, bun) need them to find
/// themselves and their caches; nothing else of marina's environment reaches a worker.
pub(crate) fn worker_env(app_env: &BTreeMap<String, String>, marina: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(var) {
            env.insert(var.to_string(), v);
        }
    }
    env.extend(app_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in marina {
        env.insert((*k).to_string(), v.clone());
    }
    env
}

/// Spawns the process in its own process group (so a kill reaches its children too) with
/// stdout and stderr forwarded line by line to `tracing`, tagged with the app key.
/// Returns the child and the task reading its stderr (it ends when the process closes stderr).
pub(crate) fn spawn(
    spec: &SpawnSpec,
    app_key: &str,
    worker_id: &str,
    tail: &StderrTail,
) -> std::io::Result<(Child, Option<tokio::task::JoinHandle<()>>)> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, app_key.to_string(), worker_id.to_string(), "stdout", None));
    }
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pump(err, app_key.to_string(), worker_id.to_string(), "stderr", Some(tail.clone()))));
    Ok((child, stderr))
}

async fn pump(
    stream: impl AsyncRead + Unpin,
    app: String,
    worker: String,
    name: &'static str,
    tail: Option<StderrTail>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "marina::worker", app = %app, worker = %worker, stream = name, "{line}");
        if let Some(tail) = &tail {
            let mut t = tail.lock();
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// Sends `signal` to the worker's whole process group; a group that is already gone is fine.
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    if pid > 1 {
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

/// Resolves a program name through `PATH` the way `execvp` would, for clear "not found" errors.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marina_variables_win_over_app_env_and_nothing_else_leaks() {
        let mut app = BTreeMap::new();
        app.insert("APP_DIR".to_string(), "/evil".to_string());
        app.insert("GREETING".to_string(), "hi".to_string());
        let env = worker_env(&app, &[("APP_DIR", "/srv/app".to_string())]);
        assert_eq!(env["APP_DIR"], "/srv/app");
        assert_eq!(env["GREETING"], "hi");
        for k in env.keys() {
            assert!(["PATH", "HOME", "APP_DIR", "GREETING"].contains(&k.as_str()), "unexpected {k}");
        }
    }
}
