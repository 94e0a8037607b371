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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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

/// Interrupts the connection's running statement once [`STATEMENT_TIMEOUT`] has passed, until
/// dropped. (Outside a tokio runtime it does nothing.)
struct Watchdog {
    /// `(finished, fired)`: the timer interrupts only while `finished` is false, under the lock,
    /// so once `drop` has taken it no later statement on the connection can be interrupted.
    state: Arc<Mutex<(bool, bool)>>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl Watchdog {
    fn arm(c: &rusqlite::Connection) -> Self {
        let state = Arc::new(Mutex::new((false, false)));
        let interrupt = c.get_interrupt_handle();
        let shared = state.clone();
        let timer = tokio::runtime::Handle::try_current().ok().map(|rt| {
            rt.spawn(async move {
                tokio::time::sleep(STATEMENT_TIMEOUT).await;
                let mut st = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if !st.0 {
                    st.1 = true;
                    interrupt.interrupt();
                }
            })
        });
        Self { state, timer }
    }

    /// `e`, said plainly when it is this watchdog's interruption.
    fn explain(&self, e: StreamError) -> StreamError {
        if self.state.lock().unwrap_or_else(PoisonError::into_inner).1 && e.code == "SQLITE_INTERRUPT" {
            return StreamError::new(
                "SQLITE_INTERRUPT",
                format!("the statement ran longer than {} s and was stopped", STATEMENT_TIMEOUT.as_secs()),
            );
        }
        e
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 = true;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
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
    let watchdog = Watchdog::arm(c);
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
        while let Some(row) = rows.next().map_err(|e| watchdog.explain(error_of(e)))? {
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
    let watchdog = Watchdog::arm(c);
    c.execute_batch(sql).map_err(|e| watchdog.explain(error_of(e)))
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
