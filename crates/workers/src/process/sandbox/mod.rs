//! Worker isolation: who a worker runs as, what it may touch, and how much it may use.
//!
//! marina holds secrets and apps are untrusted, so when marina runs as root a worker never does:
//! it runs as `RUNTIME_WORKER_USER` (default `marina-worker`, else `nobody`) or, with
//! `RUNTIME_WORKER_UIDS`, as a uid of its own app from that range. It is confined with Landlock
//! to its app dir, its runtime and system files (read) and its private data, tmp and socket
//! dirs (write); it is placed in per-worker cgroups that enforce `maxMemory` and a process
//! limit. Each layer degrades on its own when the machine lacks it (not root, no Landlock, no
//! cgroups), says so once in the log and in `/api/workers`, and docs/security.md lists what is
//! then not isolated.
//!
//! Layout under the state dir (`S`), with the worker's uid `U`:
//! - `S` 0711 when workers run as another uid (they may pass through, not list), else 0700;
//!   marina's own files in it are 0600/0700 (marina runs with umask 077);
//! - `S/shim/host.mjs` 0644, the JS host shim;
//! - `S/workers/{app}/data` and `S/workers/{app}/tmp`, 0700 owned by `U`: the app's private
//!   writable dirs (`APP_DATA_DIR`, `TMPDIR`; `HOME` is the data dir when the uid is dropped);
//! - `S/sock/{worker}/w.sock`, in a 0700 dir owned by `U`: a JS worker's socket.

pub mod callers;
mod cgroup;
mod child;
mod fs_rules;
pub(crate) mod output;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use marina_core::Error;
use serde::Serialize;

pub(crate) use self::cgroup::WorkerCgroup;
use self::child::ChildSetup;
pub(crate) use self::child::{ChildTimes, READY_FD, monotonic_ns};

/// The default worker user when marina runs as root.
pub const DEFAULT_WORKER_USER: &str = "marina-worker";
/// The default per-worker process (and thread) limit.
pub const DEFAULT_MAX_PROCS: u32 = 512;

/// Isolation settings (all from the environment; see docs/security.md).
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// `RUNTIME_WORKER_USER`: the user workers run as when marina is root.
    pub worker_user: Option<String>,
    /// `RUNTIME_WORKER_UIDS`: `FIRST-LAST`, one uid (and gid) per app from this range.
    pub worker_uids: Option<String>,
    /// `RUNTIME_CGROUP_PARENT`: the parent cgroup (relative to each hierarchy, or an absolute
    /// v2 path); default `marina`; `off` disables cgroups.
    pub cgroup_parent: Option<String>,
    /// `RUNTIME_WORKER_MAX_PROCS`: processes and threads one worker may have (default 512).
    pub max_procs: Option<u32>,
}

/// What `/api/workers` says about isolation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// The user workers run as, or `None` when they run as marina's own user.
    pub worker_user: Option<String>,
    /// Whether each app gets its own uid.
    pub per_app_uid: bool,
    /// Whether workers are confined with Landlock.
    pub landlock: bool,
    /// `"v1"`, `"v2"` or `None` (no cgroups: maxMemory is sampled, no process limit).
    pub cgroup: Option<&'static str>,
    /// How `maxMemory` is enforced: `"kernel"` (cgroup) or `"sampled"` (RSS every 250 ms).
    pub memory_limit: &'static str,
    /// The per-worker process limit, when enforced.
    pub max_procs: Option<u32>,
    /// What is not isolated on this machine, one sentence each.
    pub gaps: Vec<String>,
}

#[derive(Debug, Clone)]
enum Ids {
    /// marina is not root: workers run as marina's user.
    Inherit,
    Shared {
        name: String,
        uid: u32,
        gid: u32,
    },
    PerApp {
        first: u32,
        count: u32,
    },
}

/// The machine's isolation capabilities and marina's choices, decided once at start.
#[derive(Debug)]
pub(crate) struct Sandbox {
    ids: Ids,
    landlock: bool,
    cgroups: Option<cgroup::Cgroups>,
    max_procs: u32,
    state_dir: PathBuf,
    gaps: Vec<String>,
    callers: callers::CallerProbe,
}

fn internal(msg: String) -> Error {
    Error::internal(msg)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| internal(format!("cannot set mode {mode:o} on {}: {e}", path.display())))
}

fn make_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|e| internal(format!("cannot create {}: {e}", path.display())))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(path, Some(uid.into()), Some(gid.into()))
            .map_err(|e| internal(format!("cannot give {} to uid {uid}: {e}", path.display())))?;
    }
    set_mode(path, mode)
}

