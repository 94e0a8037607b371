//! Hrana statements on an SQLite connection (an app's own database file).
//!
//! Every call first confines the connection: `ATTACH` is disabled (the attached-database
//! limit is 0), so SQL sent by an app cannot open another file — marina's database or another
//! app's. Extensions cannot be loaded (rusqlite is built without `load_extension`).
//!
//! A statement (or script) runs at most [`STATEMENT_TIMEOUT`], then SQLite is interrupted
//! (`SQLITE_INTERRUPT`), and a result — and any one string or blob a statement makes — holds at
//! most [`MAX_RESULT_BYTES`]: an app's runaway
//! query (`WITH RECURSIVE` without an end) otherwise pinned a CPU of marina's for ever, held
//! the app's connection so that every later call hung, and could pile up rows until marina ran
//! out of memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::limits::Limit;
use rusqlite::types::{Value as SqlValue, ValueRef};

use super::proto::{DescribeResult, StmtResult, StreamError};
use crate::value::Value;

/// The longest one statement, batch step or script of an app may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of row values one statement's result may hold.
pub const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;

fn confine(c: &rusqlite::Connection) -> Result<(), StreamError> {
    c.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0).map_err(error_of)?;
    // No single string or blob larger than a whole result may be: SQLite's own bound is ~1 GB,
    // so `SELECT randomblob(999999999)` made SQLite build a 1 GB value (and marina copy it)
    // before the result's bound refused it. Over the bound SQLite answers SQLITE_TOOBIG itself.
    c.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_RESULT_BYTES as i32).map(|_| ()).map_err(error_of)
}

fn too_big() -> StreamError {
    StreamError::new(
        "SQLITE_TOOBIG",
        format!(
            "the result is larger than {} MiB; select fewer rows (LIMIT) or columns",
            MAX_RESULT_BYTES / (1024 * 1024)
        ),
    )
}

/// How many SQLite virtual-machine steps run between two looks at the clock: a few
/// microseconds of work, so the look costs nothing measurable and a statement is stopped within
/// moments of its time.
const STEPS_PER_LOOK: i32 = 10_000;

/// Bounds what runs next on the connection to `limit` ([`STATEMENT_TIMEOUT`]): SQLite's progress handler
/// looks at the clock every [`STEPS_PER_LOOK`] steps and interrupts once the time is up. Inside
/// SQLite, so nothing is spawned per statement (a timer task armed and aborted per statement
/// was most of a small query's overhead) and it works outside a tokio runtime too. The flag says
/// whether it fired; [`unbound`] must follow.
fn bound(c: &mut rusqlite::Connection, limit: Duration) -> Result<Arc<AtomicBool>, StreamError> {
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let start = Instant::now();
    c.progress_handler(
        STEPS_PER_LOOK,
        Some(move || {
            let over = start.elapsed() > limit;
            if over {
                flag.store(true, Ordering::Relaxed);
            }
            over
        }),
    )
    .map_err(error_of)?;
    Ok(fired)
}

/// Removes [`bound`]'s handler, and says a statement it stopped plainly.
fn unbound<T>(
    c: &mut rusqlite::Connection,
    fired: &AtomicBool,
    limit: Duration,
    result: Result<T, StreamError>,
) -> Result<T, StreamError> {
    // Clearing cannot fail in a way that matters: the next `bound` replaces the handler.
    let _ = c.progress_handler(0, None::<fn() -> bool>);
    result.map_err(|e| {
        if fired.load(Ordering::Relaxed) && e.code == "SQLITE_INTERRUPT" {
            StreamError::new(
                "SQLITE_INTERRUPT",
                format!("the statement ran longer than {} s and was stopped", limit.as_secs()),
            )
        } else {
            e
        }
    })
}

/// SQLite's result code names, as sqld reports them (extended codes where they say more).
fn code_name(extended: i32) -> String {
    let name = match extended {
        1555 => "CONSTRAINT_PRIMARYKEY",
        2067 => "CONSTRAINT_UNIQUE",
        787 => "CONSTRAINT_FOREIGNKEY",
        275 => "CONSTRAINT_CHECK",
        1299 => "CONSTRAINT_NOTNULL",
        _ => match extended & 0xff {
            1 => "ERROR",
            2 => "INTERNAL",
            3 => "PERM",
            4 => "ABORT",
            5 => "BUSY",
            6 => "LOCKED",
            7 => "NOMEM",
            8 => "READONLY",
            9 => "INTERRUPT",
            10 => "IOERR",
            11 => "CORRUPT",
            13 => "FULL",
            14 => "CANTOPEN",
            17 => "SCHEMA",
            18 => "TOOBIG",
            19 => "CONSTRAINT",
            20 => "MISMATCH",
            21 => "MISUSE",
            23 => "AUTH",
            25 => "RANGE",
            _ => "ERROR",
        },
    };
    format!("SQLITE_{name}")
}

