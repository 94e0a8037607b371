//! The arithmetic of the `sum`, `min` and `max` mutations, bigints included.
//!
//! JSON has no bigint, so Buntime's SDK sends a JavaScript `bigint` as
//! `{"__type": "bigint", "value": "10"}` (its `validateBigInt` also takes a number or a numeric
//! string), and a value written that way is stored as that object. Buntime's `sum` then reads
//! such a stored value as 0 (it only adds to plain numbers), silently dropping it; here it is
//! what it says: an exact integer. When either side is a bigint the result is exact (128-bit;
//! beyond that 409 `KV_OVERFLOW`) and stored in the same `{"__type": "bigint", "value": "..."}`
//! form, so it reads back as a bigint. `{"$bigint": "..."}` (marina's key notation) is taken too.
//! Plain numbers keep their rules: integers stay exact 64-bit, anything else is a double.

use http::StatusCode;
use marina_core::Error;
use marina_core::error::clipped;
use serde_json::{Value as Json, json};

/// A number a mutation works with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
    Big(i128),
}

/// How much of a bad operand or stored value an error quotes (an operand may be megabytes).
const SHOWN: usize = 64;

fn bad(path: &str, message: String) -> Error {
    Error::bad_request("KV_ATOMIC_INVALID", format!("{path}: {message}")).with_data(json!({ "path": path }))
}

fn conflict(code: &'static str, path: &str, message: String) -> Error {
    Error::new(StatusCode::CONFLICT, code, format!("{path}: {message}")).with_data(json!({ "path": path }))
}

