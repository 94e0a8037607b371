//! The one piece of `unsafe` in the pool: asking the kernel to kill a worker when marina dies.
#![allow(unsafe_code)]

use std::io;

/// Makes the child get `signal` when marina dies, even by SIGKILL (the worker's supervising
/// shell turns it into SIGKILL for the whole process group; see `spawn::SUPERVISOR`).
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process;
/// workers are spawned from tokio runtime threads, which live as long as the runtime, never
/// from `spawn_blocking` threads, which are reaped when idle. The `getppid` check closes the
/// race where marina died between `fork` and `prctl`.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command, signal: libc::c_int) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before `exec`. It only calls `prctl`,
    // `getppid` and `_exit`, which are async-signal-safe, and it allocates nothing (the error
    // path builds an `io::Error` from errno, which does not allocate).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