pub(super) fn error_of(e: rusqlite::Error) -> StreamError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            StreamError::new(&code_name(f.extended_code), msg.clone().unwrap_or_else(|| f.to_string()))
        }
        rusqlite::Error::MultipleStatement => {
            StreamError::new("SQL_INVALID", "the SQL holds more than one statement; send them as a batch or a sequence")
        }
        rusqlite::Error::InvalidParameterCount(given, wanted) => {
            StreamError::new("ARGS_INVALID", format!("the statement takes {wanted} argument(s), {given} given"))
        }
        other => StreamError::new("SQLITE_ERROR", other.to_string()),
    }
}

fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Real(f) => SqlValue::Real(*f),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
    }
}

/// Run one statement.
pub(super) fn execute(
    c: &mut rusqlite::Connection,
    sql: &str,
    args: &[Value],
    named: &[(String, Value)],
    want_rows: bool,
) -> Result<StmtResult, StreamError> {
    confine(c)?;
    let fired = bound(c, STATEMENT_TIMEOUT)?;
    let result = run(c, sql, args, named, want_rows);
    unbound(c, &fired, STATEMENT_TIMEOUT, result)
}

fn run(
    c: &mut rusqlite::Connection,
    sql: &str,
    args: &[Value],
    named: &[(String, Value)],
    want_rows: bool,
) -> Result<StmtResult, StreamError> {
    let mut stmt = c.prepare(sql).map_err(error_of)?;
    let count = stmt.parameter_count();
    if args.len() > count {
        return Err(StreamError::new(
            "ARGS_INVALID",
            format!("the statement takes {count} argument(s), {} positional given", args.len()),
        ));
    }
    for (i, v) in args.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, to_sql(v)).map_err(error_of)?;
    }
    for (name, v) in named {
        let candidates = if name.starts_with([':', '@', '$']) {
            vec![name.clone()]
        } else {
            vec![format!(":{name}"), format!("@{name}"), format!("${name}")]
        };
        let mut index = None;
        for n in &candidates {
            if let Some(i) = stmt.parameter_index(n).map_err(error_of)? {
                index = Some(i);
                break;
            }
        }
        let i = index.ok_or_else(|| {
            StreamError::new("ARGS_INVALID", format!("the statement has no parameter named '{name}'"))
        })?;
        stmt.raw_bind_parameter(i, to_sql(v)).map_err(error_of)?;
    }
    let cols: Vec<(String, Option<String>)> =
        stmt.columns().map(|c| (c.name().to_string(), c.decl_type().map(str::to_string))).collect();
    let readonly = stmt.readonly();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    {
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(error_of)? {
            if !want_rows {
                continue;
            }
            let mut values = Vec::with_capacity(cols.len());
            for i in 0..cols.len() {
                let v = row.get_ref(i).map_err(error_of)?;
                bytes += match v {
                    ValueRef::Text(t) | ValueRef::Blob(t) => t.len() + 8,
                    _ => 8,
                };
                // Counted before the value is copied, so a result over the bound is never held.
                if bytes > MAX_RESULT_BYTES {
                    return Err(too_big());
                }
                values.push(match v {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Integer(i),
                    ValueRef::Real(f) => Value::Real(f),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(values);
        }
    }
    drop(stmt);
    Ok(StmtResult {
        cols,
        rows: out,
        affected_row_count: if readonly { 0 } else { c.changes() },
        last_insert_rowid: (!readonly).then(|| c.last_insert_rowid()),
    })
}

/// Run a script of statements without arguments.
pub(super) fn sequence(c: &mut rusqlite::Connection, sql: &str) -> Result<(), StreamError> {
    confine(c)?;
    let fired = bound(c, STATEMENT_TIMEOUT)?;
    let result = c.execute_batch(sql).map_err(error_of);
    unbound(c, &fired, STATEMENT_TIMEOUT, result)
}

/// Describe one statement without running it.
pub(super) fn describe(c: &mut rusqlite::Connection, sql: &str) -> Result<DescribeResult, StreamError> {
    confine(c)?;
    let stmt = c.prepare(sql).map_err(error_of)?;
    Ok(DescribeResult {
        params: (1..=stmt.parameter_count()).map(|i| stmt.parameter_name(i).map(str::to_string)).collect(),
        cols: stmt.columns().map(|c| (c.name().to_string(), c.decl_type().map(str::to_string))).collect(),
        is_explain: stmt.is_explain() != 0,
        is_readonly: stmt.readonly(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_stops_endless_sql_and_is_gone_afterwards() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        let limit = Duration::from_millis(50);
        let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        let started = Instant::now();
        let fired = bound(&mut c, limit).unwrap();
        let result = c.execute_batch(endless).map_err(error_of);
        let err = unbound(&mut c, &fired, limit, result).unwrap_err();
        assert_eq!(err.code, "SQLITE_INTERRUPT");
        assert!(err.message.contains("ran longer than"), "{}", err.message);
        assert!(started.elapsed() >= limit, "stopped before its time");
        // The handler is gone: a statement run later, however long after, is not interrupted.
        std::thread::sleep(limit);
        let n: i64 = c
            .query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) SELECT count(*) FROM c",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 200_000);
        // Another statement's error is passed on unchanged.
        let fired = bound(&mut c, limit).unwrap();
        let result = c.execute_batch("SELECT * FROM missing").map_err(error_of);
        assert_ne!(unbound(&mut c, &fired, limit, result).unwrap_err().code, "SQLITE_INTERRUPT");
    }
}
