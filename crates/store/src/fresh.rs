//! A new `marina.db` without fsyncs on the way to the first answer.
//!
//! Creating a SQLite database in WAL mode and migrating it costs five fsyncs with
//! `synchronous = NORMAL` (the rollback journal that writes page 1, its directory, page 1, the
//! new WAL's header and its directory): a third of a cold start with a fresh state dir. A new
//! database holds nothing anyone could lose, so marina creates it with `synchronous = OFF` and
//! automatic checkpoints off, and
//! [`Store::migrate_system_in_background`](crate::Store::migrate_system_in_background) applies
//! its migrations and then seals it, on a task, while marina loads its plugins and starts
//! answering: `synchronous = NORMAL`, a `TRUNCATE` checkpoint (which syncs the WAL before
//! copying it into the file, then the file), an fsync of the directory. The task leases the
//! connection from before marina goes on until the seal is done, so every other caller waits
//! for both: nothing but the migrations is written before the seal, and whatever a request
//! writes is written with `synchronous = NORMAL`, as always. (The seal alone, for a database
//! migrated otherwise, is [`Store::seal_in_background`](crate::Store::seal_in_background).)
//!
//! Crash safety: a process crash leaves the file to the OS, which writes it. Before the seal
//! completes the database file is at most page 1 (no checkpoint runs, not even at close after a
//! failed start; the next start opens it as an existing database); a power loss then can
//! leave page 1 torn, and SQLite would call the file "not a database". A file of at most one
//! page that SQLite cannot read therefore held nothing but an unfinished creation: marina
//! removes it (and its `-wal`/`-shm`) and creates it again. A larger file is never touched: an
//! error there is reported.

use std::path::Path;

use marina_core::Error;
use rusqlite::ErrorCode;
use rusqlite::config::DbConfig;

/// SQLite's default page size, which marina never changes: a sealed database is larger.
const ONE_PAGE: u64 = 4096;

/// Whether `path` is to be created now (so it may be built without fsyncs). A regular file of
/// at most one page that SQLite cannot read and that is empty, all zeros or begins with
/// SQLite's header is an unfinished creation (see the module doc) and is removed first.
/// Anything else — a symlink, a file that is not SQLite's, a larger file — is left to the
/// normal open, which reports it: marina never deletes what it did not start writing.
///
/// # Errors
/// `DATABASE_UNAVAILABLE` when such a file cannot be removed.
pub(crate) fn prepare(path: &Path) -> Result<bool, Error> {
    let len = match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Ok(false),
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        // Let the open report it.
        Err(_) => return Ok(false),
    };
    if len == 0 {
        return Ok(true);
    }
    if len > ONE_PAGE || readable(path) || !unfinished_sqlite(path) {
        return Ok(false);
    }
    tracing::warn!(
        path = %path.display(),
        bytes = len,
        "marina.db is one page that SQLite cannot read: a first start that lost power before the database was sealed; creating it again"
    );
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::unavailable(
                    "DATABASE_UNAVAILABLE",
                    format!("cannot remove the unfinished database '{}': {e}", Path::new(&p).display()),
                ));
            }
        }
    }
    Ok(true)
}

/// Whether the (at most one page) file holds nothing but zeros or starts with SQLite's header,
/// as a creation cut short leaves it.
fn unfinished_sqlite(path: &Path) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => bytes.starts_with(b"SQLite format 3\0") || bytes.iter().all(|&b| b == 0),
        Err(_) => false,
    }
}

/// False only when SQLite says the file is not a database or is corrupt.
fn readable(path: &Path) -> bool {
    let Ok(conn) = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return true;
    };
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Err(rusqlite::Error::SqliteFailure(e, _)) => {
            !matches!(e.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
        }
        _ => true,
    }
}

/// Configure a database being created: no fsync, and no checkpoint (not even when the
/// connection closes, say after a failed start) until [`seal`], so the file stays one page.
pub(crate) fn unseal(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map(drop)
}

/// Make a database created under [`unseal`] durable and give it the usual pragmas.
pub(crate) fn seal(conn: &rusqlite::Connection, path: &Path) -> Result<(), Error> {
    let fail = |e: rusqlite::Error| {
        Error::unavailable("DATABASE_UNAVAILABLE", format!("cannot seal the new database '{}': {e}", path.display()))
    };
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(fail)?;
    conn.pragma_update(None, "wal_autocheckpoint", 1000).map_err(fail)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false).map_err(fail)?;
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(fail)?;
    if busy != 0 {
        // Another process reads the database: the next checkpoint completes the copy, and the
        // WAL it leaves was synced by this one.
        tracing::warn!(path = %path.display(), "the new database's first checkpoint was partial (another reader)");
    }
    // The checkpoint synced the files; their names live in the directory.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
            Error::unavailable("DATABASE_UNAVAILABLE", format!("cannot sync the directory '{}': {e}", dir.display()))
        })?;
    }
    Ok(())
}
