//! Reading a small file that belongs to an app (its manifest, its `.env`) without letting the
//! app reach outside its own directory.
//!
//! marina reads these files itself, often as root, and shows problems in them to clients and in
//! `/api/apps`. An app author controls the app dir, so a manifest may be a symlink to
//! `/root/secrets.env`, a FIFO that never answers, `/dev/zero`, or a 2 GB file. Each of these
//! would leak a secret into an error body, stall the thread reading it, or grow marina's memory.
//! [`read_in_dir`] refuses all of them before reading a byte:
//!
//! - the name is resolved with `openat2(RESOLVE_BENEATH)` relative to the app dir, so any symlink
//!   (or `..`) leading out of it — and any absolute symlink — fails atomically, with no window
//!   between a check and the open (kernels before 5.6: canonical paths are compared instead);
//! - the open is non-blocking (a FIFO opens at once) and the opened descriptor's type is checked
//!   with `fstat`: only regular files are read, never FIFOs, devices, sockets or directories;
//! - the size is checked on the descriptor and the read stops at the limit (a file growing
//!   meanwhile is refused too).
//!
//! A [`Refusal`] never carries the file's content or its symlink's target, only what kind of
//! thing was found, so it is safe to put in an error body.

use std::fmt;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// The largest manifest or `.env` file marina reads (1 MiB): far above any real one, small
/// enough that reading and parsing it cannot hurt marina.
pub const MAX_APP_FILE_BYTES: u64 = 1024 * 1024;