/// A stable small number for an app name (FNV-1a), to pick its uid from the range.
fn stable_hash(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// A file-name-safe form of an app name, one to one: `[A-Za-z0-9._-]` stay as they are, every
/// other byte (and a leading `.`) becomes `%XX`. Distinct apps never share a dir: `x y` and `x_y`
/// (or `café` and `caf_`) used to map to one, and so shared their private data and tmp dirs.
fn dir_name(app: &str) -> String {
    let mut out = String::with_capacity(app.len());
    for (i, b) in app.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b"_-".contains(&b) || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".to_string() } else { out }
}

impl Sandbox {
    /// Decides how workers are isolated on this machine and prepares the state dir.
    pub fn init(opts: &SandboxOptions, state_dir: &Path) -> Result<Sandbox, Error> {
        // No worker (same uid or not) may read marina's memory, environ or fds via /proc or ptrace.
        if let Err(e) = nix::sys::prctl::set_dumpable(false) {
            tracing::warn!("could not make marina non-dumpable: {e}");
        }
        let mut gaps = Vec::new();
        let root = nix::unistd::geteuid().is_root();
        let ids = if !root {
            if opts.worker_user.is_some() || opts.worker_uids.is_some() {
                tracing::warn!(
                    "RUNTIME_WORKER_USER / RUNTIME_WORKER_UIDS need marina to run as root; workers run as marina's user"
                );
            }
            gaps.push(
                "marina is not root: workers run as marina's own user, so only Landlock keeps them from marina's files"
                    .into(),
            );
            Ids::Inherit
        } else if let Some(range) = opts.worker_uids.as_deref().filter(|r| !r.trim().is_empty()) {
            let (first, count) = parse_range(range)?;
            Ids::PerApp { first, count }
        } else {
            let explicit = opts.worker_user.as_deref().map(str::trim).filter(|u| !u.is_empty());
            let name = explicit.unwrap_or(DEFAULT_WORKER_USER);
            let user = match nix::unistd::User::from_name(name) {
                Ok(Some(u)) => u,
                _ if explicit.is_none() => nix::unistd::User::from_name("nobody").ok().flatten().ok_or_else(|| {
                    internal(format!(
                        "marina runs as root but neither the worker user '{DEFAULT_WORKER_USER}' nor 'nobody' exists; create one (useradd --system --no-create-home --shell /usr/sbin/nologin {DEFAULT_WORKER_USER}) or set RUNTIME_WORKER_USER"
                    ))
                })?,
                _ => {
                    return Err(internal(format!(
                        "RUNTIME_WORKER_USER is '{name}', which is not a user on this machine; create it (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or set RUNTIME_WORKER_USER to an existing unprivileged user"
                    )));
                }
            };
            if user.uid.is_root() {
                return Err(internal(format!(
                    "RUNTIME_WORKER_USER is '{}', which is root (uid 0); workers must not run as root",
                    user.name
                )));
            }
            gaps.push(format!(
                "all apps share the worker user '{}': a worker can connect to another worker's socket (set RUNTIME_WORKER_UIDS for one uid per app)",
                user.name
            ));
            Ids::Shared { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw() }
        };
        let landlock = fs_rules::supported();
        if !landlock {
            tracing::warn!("Landlock is not available on this kernel: workers are NOT confined to their own files");
            gaps.push("no Landlock: a worker can read whatever its uid may read, including other apps' files".into());
        }
        let parent = opts.cgroup_parent.as_deref().unwrap_or("marina");
        let cgroups = if parent.trim().eq_ignore_ascii_case("off") {
            None
        } else {
            match cgroup::Cgroups::detect(parent) {
                Ok(c) => {
                    tracing::info!("workers get their own cgroups ({})", c.describe());
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(
                        "no usable cgroups ({e}): maxMemory is enforced by sampling RSS every 250 ms and there is no per-worker process limit"
                    );
                    None
                }
            }
        };
        match &cgroups {
            None => gaps.push("no cgroups: maxMemory is sampled every 250 ms, there is no per-worker process limit, and a process that leaves its group (setsid) outlives its worker".into()),
            Some(c) if !c.limits_pids() => gaps.push("no pids cgroup: there is no per-worker process limit".into()),
            Some(_) => {}
        }
        let worker_uids = match &ids {
            Ids::Inherit => callers::WorkerUids::Own,
            Ids::Shared { uid, .. } => callers::WorkerUids::One(*uid),
            Ids::PerApp { first, count } => callers::WorkerUids::Range { first: *first, count: *count },
        };
        let callers = callers::CallerProbe::new(worker_uids, cgroups.as_ref().map(|_| parent));
        let sandbox = Sandbox {
            callers,
            ids,
            landlock,
            cgroups,
            max_procs: opts.max_procs.unwrap_or(DEFAULT_MAX_PROCS).max(1),
            state_dir: state_dir.to_path_buf(),
            gaps,
        };
        sandbox.prepare_state_dir()?;
        Ok(sandbox)
    }

    /// Tells a worker's connection to marina from anyone else's ([`callers`]).
    pub fn callers(&self) -> callers::CallerProbe {
        self.callers.clone()
    }

    fn drops_uid(&self) -> bool {
        !matches!(self.ids, Ids::Inherit)
    }

    fn prepare_state_dir(&self) -> Result<(), Error> {
        let s = &self.state_dir;
        make_dir(s, if self.drops_uid() { 0o711 } else { 0o700 }, None)?;
        make_dir(&s.join("workers"), 0o711, None)?;
        // App databases: one dir per app, owned by the app's worker (see `jail`).
        make_dir(&s.join("apps"), if self.drops_uid() { 0o711 } else { 0o700 }, None)?;
        make_dir(&s.join("sock"), 0o711, None)?;
        make_dir(&s.join("shim"), 0o755, None)?;
        Ok(())
    }

    pub fn status(&self) -> SandboxStatus {
        let (worker_user, per_app_uid) = match &self.ids {
            Ids::Inherit => (None, false),
            Ids::Shared { name, .. } => (Some(name.clone()), false),
            Ids::PerApp { first, count } => (Some(format!("uids {first}-{}", first + count - 1)), true),
        };
        let cgroup = self.cgroups.as_ref().map(|c| if c.version == cgroup::Version::V2 { "v2" } else { "v1" });
        SandboxStatus {
            worker_user,
            per_app_uid,
            landlock: self.landlock,
            cgroup,
            memory_limit: if cgroup.is_some() { "kernel" } else { "sampled" },
            max_procs: self.cgroups.as_ref().filter(|c| c.limits_pids()).map(|_| self.max_procs),
            gaps: self.gaps.clone(),
        }
    }

    fn ids_for(&self, app: &str) -> Option<(u32, u32)> {
        match &self.ids {
            Ids::Inherit => None,
            Ids::Shared { uid, gid, .. } => Some((*uid, *gid)),
            Ids::PerApp { first, count } => {
                let id = first + stable_hash(app) % count;
                Some((id, id))
            }
        }
    }

    /// The worker's `PATH`: marina's entries that the worker's user can enter (marina's own
    /// may include e.g. `/root/.pyenv/shims`), so that `python3` resolves to one it can run.
    pub fn worker_path(&self, app_name: &str, path: &str) -> String {
        let Some((uid, gid)) = self.ids_for(app_name) else { return path.to_string() };
        std::env::split_paths(path)
            .filter(|dir| dir.is_dir() && readable_by(dir, uid, gid).is_ok())
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Prepares one worker's jail: its dirs, cgroups and Landlock ruleset.
    ///
    /// `reads` are the paths it may read besides the system's (its app dir, its runtime, the
    /// shim, the manifest's extra reads).
    pub fn jail(&self, req: JailRequest<'_>) -> Result<Jail, String> {
        let ids = self.ids_for(req.app_name);
        if let Some((uid, gid)) = ids {
            readable_by(req.app_dir, uid, gid)?;
        }
        let app_root = self.state_dir.join("workers").join(dir_name(req.app_name));
        let data = app_root.join("data");
        let tmp = app_root.join("tmp");
        let sock_dir = self.state_dir.join("sock").join(req.worker_id);
        for (dir, mode) in [(&app_root, 0o700), (&data, 0o700), (&tmp, 0o700), (&sock_dir, 0o700)] {
            make_dir(dir, mode, ids).map_err(|e| e.message().to_string())?;
        }
        if let Some(db_dir) = &req.db_dir {
            make_dir(db_dir, 0o700, ids).map_err(|e| e.message().to_string())?;
            // `marina db migrate` (as marina) may have created the files; the app writes them.
            if let (Some((uid, gid)), Ok(entries)) = (ids, std::fs::read_dir(db_dir)) {
                for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())) {
                    let _ = nix::unistd::chown(&e.path(), Some(uid.into()), Some(gid.into()));
                }
            }
        }
        let cgroup_started = std::time::Instant::now();
        let cgroup = match &self.cgroups {
            Some(c) => match c.create(req.worker_id, req.max_memory, self.max_procs) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(
                        worker = req.worker_id,
                        "no cgroup for this worker ({e}); its memory is sampled instead"
                    );
                    None
                }
            },
            None => None,
        };
        let cgroup_time = cgroup_started.elapsed();
        let landlock_started = std::time::Instant::now();
        let landlock = if self.landlock {
            let mut reads: Vec<PathBuf> = fs_rules::SYSTEM_READ.iter().map(PathBuf::from).collect();
            reads.push(req.app_dir.to_path_buf());
            reads.extend(req.reads.iter().cloned());
            let mut writes = vec![data.clone(), tmp.clone(), sock_dir.clone()];
            writes.extend(req.db_dir.clone());
            fs_rules::ruleset(&reads, &writes)?
        } else {
            None
        };
        let landlock_time = landlock_started.elapsed();
        let mut env = BTreeMap::new();
        env.insert("TMPDIR".to_string(), tmp.display().to_string());
        env.insert("APP_DATA_DIR".to_string(), data.display().to_string());
        if ids.is_some() {
            // marina's HOME is not the worker's to read or write.
            env.insert("HOME".to_string(), data.display().to_string());
        }
        let setup = ChildSetup {
            cgroup_procs: cgroup.as_ref().map(WorkerCgroup::procs_files).unwrap_or_default(),
            ids,
            landlock,
            death_signal: libc::SIGHUP,
            umask: 0o077,
            report: None,
            ready: None,
        };
        Ok(Jail { setup: Some(setup), cgroup, sock_dir, env, cgroup_time, landlock_time })
    }
}

