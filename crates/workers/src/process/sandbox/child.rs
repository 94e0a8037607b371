//! The one piece of `unsafe` in the workers: what a worker's process does to itself between
//! `fork` and `exec`.
//!
//! Why here and not elsewhere: the confinement has to be in place before the app's first
//! instruction, and in a fixed order — join the cgroups while still privileged (cgroup files
//! are root's), then drop to the worker's uid and gid, then ask for the death signal (a
//! credential change clears it), then `no_new_privs` and Landlock (which cannot be undone).
//! std's `CommandExt::uid` runs *before* `pre_exec` closures, which is the wrong order for the
//! cgroup step, so the ids are set here too. The alternative, re-executing marina's binary as a
//! small launcher that confines itself and then execs the worker, costs an extra `exec` per
//! worker start and does not work from the test binaries, which are not marina.
//!
//! Everything that allocates (paths as `CString`s, the Landlock ruleset, which the `landlock`
//! crate builds and checks in marina) happens before `fork`; the closure only makes
//! async-signal-safe system calls on data it owns.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// What the child does before `exec`, prepared in marina.
#[derive(Debug, Default)]
pub(crate) struct ChildSetup {
    /// Cgroup files to write `0` (= "the calling thread", the only one) into.
    pub cgroup_procs: Vec<CString>,
    /// The uid and gid to run as (supplementary groups are dropped); `None` = marina's.
    pub ids: Option<(u32, u32)>,
    /// A Landlock ruleset to confine the process with.
    pub landlock: Option<OwnedFd>,
    /// The signal the kernel sends the child when marina dies.
    pub death_signal: libc::c_int,
    /// Files the worker creates are private to its uid by default.
    pub umask: libc::mode_t,
    /// When set (start timing is logged), the child writes [`ChildTimes`] here before `exec`.
    pub report: Option<OwnedFd>,
    /// The write end of the readiness pipe, which the worker inherits as fd [`READY_FD`] (the
    /// JS shim writes `ready …` there once it listens).
    pub ready: Option<OwnedFd>,
}

/// The fd number a worker inherits the readiness pipe as.
pub(crate) const READY_FD: libc::c_int = 3;

/// When the child's own steps ran, on the monotonic clock (ns), as it reports them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChildTimes {
    /// The child started running (just after `fork`).
    pub entered: u64,
    /// It had joined its cgroups.
    pub joined: u64,
    /// It had dropped its ids and confined itself (Landlock): `exec` comes next.
    pub confined: u64,
}

impl ChildTimes {
    const LEN: usize = 24;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.entered.to_le_bytes());
        out[8..16].copy_from_slice(&self.joined.to_le_bytes());
        out[16..].copy_from_slice(&self.confined.to_le_bytes());
        out
    }

    /// Reads the report from the (non-blocking) pipe once the child has `exec`ed; `None` when
    /// it wrote none (it failed before, or reporting was off).
    pub fn read(fd: &OwnedFd) -> Option<ChildTimes> {
        let mut buf = [0u8; Self::LEN];
        let n = nix::unistd::read(fd, &mut buf).ok()?;
        let word = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        (n == Self::LEN).then(|| ChildTimes { entered: word(0), joined: word(8), confined: word(16) })
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the child reports on (async-signal-safe).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` writes one `timespec` we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Signals a worker gets with their default disposition whatever marina inherited (std resets
/// SIGPIPE and the signal mask itself).
const RESET_SIGNALS: [libc::c_int; 9] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGCHLD,
    libc::SIGTSTP,
];

/// Installs the setup as `cmd`'s `pre_exec` step.
pub(crate) fn install(cmd: &mut tokio::process::Command, setup: ChildSetup) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // functions may be called. It calls `clock_gettime`, `open`, `write`, `close`, `setgroups`,
    // `setgid`, `setuid`, `umask`, `sigaction` (through `signal`), `prctl`, `getppid`, `syscall(landlock_restrict_self)`, `dup2`,
    // `fcntl` and `_exit`, all of which are system calls that neither allocate nor take locks;
    // the data it reads (`CString`s, the ruleset and pipe fds) was built before `fork` and is
    // owned by the closure. Errors
    // are built with `io::Error::last_os_error`, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            let mut times = ChildTimes { entered: monotonic_ns(), ..ChildTimes::default() };
            for path in &setup.cgroup_procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            times.joined = monotonic_ns();
            if let Some((uid, gid)) = setup.ids {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // setuid(2) can leave the saved uid alone in odd setups; root must not be regained.
                if libc::setuid(0) == 0 && uid != 0 {
                    libc::_exit(126);
                }
            }
            libc::umask(setup.umask);
            // An ignored signal stays ignored across `exec`, and a shell cannot trap a signal
            // that was ignored when it started: marina run under `nohup` (or as a background job
            // of a script: SIGINT, SIGQUIT) would hand its workers an ignored SIGHUP, and the
            // supervising shell's `trap 'kill -KILL 0' HUP` — what kills a process app's group
            // when marina dies — would silently do nothing. Workers start with default
            // dispositions (`sigaction`, which `signal` wraps, is async-signal-safe).
            for signal in RESET_SIGNALS {
                if libc::signal(signal, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, setup.death_signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // marina died between fork and prctl: nobody would send the signal.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            if let Some(ruleset) = &setup.landlock {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(report) = &setup.report {
                times.confined = monotonic_ns();
                // A pipe write under PIPE_BUF never splits; a failed report only loses timing.
                let bytes = times.encode();
                libc::write(report.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            }
            // Last: fd 3 may have been one of the fds used above (they are close-on-exec).
            if let Some(ready) = &setup.ready {
                let fd = ready.as_raw_fd();
                let inherited =
                    if fd == READY_FD { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, READY_FD) };
                if inherited < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
