//! What an app version's loaded form depends on, as the file system describes it without
//! reading a byte: the manifest files, `.env` and the entrypoint candidates.
//!
//! The registry re-reads an app version's manifest only when this stamp changes, so a manifest
//! is read once per change on disk — not on every request, and not every cache TTL. Taking a
//! stamp is a handful of `lstat`/`stat` calls, which never block on a FIFO and never follow a
//! symlink's content.
//!
//! File times are coarse (the kernel stamps them with a clock that ticks every few ms, and some
//! file systems keep whole seconds), so a same-size rewrite right after a stamp was taken could
//! keep the stamp unchanged. As git does for its index ("racy clean" entries), a stamp taken
//! less than [`SETTLE`] after one of its files changed is not trusted: the next refresh reads
//! the files again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::manifest::MANIFEST_FILES;
use crate::registry::DEFAULT_ENTRYPOINTS;

/// One file's identity and version: inode, type and mode, size, and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    mode: u32,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// How long after a file's last change its stamp is trusted to show the next change.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);

fn nanos(t: (i64, i64)) -> i128 {
    i128::from(t.0) * 1_000_000_000 + i128::from(t.1)
}

/// The stamps of every file an app version's load reads or looks for: each file's own entry
/// (`lstat`) and, through a symlink, what it points at (`stat`); and when they were taken.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    files: Vec<(Option<FileStamp>, Option<FileStamp>)>,
    taken: SystemTime,
}

impl Stamp {
    /// Whether `self` (taken earlier) still describes what `now` (taken just now) sees: the same
    /// files, none of which had changed within [`SETTLE`] before `self` was taken.
    pub(crate) fn still_matches(&self, now: &Stamp) -> bool {
        self.files == now.files && self.settled()
    }

    /// Whether every file had been unchanged for [`SETTLE`] when this stamp was taken.
    pub(crate) fn settled(&self) -> bool {
        let taken = self.taken.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        let settle = SETTLE.as_nanos() as i128;
        self.files
            .iter()
            .flat_map(|(a, b)| [a, b])
            .flatten()
            .all(|f| nanos(f.mtime).max(nanos(f.ctime)) + settle < taken)
    }
}

/// The stamp of the app version in `dir`; `entrypoint` is the manifest's, when it names one.
pub(crate) fn of(dir: &Path, entrypoint: Option<&str>) -> Stamp {
    let taken = SystemTime::now();
    let names = MANIFEST_FILES.iter().copied().chain([".env"]).chain(DEFAULT_ENTRYPOINTS).chain(entrypoint);
    Stamp {
        files: names
            .map(|n| {
                let p = dir.join(n);
                let own = std::fs::symlink_metadata(&p).ok();
                let target = match &own {
                    Some(m) if m.file_type().is_symlink() => std::fs::metadata(&p).ok().map(|m| FileStamp::of(&m)),
                    _ => None,
                };
                (own.as_ref().map(FileStamp::of), target)
            })
            .collect(),
        taken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_to_the_manifest_env_or_a_symlink_target_change_the_stamp() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let first = of(dir, None);
        assert_eq!(first.files, of(dir, None).files, "an unchanged dir has the same files");
        std::fs::write(dir.join("manifest.yaml"), "ttl: 1s\n").unwrap();
        let with_manifest = of(dir, None);
        assert!(!first.still_matches(&with_manifest));
        std::fs::write(dir.join(".env"), "A=1\n").unwrap();
        let with_env = of(dir, None);
        assert!(!with_manifest.still_matches(&with_env));
        // A symlinked .env whose target changes: the target's stamp changes.
        std::fs::remove_file(dir.join(".env")).unwrap();
        std::fs::write(dir.join("real.env"), "A=1\n").unwrap();
        std::os::unix::fs::symlink("real.env", dir.join(".env")).unwrap();
        let linked = of(dir, None);
        std::fs::write(dir.join("real.env"), "A=22\n").unwrap();
        assert!(!linked.still_matches(&of(dir, None)));
        // The manifest's own entrypoint counts too.
        let before = of(dir, Some("src/main.ts"));
        std::fs::create_dir(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/main.ts"), "").unwrap();
        assert!(!before.still_matches(&of(dir, Some("src/main.ts"))));
    }

    #[test]
    fn a_stamp_taken_right_after_a_change_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("manifest.yaml"), "ttl: 1s\n").unwrap();
        // Same files, but the change is younger than SETTLE: a same-size rewrite within the
        // file system's time granularity could hide behind it.
        let fresh = of(d.path(), None);
        assert!(!fresh.still_matches(&of(d.path(), None)));
        // Once the files are older than SETTLE, an unchanged stamp is trusted.
        let mut settled = of(d.path(), None);
        settled.taken += SETTLE * 2;
        assert!(settled.still_matches(&of(d.path(), None)));
    }
}