/// The dirs no manifest's `sandbox.read` may overlap: marina's state dir (its database, every
/// worker's data and sockets), the worker dirs (other apps and their `.env`) and the plugin
/// dirs; real paths, so a symlink cannot hide them.
pub(crate) fn off_limits(state_dir: &Path, others: impl Iterator<Item = PathBuf>) -> Vec<PathBuf> {
    std::iter::once(state_dir.to_path_buf())
        .chain(others)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.canonicalize().unwrap_or(d))
        .collect()
}

/// Whether a manifest's `sandbox.read` entry may be granted: not inside, and not above, any of
/// the `off_limits` dirs. The path is resolved first (Landlock grants what it resolves to). A
/// path that does not exist is allowed (its rule is skipped).
pub(crate) fn check_extra_read(path: &Path, off_limits: &[PathBuf]) -> Result<(), String> {
    let Ok(real) = path.canonicalize() else { return Ok(()) };
    match off_limits.iter().find(|d| real.starts_with(d) || d.starts_with(&real)) {
        Some(d) => Err(format!(
            "the manifest's `sandbox.read` entry {} is refused: it {} {}, which no app may read (marina's state dir, the worker dirs and the plugin dirs are off limits)",
            path.display(),
            if real.starts_with(d) { "is inside" } else { "contains" },
            d.display()
        )),
        None => Ok(()),
    }
}

