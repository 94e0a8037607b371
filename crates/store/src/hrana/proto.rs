//! Hrana's JSON request and response shapes (protocol versions 2 and 3), as `@libsql/client`
//! and sqld exchange them: values typed (`{"type":"integer","value":"42"}` — integers as
//! strings so 64-bit values survive JavaScript, blobs as base64), statements by text or by a
//! stored `sql_id`, batches whose steps run on conditions over earlier steps.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::value::Value;

/// A pipeline request body.
#[derive(Debug, Deserialize)]
pub struct PipelineReq {
    /// The stream to continue (from the previous response), or none for a new stream.
    #[serde(default)]
    pub baton: Option<String>,
    /// The requests, run in order.
    pub requests: Vec<StreamReq>,
}

/// One request on a stream.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum StreamReq {
    Close,
    Execute { stmt: Stmt },
    Batch { batch: Batch },
    Sequence { sql: Option<String>, sql_id: Option<i64> },
    Describe { sql: Option<String>, sql_id: Option<i64> },
    StoreSql { sql_id: i64, sql: String },
    CloseSql { sql_id: i64 },
    GetAutocommit,
}

fn yes() -> bool {
    true
}

/// A statement with its arguments.
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct Stmt {
    pub sql: Option<String>,
    pub sql_id: Option<i64>,
    #[serde(default)]
    pub args: Vec<HValue>,
    #[serde(default)]
    pub named_args: Vec<NamedArg>,
    #[serde(default = "yes")]
    pub want_rows: bool,
}

/// A named argument (`:name`, `@name`, `$name`).
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct NamedArg {
    pub name: String,
    pub value: HValue,
}

/// A batch of conditional steps.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct Batch {
    pub steps: Vec<BatchStep>,
}

/// One step of a batch.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct BatchStep {
    #[serde(default)]
    pub condition: Option<Cond>,
    pub stmt: Stmt,
}

/// A batch step's condition over the outcomes of earlier steps.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Cond {
    Ok { step: usize },
    Error { step: usize },
    Not { cond: Box<Cond> },
    And { conds: Vec<Cond> },
    Or { conds: Vec<Cond> },
    IsAutocommit,
}

/// An integer given as a string (the protocol) or, leniently, as a JSON number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IntText {
    /// `"42"`.
    Text(String),
    /// `42`.
    Number(i64),
}

/// A Hrana value.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum HValue {
    Null,
    Integer { value: IntText },
    Float { value: f64 },
    Text { value: String },
    Blob { base64: String },
}

/// A request-level failure: reported in the result list, not as an HTTP error.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamError {
    /// What went wrong (the driver's message for SQL errors).
    pub message: String,
    /// A machine-readable code (`SQLITE_CONSTRAINT_UNIQUE`, `ARGS_INVALID`, ...).
    pub code: String,
}

impl StreamError {
    /// An error with this code.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { message: message.into(), code: code.to_string() }
    }

    /// `{message, code}`.
    pub fn to_json(&self) -> Json {
        json!({ "message": self.message, "code": self.code })
    }
}

impl HValue {
    /// As a store value.
    ///
    /// # Errors
    /// `ARGS_INVALID` for an integer that is not one, or bad base64.
    pub fn to_value(&self) -> Result<Value, StreamError> {
        Ok(match self {
            HValue::Null => Value::Null,
            HValue::Integer { value: IntText::Number(n) } => Value::Integer(*n),
            HValue::Integer { value: IntText::Text(t) } => Value::Integer(
                t.parse().map_err(|_| StreamError::new("ARGS_INVALID", format!("'{t}' is not a 64-bit integer")))?,
            ),
            HValue::Float { value } => Value::Real(*value),
            HValue::Text { value } => Value::Text(value.clone()),
            HValue::Blob { base64 } => Value::Blob(
                base64::engine::general_purpose::STANDARD
                    .decode(base64)
                    .map_err(|e| StreamError::new("ARGS_INVALID", format!("a blob argument is not base64: {e}")))?,
            ),
        })
    }
}

/// A store value as a Hrana value.
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => json!({ "type": "null" }),
        Value::Integer(i) => json!({ "type": "integer", "value": i.to_string() }),
        Value::Bool(b) => json!({ "type": "integer", "value": if *b { "1" } else { "0" } }),
        Value::Real(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => json!({ "type": "float", "value": n }),
            // JSON has no infinities; SQLite turns NaN into NULL itself.
            None => json!({ "type": "text", "value": f.to_string() }),
        },
        Value::Text(s) => json!({ "type": "text", "value": s }),
        Value::Blob(b) => json!({ "type": "blob", "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

/// The result of one statement.
#[derive(Debug, Clone, Default)]
pub struct StmtResult {
    /// Column names and declared types.
    pub cols: Vec<(String, Option<String>)>,
    /// The rows (empty when rows were not wanted).
    pub rows: Vec<Vec<Value>>,
    /// Rows changed by an INSERT, UPDATE or DELETE.
    pub affected_row_count: u64,
    /// The rowid of the last insert, when the statement wrote.
    pub last_insert_rowid: Option<i64>,
}

impl StmtResult {
    /// Hrana's `StmtResult`.
    pub fn to_json(&self) -> Json {
        json!({
            "cols": self.cols.iter().map(|(n, d)| json!({ "name": n, "decltype": d })).collect::<Vec<_>>(),
            "rows": self.rows.iter().map(|r| r.iter().map(value_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "affected_row_count": self.affected_row_count,
            "last_insert_rowid": self.last_insert_rowid.map(|i| i.to_string()),
            "rows_read": self.rows.len(),
            "rows_written": self.affected_row_count,
        })
    }
}

/// What `describe` reports.
#[derive(Debug, Clone, Default)]
pub struct DescribeResult {
    /// Parameter names (`None` for positional ones).
    pub params: Vec<Option<String>>,
    /// Result columns and declared types.
    pub cols: Vec<(String, Option<String>)>,
    /// An `EXPLAIN` statement.
    pub is_explain: bool,
    /// The statement does not write.
    pub is_readonly: bool,
}

impl DescribeResult {
    /// Hrana's `DescribeResult`.
    pub fn to_json(&self) -> Json {
        json!({
            "params": self.params.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>(),
            "cols": self.cols.iter().map(|(n, d)| json!({ "name": n, "decltype": d })).collect::<Vec<_>>(),
            "is_explain": self.is_explain,
            "is_readonly": self.is_readonly,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_hrana_form() {
        let parse = |j: Json| serde_json::from_value::<HValue>(j).unwrap().to_value().unwrap();
        assert_eq!(
            parse(json!({"type": "integer", "value": "9007199254740993"})),
            Value::Integer(9_007_199_254_740_993)
        );
        assert_eq!(parse(json!({"type": "blob", "base64": "AP8="})), Value::Blob(vec![0, 255]));
        assert_eq!(value_json(&Value::Integer(-5)), json!({"type": "integer", "value": "-5"}));
        assert_eq!(value_json(&Value::Blob(vec![0, 255])), json!({"type": "blob", "base64": "AP8="}));
        let bad = serde_json::from_value::<HValue>(json!({"type": "integer", "value": "x"})).unwrap().to_value();
        assert_eq!(bad.unwrap_err().code, "ARGS_INVALID");
    }
}
