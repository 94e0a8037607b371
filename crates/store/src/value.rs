//! Dialect-neutral SQL values and rows.
//!
//! Plugins write one query for both backends, so parameters and results go through this small
//! closed set of types instead of each driver's own: what SQLite can store (null, integer, real,
//! text, blob) plus booleans, which PostgreSQL has natively and SQLite stores as 0/1.

use std::sync::Arc;

use http::StatusCode;
use marina_core::Error;

/// One SQL value, used both as a bound parameter and as a result cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A 64-bit integer (`INTEGER` / `BIGINT`; narrower PostgreSQL columns are range-checked).
    Integer(i64),
    /// A double (`REAL` / `DOUBLE PRECISION`).
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes (`BLOB` / `BYTEA`).
    Blob(Vec<u8>),
    /// A boolean; SQLite stores it as the integer 0 or 1.
    Bool(bool),
}

impl Value {
    /// The name of this value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
            Value::Bool(_) => "bool",
        }
    }
}

macro_rules! from_impl {
    ($($t:ty => $v:ident($conv:expr)),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Self { Value::$v($conv(x)) }
        }
    )*};
}

from_impl! {
    i64 => Integer(|x| x),
    i32 => Integer(i64::from),
    u32 => Integer(i64::from),
    f64 => Real(|x| x),
    bool => Bool(|x| x),
    String => Text(|x| x),
    &str => Text(str::to_owned),
    Vec<u8> => Blob(|x| x),
    &[u8] => Blob(<[u8]>::to_vec),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(x: Option<T>) -> Self {
        x.map_or(Value::Null, Into::into)
    }
}

/// Conversion from a result cell to a Rust type.
pub trait FromValue: Sized {
    /// Convert, or say which kind was found instead.
    fn from_value(value: &Value) -> Result<Self, String>;
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(value.clone())
    }
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Integer(i) => Ok(*i),
            Value::Bool(b) => Ok(i64::from(*b)),
            other => Err(format!("expected an integer, found {}", other.kind())),
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: &Value) -> Result<Self, String> {
        let i = i64::from_value(value)?;
        i32::try_from(i).map_err(|_| format!("expected a 32-bit integer, found {i}"))
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Real(f) => Ok(*f),
            Value::Integer(i) => Ok(*i as f64),
            other => Err(format!("expected a real, found {}", other.kind())),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bool(b) => Ok(*b),
            // SQLite has no boolean type: 0 and 1 are how it stores them.
            Value::Integer(0) => Ok(false),
            Value::Integer(1) => Ok(true),
            Value::Integer(i) => Err(format!("expected a boolean (0 or 1), found {i}")),
            other => Err(format!("expected a boolean, found {}", other.kind())),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {}", other.kind())),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(format!("expected a blob, found {}", other.kind())),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column selector for [`Row::get`]: a position or a name.
pub trait ColumnIndex {
    /// The position of the column in `row`, if any.
    fn index(&self, row: &Row) -> Option<usize>;
    /// How to name the column in an error.
    fn describe(&self) -> String;
}

impl ColumnIndex for usize {
    fn index(&self, row: &Row) -> Option<usize> {
        (*self < row.values.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        format!("#{self}")
    }
}

impl ColumnIndex for &str {
    fn index(&self, row: &Row) -> Option<usize> {
        row.columns.iter().position(|c| c == self)
    }
    fn describe(&self) -> String {
        format!("'{self}'")
    }
}

/// One result row: the column names (shared by all rows of a result) and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    pub(crate) fn new(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        Self { columns, values }
    }

    /// The column names, in select order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in select order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// A typed cell, by position or name.
    ///
    /// # Errors
    /// `COLUMN_NOT_FOUND` when there is no such column, `COLUMN_TYPE` when the cell does not
    /// convert; both name the column.
    pub fn get<T: FromValue>(&self, column: impl ColumnIndex) -> Result<T, Error> {
        let Some(i) = column.index(self) else {
            return Err(Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "COLUMN_NOT_FOUND",
                format!("no column {} in a row with columns [{}]", column.describe(), self.columns.join(", ")),
            ));
        };
        T::from_value(&self.values[i]).map_err(|msg| {
            Error::new(StatusCode::INTERNAL_SERVER_ERROR, "COLUMN_TYPE", format!("column {}: {msg}", column.describe()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row::new(
            Arc::from(vec!["id".to_string(), "name".to_string(), "flag".to_string()]),
            vec![Value::Integer(7), Value::Text("x".into()), Value::Integer(1)],
        )
    }

    #[test]
    fn typed_access_by_name_and_position() {
        let r = row();
        assert_eq!(r.get::<i64>("id").unwrap(), 7);
        assert_eq!(r.get::<String>(1).unwrap(), "x");
        assert!(r.get::<bool>("flag").unwrap());
        assert_eq!(r.get::<Option<String>>("name").unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn errors_name_the_column_and_the_kind() {
        let r = row();
        let err = r.get::<i64>("name").unwrap_err();
        assert_eq!(err.message(), "column 'name': expected an integer, found text");
        assert_eq!(err.code(), "COLUMN_TYPE");
        let err = r.get::<i64>("missing").unwrap_err();
        assert_eq!(err.code(), "COLUMN_NOT_FOUND");
        assert!(err.message().contains("no column 'missing'"), "{}", err.message());
        assert!(r.get::<i64>(9).is_err());
    }
}
