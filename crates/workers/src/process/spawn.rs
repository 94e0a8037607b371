//! Starting a worker process: a clean environment, its own process group, death with marina,
//! its confinement (see [`super::sandbox`]) and its output in marina's log.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use super::sandbox::output::{Output, Tail};
use super::sandbox::{ChildTimes, Jail};
use super::timing::{StartTimes, now_ns};

/// The last lines a worker wrote to stderr (bounded in lines and bytes).
pub(crate) type StderrTail = Tail;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// The worker's entire environment (see [`worker_env`]).
    pub env: BTreeMap<String, String>,
    /// Written to the worker's stdin, which is then closed: the JS shim reads its lifecycle
    /// token there, so the token is in neither its argv nor its environment.
    pub stdin: Option<String>,
    /// Run the program itself (the JS runtime running marina's shim), not under the
    /// supervising shell: it gets SIGKILL when marina dies and a readiness pipe as fd 3.
    pub direct: bool,
}

/// A started worker process.
pub(crate) struct Spawned {
    pub child: Child,
    /// The task reading its stderr (it ends when the process closes stderr).
    pub stderr: Option<tokio::task::JoinHandle<()>>,
    /// The read end of its readiness pipe (direct workers).
    pub ready: Option<std::os::fd::OwnedFd>,
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

/// Spawns the process in its own process group (so a kill reaches its children too), confined
/// by `jail`, with stdout and stderr forwarded line by line to `tracing` through `output`.
/// With `times`, the spawn and the child's own steps are timed into it.
pub(crate) fn spawn(
    spec: &SpawnSpec,
    jail: &mut Jail,
    output: &Output,
    tail: &StderrTail,
    times: Option<&mut StartTimes>,
) -> std::io::Result<Spawned> {
    // Resolve the program with the worker's own PATH first, for a clear "not found" error
    // (under the supervising shell a missing program would only be an exit status 127).
    let program = resolve_program(&spec.program, spec.env.get("PATH").map(String::as_str)).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("'{}' is not an executable file on the worker's PATH", spec.program.to_string_lossy()),
        )
    })?;
    let (mut cmd, ready) = if spec.direct {
        jail.set_death_signal(libc::SIGKILL);
        let ready = jail.readiness_pipe()?;
        (command(program.as_os_str(), &spec.args, &spec.cwd, &spec.env), Some(ready))
    } else {
        let mut args: Vec<OsString> = vec!["-c".into(), SUPERVISOR.into(), "marina-worker".into(), program.into()];
        args.extend(spec.args.iter().cloned());
        (command("/bin/sh".as_ref(), &args, &spec.cwd, &spec.env), None)
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if spec.stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let report = times.is_some().then(|| jail.report_child_times()).flatten();
    jail.apply(&mut cmd);
    let before = std::time::Instant::now();
    let before_ns = now_ns();
    let spawned = cmd.spawn();
    if let Some(times) = times {
        times.spawn = before.elapsed();
        times.child = report.as_ref().and_then(ChildTimes::read).map(|c| (before_ns, c, now_ns()));
    }
    let mut child = spawned?;
    if let (Some(mut stdin), Some(text)) = (child.stdin.take(), spec.stdin.clone()) {
        // A pipe holds 64 KiB, so this never waits on the worker; dropping it closes stdin.
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    if let Some(out) = child.stdout.take() {
        tokio::spawn(output.clone().pump(out, "stdout", None));
    }
    let stderr = child.stderr.take().map(|err| tokio::spawn(output.clone().pump(err, "stderr", Some(tail.clone()))));
    // Our copy of the readiness pipe's write end goes with `cmd`, so the read end sees EOF
    // once the worker (and whatever inherited it) is gone.
    drop(cmd);
    Ok(Spawned { child, stderr, ready })
}

/// The one place a command for app code is built (the worker itself and `autoInstall`'s
/// `bun install`): `program args` in `cwd` with exactly `env` (nothing of marina's own
/// environment), stdin from `/dev/null`, in a process group of its own, killed if marina drops
/// it. Confinement of app code (user, filesystem, resources) belongs here.
pub(crate) fn command(program: &OsStr, args: &[OsString], cwd: &Path, env: &BTreeMap<String, String>) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(cwd).env_clear().envs(env).stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    cmd
}

/// The supervising shell `process` workers run under (`sh -c SUPERVISOR marina-worker program
/// args`). JS workers do without it: the runtime itself is the group leader and gets SIGKILL
/// when marina dies; what a JS app starts of its own is killed with its process group (and
/// its cgroup) when the worker exits, but not when marina dies first (docs/security.md).
///
/// It is the process group leader and the one process with `PR_SET_PDEATHSIG` (SIGHUP): when
/// marina dies, even by SIGKILL, the kernel sends it SIGHUP and it SIGKILLs the whole group, so
/// whatever the app started (`npm start` → node, a server's own workers) dies too. A signal
/// that reaches only the leader cannot take the app with it otherwise, because the death signal
/// is not inherited across `fork`. SIGTERM/SIGINT get a no-op handler (not `''`, which children
/// would inherit as "ignored"), so a graceful stop reaches the app through the group and the
/// shell waits for it to finish; the shell exits with the app's status.
///
/// The app gets the shell's stdin explicitly (fd 3): a background command's stdin would
/// otherwise be `/dev/null`, and the JS shim reads its lifecycle token from stdin.
const SUPERVISOR: &str = r#"trap 'kill -KILL 0' HUP
trap ':' TERM INT
exec 3<&0
"$@" <&3 3<&- &
exec 3<&-
child=$!
while :; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || exit "$status"
done"#;

pub(crate) fn resolve_program(program: &std::ffi::OsStr, path: Option<&str>) -> Option<PathBuf> {
    let p = PathBuf::from(program);
    if program.to_string_lossy().contains('/') {
        return p.is_file().then_some(p);
    }
    std::env::split_paths(path?).map(|d| d.join(&p)).find(|c| c.is_file())
}

/// The app's own process: the supervising shell's child (the shell itself until it has forked).
pub(crate) fn app_pid(supervisor: u32) -> Option<u32> {
    children(supervisor).into_iter().next()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Resident memory of a process and all its descendants, bytes.
pub(crate) fn tree_rss(pid: u32) -> Option<u64> {
    let mut total = crate::pool::rss_bytes(pid)?;
    let mut stack = children(pid);
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        total += crate::pool::rss_bytes(p).unwrap_or(0);
        stack.extend(children(p));
    }
    Some(total)
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
