//! The Landlock ruleset of one worker: what it may read and what it may write.
//!
//! Built in marina with the `landlock` crate (best effort: a kernel with an older ABI enforces
//! what it knows) and handed to the child as a file descriptor, which the child applies to
//! itself before `exec` (see `child.rs`). Everything not listed is denied, including marina's
//! state dir, other apps' dirs and other workers' sockets and data; ABI 6's scopes also stop a
//! worker from signalling processes outside its sandbox or reaching abstract Unix sockets.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{ABI, Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope};

/// The ABI whose rights marina asks for; newer kernels enforce it, older ones a subset.
const ABI_WANTED: ABI = ABI::V6;

/// System paths every runtime may read (and execute): libraries, interpreters, CA certificates,
/// name resolution, time zones, and the kernel's views of the process and the machine.
/// `/etc` is not listed whole: it can hold other services' credentials.
pub(crate) const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/services",
    "/etc/protocols",
    "/etc/python3",
    "/proc",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
    "/dev/random",
];

/// Device files every worker may also write (discarding output, `/dev/null` as stdin).
pub(crate) const DEVICE_RW: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// Whether this kernel enforces Landlock (probes by creating an empty ruleset).
pub(crate) fn supported() -> bool {
    let Ok(ruleset) = Ruleset::default().handle_access(AccessFs::from_all(ABI_WANTED)).and_then(|r| r.create()) else {
        return false;
    };
    let fd: Option<OwnedFd> = ruleset.into();
    fd.is_some()
}

/// A ruleset allowing reads (and execution) under `reads` and everything under `writes`.
/// Paths that do not exist are skipped. `Ok(None)` when the kernel has no Landlock.
pub(crate) fn ruleset(reads: &[PathBuf], writes: &[PathBuf]) -> Result<Option<OwnedFd>, String> {
    let all = AccessFs::from_all(ABI_WANTED);
    let read = AccessFs::from_read(ABI_WANTED);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .map_err(|e| format!("creating the Landlock ruleset: {e}"))?;
    let rules = reads
        .iter()
        .map(|p| (p.as_path(), read))
        .chain(DEVICE_RW.iter().map(|p| (Path::new(p), read | AccessFs::WriteFile)))
        .chain(writes.iter().map(|p| (p.as_path(), all)));
    for (path, access) in rules {
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let access: BitFlags<AccessFs> = if meta.is_dir() { access } else { access & AccessFs::from_file(ABI_WANTED) };
        let Ok(fd) = PathFd::new(path) else { continue };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| format!("adding the Landlock rule for {}: {e}", path.display()))?;
    }
    Ok(ruleset.into())
}