/// What [`Sandbox::jail`] needs to know about a worker.
pub(crate) struct JailRequest<'a> {
    pub app_name: &'a str,
    /// The dir of the app's own SQLite database (`APP_DATABASE_PATH`), which it may write.
    pub db_dir: Option<PathBuf>,
    pub app_dir: &'a Path,
    pub worker_id: &'a str,
    pub reads: Vec<PathBuf>,
    pub max_memory: Option<u64>,
}

/// One worker's confinement.
#[derive(Debug)]
pub(crate) struct Jail {
    setup: Option<ChildSetup>,
    /// The worker's cgroups, when the machine has them.
    pub cgroup: Option<WorkerCgroup>,
    /// The worker's private socket dir.
    pub sock_dir: PathBuf,
    /// Variables the worker gets (`TMPDIR`, `APP_DATA_DIR`, maybe `HOME`).
    pub env: BTreeMap<String, String>,
    /// How long creating its cgroups took (for the start timing).
    pub cgroup_time: std::time::Duration,
    /// How long building its Landlock ruleset took.
    pub landlock_time: std::time::Duration,
}

impl Jail {
    /// Makes `cmd` confine its process before `exec` (once; later calls do nothing).
    pub fn apply(&mut self, cmd: &mut tokio::process::Command) {
        if let Some(setup) = self.setup.take() {
            child::install(cmd, setup);
        }
    }

