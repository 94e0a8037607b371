//! Hrana statements on PostgreSQL (an app's schema on marina's server).
//!
//! What PostgreSQL cannot offer as SQLite does (docs/database.md lists these for users):
//! - SQL is PostgreSQL's dialect; `?` and `?NNN` placeholders are rewritten to `$n`, but named
//!   arguments (`:name`) are refused;
//! - `last_insert_rowid` is always null (use `RETURNING`);
//! - `get_autocommit` and the `is_autocommit` condition follow `BEGIN`/`COMMIT`/`ROLLBACK`
//!   statements as written (the driver does not expose the session's transaction state);
//! - `describe` cannot tell read-only statements apart beyond their first keyword, and has
//!   no parameter names;
//! - columns of types the store does not read (numeric, timestamps, json, ...) must be cast
//!   (`::text`) — the error says so.

use std::sync::Arc;

use futures_util::TryStreamExt as _;
use tokio_postgres::types::{ToSql, Type};

use super::proto::{DescribeResult, StmtResult, StreamError};
use crate::conn::{pg_cause, pg_row};
use crate::sql;
use crate::value::Value;

fn error_of(e: &tokio_postgres::Error) -> StreamError {
    let code = match e.code().map(|c| c.code()) {
        Some("23505") => "SQLITE_CONSTRAINT_UNIQUE",
        Some("23503") => "SQLITE_CONSTRAINT_FOREIGNKEY",
        Some("23502") => "SQLITE_CONSTRAINT_NOTNULL",
        Some("23514") => "SQLITE_CONSTRAINT_CHECK",
        Some(c) if c.starts_with("23") => "SQLITE_CONSTRAINT",
        _ => "SQLITE_ERROR",
    };
    StreamError::new(code, pg_cause(e))
}

fn first_keyword(sql: &str) -> String {
    sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// Follow transaction statements as written: `BEGIN`/`START` open one, `COMMIT`/`END`/
/// `ROLLBACK` (not `ROLLBACK TO`) close it.
pub(super) fn track_tx(sql_text: &str, in_tx: &mut bool) {
    for stmt in sql::split_statements(sql_text) {
        match first_keyword(&stmt).as_str() {
            "BEGIN" | "START" => *in_tx = true,
            "COMMIT" | "END" | "ABORT" => *in_tx = false,
            "ROLLBACK" if !stmt.to_ascii_uppercase().contains(" TO ") => *in_tx = false,
            _ => {}
        }
    }
}

/// An argument adapted to the parameter's type: JavaScript sends every number as a float, so
/// an integral float goes to an integer parameter as an integer (and back).
fn adapt(v: &Value, ty: &Type) -> Value {
    let int = matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8);
    match v {
        Value::Real(f) if int && f.fract() == 0.0 && f.abs() < 9.2e18 => Value::Integer(*f as i64),
        Value::Integer(i) if matches!(*ty, Type::FLOAT4 | Type::FLOAT8) => Value::Real(*i as f64),
        other => other.clone(),
    }
}

/// SQLite's `BEGIN DEFERRED|IMMEDIATE|EXCLUSIVE` (what libSQL clients send to open a
/// transaction) as PostgreSQL's `BEGIN`.
fn dialect(sql_text: &str) -> String {
    let words: Vec<String> =
        sql_text.trim().trim_end_matches(';').split_whitespace().map(str::to_ascii_uppercase).collect();
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["BEGIN", "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE"]
        | ["BEGIN", "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE", "TRANSACTION"] => "BEGIN".to_string(),
        _ => sql::question_marks_to_dollars(sql_text),
    }
}

/// Run one statement.
pub(super) async fn execute(
    client: &tokio_postgres::Client,
    sql_text: &str,
    args: &[Value],
    named: &[(String, Value)],
    want_rows: bool,
    in_tx: &mut bool,
) -> Result<StmtResult, StreamError> {
    if !named.is_empty() {
        return Err(StreamError::new(
            "ARGS_INVALID",
            "named arguments are not supported on PostgreSQL; use positional ones (? or $1)",
        ));
    }
    let text = dialect(sql_text);
    let stmt = client.prepare(&text).await.map_err(|e| error_of(&e))?;
    if stmt.params().len() != args.len() {
        return Err(StreamError::new(
            "ARGS_INVALID",
            format!("the statement takes {} argument(s), {} given", stmt.params().len(), args.len()),
        ));
    }
    let adapted: Vec<Value> = args.iter().zip(stmt.params()).map(|(v, t)| adapt(v, t)).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = adapted.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let cols: Vec<(String, Option<String>)> =
        stmt.columns().iter().map(|c| (c.name().to_string(), Some(c.type_().name().to_string()))).collect();
    let names: Arc<[String]> = cols.iter().map(|(n, _)| n.clone()).collect();
    let stream = client.query_raw(&stmt, refs).await.map_err(|e| error_of(&e))?;
    futures_util::pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await.map_err(|e| error_of(&e))? {
        if want_rows {
            let r = pg_row(&row, &names, &text).map_err(|e| StreamError::new("SQLITE_MISMATCH", e.message()))?;
            rows.push(r.values().to_vec());
        }
    }
    let affected = if cols.is_empty() || !matches!(first_keyword(&text).as_str(), "SELECT" | "VALUES" | "SHOW") {
        stream.rows_affected().unwrap_or(0)
    } else {
        0
    };
    track_tx(&text, in_tx);
    Ok(StmtResult { cols, rows, affected_row_count: affected, last_insert_rowid: None })
}

/// Run a script of statements without arguments.
pub(super) async fn sequence(
    client: &tokio_postgres::Client,
    sql_text: &str,
    in_tx: &mut bool,
) -> Result<(), StreamError> {
    client.batch_execute(sql_text).await.map_err(|e| error_of(&e))?;
    track_tx(sql_text, in_tx);
    Ok(())
}

/// Describe one statement without running it.
pub(super) async fn describe(client: &tokio_postgres::Client, sql_text: &str) -> Result<DescribeResult, StreamError> {
    let text = sql::question_marks_to_dollars(sql_text);
    let stmt = client.prepare(&text).await.map_err(|e| error_of(&e))?;
    let kw = first_keyword(&text);
    Ok(DescribeResult {
        params: vec![None; stmt.params().len()],
        cols: stmt.columns().iter().map(|c| (c.name().to_string(), Some(c.type_().name().to_string()))).collect(),
        is_explain: kw == "EXPLAIN",
        is_readonly: matches!(kw.as_str(), "SELECT" | "VALUES" | "SHOW" | "EXPLAIN"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_statements_are_followed() {
        let mut t = false;
        track_tx("begin immediate", &mut t);
        assert!(t);
        track_tx("SAVEPOINT a; ROLLBACK TO a", &mut t);
        assert!(t);
        track_tx("commit", &mut t);
        assert!(!t);
        track_tx("START TRANSACTION; SELECT 1; ROLLBACK", &mut t);
        assert!(!t);
    }

    #[test]
    fn sqlite_begin_forms_become_begin() {
        assert_eq!(dialect("BEGIN IMMEDIATE"), "BEGIN");
        assert_eq!(dialect("begin deferred transaction;"), "BEGIN");
        assert_eq!(dialect("SELECT ?"), "SELECT $1");
    }
}
