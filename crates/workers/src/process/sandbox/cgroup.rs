//! Per-worker cgroups: the kernel enforces `maxMemory` and a process limit, measures the real
//! peak, and lets marina kill everything a worker started (even what left its process group).
//!
//! Machines differ: a unified (v2) hierarchy with the memory and pids controllers, or v1
//! hierarchies mounted per controller (this project's CI mounts v1 `memory` and `pids` next to
//! a v2 hierarchy that has neither). [`Cgroups::detect`] reads `/proc/self/mountinfo` and uses
//! v2 when it offers the memory controller, else v1 `memory` (+ `pids` when mounted). Each
//! worker gets `{hierarchy}/{parent}/{worker id}`; the child joins it itself before `exec`
//! (see `child.rs`), so not even its first `fork` escapes.
//!
//! How the child joins matters for start latency. Writing a pid to `cgroup.procs` takes the
//! kernel's global threadgroup lock for writing, which (unless the hierarchy is mounted with
//! `favordynmods`) waits for an RCU grace period: about 11 ms per worker start on an idle 2-core
//! machine, measured. Moving only the calling thread (`0` written to v1's `tasks`) skips that
//! lock, and the child is single-threaded between `fork` and `exec`, so it moves the whole
//! process. v2 allows moving a thread only inside a threaded subtree, so there the child
//! writes `cgroup.procs`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Which cgroup interface marina uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// The hierarchies marina puts workers in.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    pub version: Version,
    /// v2: the parent group; v1: the parent group in the memory hierarchy.
    memory: PathBuf,
    /// v1 only: the parent group in the pids hierarchy, when mounted.
    pids: Option<PathBuf>,
}

/// One worker's groups.
#[derive(Debug)]
pub(crate) struct WorkerCgroup {
    version: Version,
    memory: PathBuf,
    pids: Option<PathBuf>,
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing '{value}' to {}: {e}", path.display())))
}

