//! `DATABASE_URL`: which backend, and where.

use std::path::{Path, PathBuf};

use marina_core::Error;

/// The parsed form of a `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq)]
pub enum DatabaseUrl {
    /// An SQLite file (`sqlite://path`, `sqlite:///abs/path`, `sqlite:path`).
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database (`sqlite::memory:` or `sqlite://:memory:`).
    SqliteMemory,
    /// A PostgreSQL server; the URL is kept verbatim for the driver.
    Postgres(String),
}

impl DatabaseUrl {
    /// Parse `url`, or use the default `sqlite://{state_dir}/marina.db` when it is `None` or
    /// empty (an unset variable and `DATABASE_URL=` mean the same thing).
    ///
    /// # Errors
    /// `DATABASE_URL_INVALID` for any other scheme or an empty path, quoting the URL with its
    /// password hidden.
    pub fn parse(url: Option<&str>, state_dir: &Path) -> Result<Self, Error> {
        let url = url.map(str::trim).unwrap_or("");
        if url.is_empty() {
            return Ok(DatabaseUrl::SqliteFile(state_dir.join("marina.db")));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        let Some(rest) = url.strip_prefix("sqlite:") else {
            return Err(invalid(url, "expected a URL starting with sqlite:// or postgres://"));
        };
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.contains('?') {
            return Err(invalid(
                url,
                "SQLite URLs take no query parameters (WAL, foreign keys and the busy timeout are always on)",
            ));
        }
        match path {
            "" => Err(invalid(url, "expected a file path after sqlite://")),
            ":memory:" => Ok(DatabaseUrl::SqliteMemory),
            p => Ok(DatabaseUrl::SqliteFile(PathBuf::from(p))),
        }
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::SqliteFile(p) => format!("sqlite://{}", p.display()),
            DatabaseUrl::SqliteMemory => "sqlite::memory:".to_string(),
            DatabaseUrl::Postgres(u) => redact(u),
        }
    }
}

fn invalid(url: &str, expected: &str) -> Error {
    Error::bad_request("DATABASE_URL_INVALID", format!("invalid DATABASE_URL '{}': {expected}", redact(url)))
}

/// Hide the password of `scheme://user:password@host/...`.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let after = &url[scheme_end + 3..];
    let authority_end = after.find(['/', '?']).unwrap_or(after.len());
    let authority = &after[..authority_end];
    let Some(at) = authority.rfind('@') else { return url.to_string() };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &url[scheme_end + 3 + at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_file_in_the_state_dir() {
        let d = Path::new("/var/lib/marina");
        assert_eq!(DatabaseUrl::parse(None, d).unwrap(), DatabaseUrl::SqliteFile(d.join("marina.db")));
        assert_eq!(DatabaseUrl::parse(Some("  "), d).unwrap(), DatabaseUrl::SqliteFile(d.join("marina.db")));
    }

    #[test]
    fn sqlite_forms() {
        let d = Path::new(".");
        assert_eq!(
            DatabaseUrl::parse(Some("sqlite:///abs/x.db"), d).unwrap(),
            DatabaseUrl::SqliteFile("/abs/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse(Some("sqlite://rel/x.db"), d).unwrap(),
            DatabaseUrl::SqliteFile("rel/x.db".into())
        );
        assert_eq!(DatabaseUrl::parse(Some("sqlite:x.db"), d).unwrap(), DatabaseUrl::SqliteFile("x.db".into()));
        assert_eq!(DatabaseUrl::parse(Some("sqlite::memory:"), d).unwrap(), DatabaseUrl::SqliteMemory);
        assert_eq!(DatabaseUrl::parse(Some("sqlite://:memory:"), d).unwrap(), DatabaseUrl::SqliteMemory);
    }

    #[test]
    fn bad_urls_are_quoted_without_the_password() {
        let d = Path::new(".");
        let err = DatabaseUrl::parse(Some("mysql://root:hunter2@db/x"), d).unwrap_err();
        assert_eq!(err.code(), "DATABASE_URL_INVALID");
        assert_eq!(
            err.message(),
            "invalid DATABASE_URL 'mysql://root:***@db/x': expected a URL starting with sqlite:// or postgres://"
        );
        assert!(DatabaseUrl::parse(Some("sqlite://"), d).is_err());
        assert!(DatabaseUrl::parse(Some("sqlite://x.db?mode=ro"), d).is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("postgres://u:p@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
