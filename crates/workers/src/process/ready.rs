//! Readiness signalled, not polled: the JS shim writes one line to an inherited pipe (fd 3)
//! once it listens, saying which lifecycle hooks the app has; marina waits on that pipe.
//!
//! The line is `ready` followed by the hooks the module exports (`ready idle terminate`). EOF
//! before it means the worker exited (or closed fd 3 itself, which the caller treats by
//! probing the socket instead). `process` workers, which know nothing of the pipe, are probed.

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;

/// The longest readiness line read; the shim's is under 30 bytes.
const MAX_LINE: usize = 256;

/// Which of the lifecycle hooks the app has, so that marina only calls those it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hooks {
    pub idle: bool,
    pub terminate: bool,
}

impl Hooks {
    /// No hooks (`process` workers).
    pub const NONE: Hooks = Hooks { idle: false, terminate: false };
    /// Not known: call both (a JS worker whose readiness was probed, not signalled).
    pub const UNKNOWN: Hooks = Hooks { idle: true, terminate: true };

    fn parse(line: &str) -> Option<Hooks> {
        let mut words = line.split_whitespace();
        if words.next()? != "ready" {
            return None;
        }
        let mut hooks = Hooks::NONE;
        for w in words {
            match w {
                "idle" => hooks.idle = true,
                "terminate" => hooks.terminate = true,
                _ => {}
            }
        }
        Some(hooks)
    }
}

/// Waits for the readiness line. `None` at EOF, on a read error or a line that is not
/// `ready …` (an app that wrote to fd 3 itself).
pub(crate) async fn signalled(pipe: OwnedFd) -> Option<Hooks> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe).ok()?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        let n = rx.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            return Hooks::parse(std::str::from_utf8(&buf[..end]).ok()?);
        }
        if buf.len() > MAX_LINE {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readiness_line_names_the_hooks() {
        assert_eq!(Hooks::parse("ready"), Some(Hooks::NONE));
        assert_eq!(Hooks::parse("ready terminate"), Some(Hooks { idle: false, terminate: true }));
        assert_eq!(Hooks::parse("ready idle terminate later"), Some(Hooks::UNKNOWN));
        assert_eq!(Hooks::parse("hello"), None);
        assert_eq!(Hooks::parse(""), None);
    }

    #[tokio::test]
    async fn eof_before_the_line_is_not_ready() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::unistd::write(&w, b"rea").unwrap();
        drop(w);
        assert_eq!(signalled(r).await, None);
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::unistd::write(&w, b"ready idle\n").unwrap();
        assert_eq!(signalled(r).await, Some(Hooks { idle: true, terminate: false }));
    }
}