/// Why an app file was not read. Its `Display` (`it is a FIFO (named pipe), not a regular file`)
/// is safe to show: it names no content and no symlink target.
#[derive(Debug)]
pub enum Refusal {
    /// The name resolves outside the app dir: a symlink (or `..`) leading out of it, or an
    /// absolute symlink.
    Outside,
    /// Not a regular file: `"a FIFO"`, `"a character device"`, `"a directory"`, ...
    NotRegular(&'static str),
    /// Larger than the limit.
    TooLarge {
        /// The size seen (at least `limit + 1` when the file grew while being read).
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// Any other failure to open or read it (permissions, a symlink loop, I/O).
    Io(std::io::Error),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Outside => f.write_str(
                "it resolves outside the app dir (a symlink leading out of it, or an absolute symlink); \
                 marina reads an app's files only from inside its dir",
            ),
            Refusal::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            Refusal::TooLarge { limit, .. } => write!(f, "it is larger than {}", human_size(*limit)),
            Refusal::Io(e) => write!(f, "cannot read it: {e}"),
        }
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// Whether the file was refused for what it is (outside, not a regular file, too large), as
    /// opposed to an ordinary failure to read it.
    pub fn is_unsafe(&self) -> bool {
        !matches!(self, Refusal::Io(_))
    }
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// What a file type is called in a [`Refusal::NotRegular`].
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Read `name` (a plain relative path such as `manifest.yaml`) inside `dir`, at most `limit`
/// bytes. `Ok(None)` when there is no such file.
///
/// # Errors
/// A [`Refusal`] when the file leads outside `dir`, is not a regular file, is larger than
/// `limit`, or cannot be read.
pub fn read_in_dir(dir: &Path, name: &Path, limit: u64) -> Result<Option<Vec<u8>>, Refusal> {
    // Only a plain relative name: `..` and absolute names are outside by definition.
    if name.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Refusal::Outside);
    }
    let fd = match open_beneath(dir, name) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::EXDEV) => return Err(Refusal::Outside),
        // Opening a socket file gives ENXIO.
        Err(Errno::ENXIO) => return Err(Refusal::NotRegular("a socket")),
        Err(e) => return Err(Refusal::Io(std::io::Error::from(e))),
    };
    let mut file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(Refusal::Io)?;
    if !meta.file_type().is_file() {
        return Err(Refusal::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(Refusal::TooLarge { size: meta.len(), limit });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    (&mut file).take(limit + 1).read_to_end(&mut buf).map_err(Refusal::Io)?;
    if buf.len() as u64 > limit {
        return Err(Refusal::TooLarge { size: buf.len() as u64, limit });
    }
    Ok(Some(buf))
}

/// Whether `dir` has an entry called `name` of any type (a FIFO or a dangling symlink too), so
/// that such a file is refused rather than silently skipped. Never opens it.
pub fn has_entry(dir: &Path, name: &str) -> bool {
    std::fs::symlink_metadata(dir.join(name)).is_ok()
}

/// Open `name` for reading, resolved beneath `dir`, non-blocking.
fn open_beneath(dir: &Path, name: &Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let dir_fd = nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let how = OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // EAGAIN: a rename raced with the lookup (RESOLVE_BENEATH retries are the caller's job).
    let mut result = Err(Errno::EAGAIN);
    for _ in 0..3 {
        result = nix::fcntl::openat2(&dir_fd, name, how);
        if !matches!(result, Err(Errno::EAGAIN)) {
            break;
        }
    }
    match result {
        // No openat2 (Linux < 5.6, or a seccomp filter that hides it): compare canonical paths,
        // then open what was checked. A symlink swapped in between is the remaining race.
        Err(Errno::ENOSYS | Errno::EPERM) => {
            let path = dir.join(name);
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(Errno::ENOENT);
            }
            let (Ok(real_dir), Ok(real)) = (dir.canonicalize(), path.canonicalize()) else {
                // A dangling symlink: nothing to read, but say where it leads no further.
                return Err(Errno::ENOENT);
            };
            if !real.starts_with(&real_dir) {
                return Err(Errno::EXDEV);
            }
            nix::fcntl::open(&real, flags | OFlag::O_NOFOLLOW, Mode::empty())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("marina-app-file-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn uuid_like() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn reads_regular_files_and_symlinks_that_stay_inside() {
        let d = tmp();
        std::fs::create_dir(d.join("conf")).unwrap();
        std::fs::write(d.join("conf/m.yaml"), "ttl: 1s\n").unwrap();
        std::os::unix::fs::symlink("conf/m.yaml", d.join("manifest.yaml")).unwrap();
        let got = read_in_dir(&d, Path::new("manifest.yaml"), 100).unwrap().unwrap();
        assert_eq!(got, b"ttl: 1s\n");
        assert!(read_in_dir(&d, Path::new("absent"), 100).unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_what_leads_outside_is_not_a_file_or_is_too_large() {
        let d = tmp();
        let outside = tmp();
        std::fs::write(outside.join("secret"), "TOP_SECRET=1\n").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), d.join("abs")).unwrap();
        std::os::unix::fs::symlink(
            format!("../{}/secret", outside.file_name().unwrap().to_str().unwrap()),
            d.join("rel"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        std::fs::create_dir(d.join("dir")).unwrap();
        std::fs::write(d.join("big"), vec![b'x'; 101]).unwrap();
        for name in ["abs", "rel", "zero", "../x", "/etc/passwd"] {
            let e = read_in_dir(&d, Path::new(name), 100).unwrap_err();
            assert!(matches!(e, Refusal::Outside), "{name}: {e:?}");
            assert!(!e.to_string().contains("TOP_SECRET") && !e.to_string().contains(outside.to_str().unwrap()));
        }
        let e = read_in_dir(&d, Path::new("fifo"), 100).unwrap_err();
        assert_eq!(e.to_string(), "it is a FIFO (named pipe), not a regular file");
        let e = read_in_dir(&d, Path::new("dir"), 100).unwrap_err();
        assert!(matches!(e, Refusal::NotRegular("a directory")), "{e:?}");
        let e = read_in_dir(&d, Path::new("big"), 100).unwrap_err();
        assert_eq!(e.to_string(), "it is larger than 100 bytes");
        assert!(has_entry(&d, "fifo") && !has_entry(&d, "nope"));
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(MAX_APP_FILE_BYTES), "1 MiB");
        assert_eq!(human_size(2048), "2 KiB");
        assert_eq!(human_size(100), "100 bytes");
    }
}