    /// Asks the child to report when its pre-`exec` steps ran ([`ChildTimes`]); returns the
    /// pipe to read the report from once it has `exec`ed. Call before [`Jail::apply`].
    pub fn report_child_times(&mut self) -> Option<std::os::fd::OwnedFd> {
        let setup = self.setup.as_mut()?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).ok()?;
        setup.report = Some(write);
        Some(read)
    }

    /// Gives the worker the write end of a readiness pipe as fd 3 (see `child.rs`); returns the
    /// read end, which reads EOF once every copy of the write end is closed (the worker exited,
    /// or closed it). Call before [`Jail::apply`].
    pub fn readiness_pipe(&mut self) -> std::io::Result<std::os::fd::OwnedFd> {
        let Some(setup) = &mut self.setup else {
            return Err(std::io::Error::other("the readiness pipe must be set up before the jail is applied"));
        };
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        setup.ready = Some(write);
        Ok(read)
    }

    /// The signal the kernel sends the worker when marina dies (SIGHUP for the supervising
    /// shell, which then kills its process group; SIGKILL for a runtime run directly).
    pub fn set_death_signal(&mut self, signal: libc::c_int) {
        if let Some(setup) = &mut self.setup {
            setup.death_signal = signal;
        }
    }

    /// After the worker exited: kills whatever is left in its cgroup and removes its dirs.
    pub fn clean_up(&self) {
        let _ = std::fs::remove_dir_all(&self.sock_dir);
        if let Some(cg) = &self.cgroup {
            for _ in 0..50 {
                cg.kill_all();
                if cg.remove() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            tracing::warn!("a worker cgroup could not be removed: processes are still in it");
        }
    }
}

/// Checks that `uid`/`gid` may enter and read `dir` (and pass through its parents), so a worker
/// that could not read its app fails with a clear message instead of an import error.
fn readable_by(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let allowed = |meta: &std::fs::Metadata, bits: u32| {
        let mode = meta.mode();
        if meta.uid() == uid {
            mode >> 6 & bits == bits
        } else if meta.gid() == gid {
            mode >> 3 & bits == bits
        } else {
            mode & bits == bits
        }
    };
    let mut path = PathBuf::new();
    let components: Vec<_> = dir.components().collect();
    for (i, c) in components.iter().enumerate() {
        path.push(c);
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let bits = if i + 1 == components.len() { 0o5 } else { 0o1 };
        if !allowed(&meta, bits) {
            return Err(format!(
                "the worker user (uid {uid}) cannot {} {} (mode {:o}, owner uid {}): make the app dir readable and its parents enterable for other users (e.g. chmod o+rx)",
                if bits == 0o5 { "read" } else { "enter" },
                path.display(),
                meta.mode() & 0o7777,
                meta.uid()
            ));
        }
    }
    Ok(())
}

fn parse_range(range: &str) -> Result<(u32, u32), Error> {
    let bad = || {
        internal(format!(
            "RUNTIME_WORKER_UIDS is '{range}', expected FIRST-LAST with 1000 <= FIRST <= LAST, e.g. 200000-265535"
        ))
    };
    let (a, b) = range.trim().split_once('-').ok_or_else(bad)?;
    let first: u32 = a.trim().parse().map_err(|_| bad())?;
    let last: u32 = b.trim().parse().map_err(|_| bad())?;
    if first < 1000 || last < first {
        return Err(bad());
    }
    Ok((first, last - first + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_reads_may_not_overlap_marina_or_other_apps() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let apps = root.path().join("apps");
        let fonts = root.path().join("fonts");
        for d in [&state, &apps, &fonts, &apps.join("other")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::symlink(&state, root.path().join("innocent")).unwrap();
        let off = off_limits(&state, [apps.clone()].into_iter());
        assert!(check_extra_read(&fonts, &off).is_ok());
        assert!(check_extra_read(&root.path().join("missing"), &off).is_ok());
        for bad in [state.join("."), apps.join("other"), root.path().to_path_buf(), root.path().join("innocent")] {
            let e = check_extra_read(&bad, &off).unwrap_err();
            assert!(e.contains("sandbox.read") && e.contains("off limits"), "{e}");
        }
    }

    #[test]
    fn uid_ranges_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_range("200000-200009").unwrap(), (200000, 10));
        for bad in ["", "5", "0-10", "300-200", "a-b", "2000-1000"] {
            let e = parse_range(bad).unwrap_err();
            assert!(e.message().contains("FIRST-LAST"), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn app_names_become_safe_dir_names_and_uids_are_stable() {
        assert_eq!(dir_name("my-app.v2"), "my-app.v2");
        assert_eq!(dir_name("../x y"), "%2E.%2Fx%20y");
        assert_eq!(dir_name(".."), "%2E.");
        assert_eq!(dir_name("café"), "caf%C3%A9");
        assert_ne!(dir_name("x y"), dir_name("x_y"));
        assert_ne!(dir_name("x%20y"), dir_name("x y"));
        assert_eq!(stable_hash("blog"), stable_hash("blog"));
        assert_ne!(stable_hash("blog"), stable_hash("shop"));
    }
}