/// `Some(digits)` when `v` is a bigint in one of its JSON forms.
fn bigint_text(v: &Json) -> Option<String> {
    let obj = v.as_object()?;
    let digits = if obj.get("__type").and_then(Json::as_str) == Some("bigint") && obj.len() == 2 {
        obj.get("value")?
    } else if obj.len() == 1 {
        obj.get("$bigint")?
    } else {
        return None;
    };
    match digits {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn from_json(v: &Json) -> Option<Result<Num, String>> {
    if let Json::Number(n) = v {
        return Some(Ok(n.as_i64().map_or_else(|| Num::Float(n.as_f64().unwrap_or(f64::NAN)), Num::Int)));
    }
    let text = bigint_text(v)?;
    Some(
        text.trim()
            .parse::<i128>()
            .map(Num::Big)
            .map_err(|_| format!("'{}' is not an integer (a bigint's digits)", clipped(&text, SHOWN))),
    )
}

fn to_json(n: Num) -> Json {
    match n {
        Num::Int(i) => Json::from(i),
        Num::Float(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        Num::Big(b) => json!({ "__type": "bigint", "value": b.to_string() }),
    }
}

/// The operand of a mutation: a number, a bigint object, or a numeric string (as Buntime).
fn operand(path: &str, kind: &str, v: &Json) -> Result<Num, Error> {
    match from_json(v) {
        Some(Ok(n)) => Ok(n),
        Some(Err(why)) => Err(bad(path, format!("{kind}: {why}"))),
        None => match v.as_str().map(|s| s.trim().parse::<i128>()) {
            Some(Ok(b)) => Ok(Num::Big(b)),
            _ => Err(bad(
                path,
                format!(
                    "{kind} needs a number, a bigint ({{\"__type\":\"bigint\",\"value\":\"10\"}}) or an integer string, found {}",
                    clipped(&v.to_string(), SHOWN)
                ),
            )),
        },
    }
}

fn as_big(path: &str, n: Num) -> Result<i128, Error> {
    match n {
        Num::Int(i) => Ok(i128::from(i)),
        Num::Big(b) => Ok(b),
        Num::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38 => Ok(f as i128),
        Num::Float(f) => {
            Err(conflict("KV_TYPE_MISMATCH", path, format!("{f} is not an integer and cannot meet a bigint")))
        }
    }
}

/// `kind` (`sum`, `min`, `max`) of the stored value `current` (absent: the operand is stored)
/// and `operand`.
///
/// # Errors
/// 400 `KV_ATOMIC_INVALID` for an operand that is not a number; 409 `KV_TYPE_MISMATCH` when the
/// stored value is not one; 409 `KV_OVERFLOW` when the result does not fit.
pub(super) fn apply(path: &str, kind: &str, current: Option<&Json>, operand_json: &Json) -> Result<Json, Error> {
    let b = operand(path, kind, operand_json)?;
    let Some(current) = current else { return Ok(to_json(b)) };
    let a = match from_json(current) {
        Some(Ok(a)) => a,
        _ => {
            return Err(conflict(
                "KV_TYPE_MISMATCH",
                path,
                format!(
                    "{kind} needs the stored value to be a number or a bigint, found {}",
                    clipped(&current.to_string(), SHOWN)
                ),
            ));
        }
    };
    let overflow = || conflict("KV_OVERFLOW", path, format!("{kind} of {} and {} overflows", to_json(a), to_json(b)));
    let result = match (a, b) {
        (Num::Big(_), _) | (_, Num::Big(_)) => {
            let (x, y) = (as_big(path, a)?, as_big(path, b)?);
            Num::Big(match kind {
                "sum" => x.checked_add(y).ok_or_else(overflow)?,
                "min" => x.min(y),
                _ => x.max(y),
            })
        }
        (Num::Int(x), Num::Int(y)) => Num::Int(match kind {
            "sum" => x.checked_add(y).ok_or_else(overflow)?,
            "min" => x.min(y),
            _ => x.max(y),
        }),
        _ => {
            let f = |n| match n {
                Num::Int(i) => i as f64,
                Num::Float(f) => f,
                Num::Big(b) => b as f64,
            };
            let (x, y) = (f(a), f(b));
            let r = match kind {
                "sum" => x + y,
                "min" => x.min(y),
                _ => x.max(y),
            };
            if !r.is_finite() {
                return Err(conflict("KV_OVERFLOW", path, "the result is not a finite number".into()));
            }
            Num::Float(r)
        }
    };
    Ok(to_json(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big(s: &str) -> Json {
        json!({ "__type": "bigint", "value": s })
    }

    #[test]
    fn buntime_bigints_add_exactly_and_stay_bigints() {
        assert_eq!(apply("m", "sum", Some(&big("10")), &json!(5)).unwrap(), big("15"));
        assert_eq!(apply("m", "max", Some(&big("10")), &json!(20)).unwrap(), big("20"));
        assert_eq!(apply("m", "min", Some(&big("10")), &json!(5)).unwrap(), big("5"));
        assert_eq!(
            apply("m", "sum", Some(&json!(1)), &big("9223372036854775807")).unwrap(),
            big("9223372036854775808")
        );
        assert_eq!(apply("m", "sum", None, &json!("42")).unwrap(), big("42"));
        assert_eq!(apply("m", "sum", Some(&json!({"$bigint": "2"})), &json!(2)).unwrap(), big("4"));
        // Plain numbers keep their rules.
        assert_eq!(apply("m", "sum", Some(&json!(1)), &json!(2)).unwrap(), json!(3));
        assert_eq!(apply("m", "sum", Some(&json!(1.5)), &json!(2)).unwrap(), json!(3.5));
    }

    #[test]
    fn a_huge_bad_operand_is_quoted_in_part() {
        let digits = "9".repeat(1_000_000) + "x";
        let e = apply("m", "sum", None, &big(&digits)).unwrap_err();
        assert_eq!(e.code(), "KV_ATOMIC_INVALID");
        assert!(e.message().len() < 300 && e.message().contains("…"), "{}", e.message());
        let e = apply("m", "sum", Some(&json!("y".repeat(100_000))), &json!(1)).unwrap_err();
        assert!(e.message().len() < 300, "{}", e.message());
        let e = apply("m", "sum", None, &json!(["z".repeat(100_000)])).unwrap_err();
        assert!(e.message().len() < 400, "{}", e.message());
    }

    #[test]
    fn what_is_not_a_number_is_refused_with_its_path() {
        let e = apply("mutations[0]", "sum", Some(&json!("x")), &json!(1)).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (409, "KV_TYPE_MISMATCH"));
        let e = apply("mutations[0]", "sum", None, &json!([1])).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (400, "KV_ATOMIC_INVALID"));
        assert!(e.message().starts_with("mutations[0]:"), "{}", e.message());
        let e = apply("m", "sum", None, &big("12x")).unwrap_err();
        assert_eq!(e.code(), "KV_ATOMIC_INVALID");
        let e = apply("m", "sum", Some(&big("1.5")), &json!(1)).unwrap_err();
        assert_eq!(e.code(), "KV_TYPE_MISMATCH");
        let e = apply("m", "sum", Some(&big(&i128::MAX.to_string())), &json!(1)).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (409, "KV_OVERFLOW"));
        let e = apply("m", "sum", Some(&big("1")), &json!(0.5)).unwrap_err();
        assert_eq!(e.code(), "KV_TYPE_MISMATCH");
        let e = apply("m", "sum", Some(&json!(i64::MAX)), &json!(1)).unwrap_err();
        assert_eq!(e.code(), "KV_OVERFLOW");
    }
}