impl Cgroups {
    /// Finds usable hierarchies and creates `parent` in them. `parent` is a path relative to
    /// each hierarchy's mount point (e.g. `marina`), or, for a delegated v2 subtree, an
    /// absolute path to an existing v2 group marina may write to. `None` with a reason when
    /// no memory controller can be used.
    pub fn detect(parent: &str) -> Result<Cgroups, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mounts = parse_mounts(&mountinfo);
        let parent = parent.trim().trim_end_matches('/');
        if parent.is_empty() {
            return Err("RUNTIME_CGROUP_PARENT is empty".into());
        }
        if parent.starts_with('/') {
            let dir = PathBuf::from(parent);
            return Self::v2_at(&dir).map_err(|e| format!("RUNTIME_CGROUP_PARENT {parent}: {e}"));
        }
        let mut errors = Vec::new();
        if let Some(v2) = mounts.iter().find(|m| m.v2) {
            match Self::v2_at(&v2.path.join(parent)) {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("v2 at {}: {e}", v2.path.display())),
            }
        }
        let v1 = |ctrl: &str| mounts.iter().find(|m| !m.v2 && m.controllers.iter().any(|c| c == ctrl));
        match v1("memory") {
            Some(mem) => {
                let memory = mem.path.join(parent);
                std::fs::create_dir_all(&memory).map_err(|e| format!("cannot create {}: {e}", memory.display()))?;
                let pids = v1("pids").map(|p| p.path.join(parent)).filter(|p| std::fs::create_dir_all(p).is_ok());
                Ok(Cgroups { version: Version::V1, memory, pids })
            }
            None => {
                errors.push("no v1 memory hierarchy is mounted".into());
                Err(errors.join("; "))
            }
        }
    }

    fn v2_at(dir: &Path) -> Result<Cgroups, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        if !available.split_whitespace().any(|c| c == "memory") {
            let _ = std::fs::remove_dir(dir);
            return Err("the memory controller is not available there".into());
        }
        let wanted: Vec<&str> =
            ["memory", "pids"].into_iter().filter(|c| available.split_whitespace().any(|a| a == *c)).collect();
        let control = wanted.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
        write(&dir.join("cgroup.subtree_control"), &control).map_err(|e| e.to_string())?;
        Ok(Cgroups { version: Version::V2, memory: dir.to_path_buf(), pids: None })
    }

    /// `"v1"` or `"v2"`, and whether process counts are limited.
    pub fn describe(&self) -> String {
        let v = if self.version == Version::V2 { "v2" } else { "v1" };
        format!("{v} at {}", self.memory.display())
    }

    /// Whether a per-worker process limit is enforced.
    pub fn limits_pids(&self) -> bool {
        self.version == Version::V2 || self.pids.is_some()
    }

    /// Creates the worker's groups with its limits.
    pub fn create(&self, id: &str, max_memory: Option<u64>, max_pids: u32) -> std::io::Result<WorkerCgroup> {
        let memory = self.memory.join(id);
        std::fs::create_dir_all(&memory)?;
        let pids = self.pids.as_ref().map(|p| p.join(id));
        if let Some(p) = &pids {
            std::fs::create_dir_all(p)?;
        }
        let cg = WorkerCgroup { version: self.version, memory, pids };
        let limits = || -> std::io::Result<()> {
            match cg.version {
                Version::V2 => {
                    if let Some(max) = max_memory {
                        write(&cg.memory.join("memory.max"), &max.to_string())?;
                        let _ = write(&cg.memory.join("memory.swap.max"), "0");
                    }
                    // On OOM the whole worker goes, not one random process of it.
                    let _ = write(&cg.memory.join("memory.oom.group"), "1");
                    if cg.memory.join("pids.max").exists() {
                        write(&cg.memory.join("pids.max"), &max_pids.to_string())?;
                    }
                }
                Version::V1 => {
                    if let Some(max) = max_memory {
                        write(&cg.memory.join("memory.limit_in_bytes"), &max.to_string())?;
                        // Without swap accounting this file is absent; with it, swap cannot
                        // be used to go past the limit.
                        let memsw = cg.memory.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            let _ = write(&memsw, &max.to_string());
                        }
                    }
                    if let Some(p) = &cg.pids {
                        write(&p.join("pids.max"), &max_pids.to_string())?;
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = limits() {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

impl WorkerCgroup {
    /// The files the child writes `0` (itself) into before `exec` to join the groups: v1's
    /// `tasks` (moves the calling thread without the global lock, see the module doc), v2's
    /// `cgroup.procs`.
    pub fn procs_files(&self) -> Vec<CString> {
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        std::iter::once(&self.memory)
            .chain(self.pids.as_ref())
            .filter_map(|d| CString::new(d.join(file).as_os_str().as_bytes()).ok())
            .collect()
    }

    /// The highest memory use of the worker's processes so far, bytes.
    pub fn peak(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        read_u64(&self.memory.join(file))
    }

    /// Current memory use, bytes.
    pub fn current(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        read_u64(&self.memory.join(file))
    }

    /// How many times the kernel killed a process of this worker for going over its memory.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V2 => ("memory.events", "oom_kill"),
            Version::V1 => ("memory.oom_control", "oom_kill"),
        };
        std::fs::read_to_string(self.memory.join(file))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Pids of every process in the worker's group, whatever its session or process group.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.memory.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the group (v2: `cgroup.kill`; v1: one by one).
    pub fn kill_all(&self) {
        if self.version == Version::V2 && write(&self.memory.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            if pid > 1 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Removes the groups (they must be empty: call after the worker's processes are gone).
    pub fn remove(&self) -> bool {
        let mut ok = std::fs::remove_dir(&self.memory).is_ok() || !self.memory.exists();
        if let Some(p) = &self.pids {
            ok &= std::fs::remove_dir(p).is_ok() || !p.exists();
        }
        ok
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[derive(Debug)]
struct Mount {
    path: PathBuf,
    v2: bool,
    controllers: Vec<String>,
}

/// The cgroup mounts in a `/proc/self/mountinfo` text.
fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let options = r.next().unwrap_or("");
            let path = PathBuf::from(mount_point.replace("\\040", " "));
            match fstype {
                "cgroup2" => Some(Mount { path, v2: true, controllers: Vec::new() }),
                "cgroup" => {
                    Some(Mount { path, v2: false, controllers: options.split(',').map(str::to_string).collect() })
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_with_v1_controllers_and_a_bare_v2() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 3);
        assert!(m[0].controllers.contains(&"memory".to_string()));
        assert!(m[2].v2);
        assert_eq!(m[2].path, PathBuf::from("/sys/fs/cgroup/unified"));
    }
}
