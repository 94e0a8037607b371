//! Where-filters over JSON values, with Buntime's operators.
//!
//! A filter is parsed once into a [`Filter`] (so a bad filter is a 400 naming its path before
//! anything is read) and evaluated in Rust against each entry's value. Why not SQL like
//! Buntime's `json_extract`: the same code then serves SQLite and PostgreSQL, and values are
//! never interpolated into SQL.
//!
//! Shape: `{"status": "open", "profile.age": {"$gte": 18}, "$or": [{...}, {...}], "$not": {...}}`.
//! Fields are dot-paths into the value (array indexes as numbers: `tags.0`); a bare value means
//! `$eq`; all conditions of one object must hold.

use marina_core::Error;
use serde_json::Value as Json;

/// A parsed where-filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Every one holds.
    And(Vec<Filter>),
    /// At least one holds.
    Or(Vec<Filter>),
    /// It does not hold.
    Not(Box<Filter>),
    /// An operator on the value at a dot-path.
    Field(Vec<String>, Op, Json),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Between,
    In,
    Nin,
    Contains,
    ContainsI,
    NotContains,
    NotContainsI,
    StartsWith,
    StartsWithI,
    EndsWith,
    EndsWithI,
    Null,
    Empty,
    NotEmpty,
}

fn op_of(name: &str) -> Option<Op> {
    Some(match name {
        "$eq" => Op::Eq,
        "$ne" => Op::Ne,
        "$gt" => Op::Gt,
        "$gte" => Op::Gte,
        "$lt" => Op::Lt,
        "$lte" => Op::Lte,
        "$between" => Op::Between,
        "$in" => Op::In,
        "$nin" => Op::Nin,
        "$contains" => Op::Contains,
        "$containsi" => Op::ContainsI,
        "$notContains" => Op::NotContains,
        "$notContainsi" => Op::NotContainsI,
        "$startsWith" => Op::StartsWith,
        "$startsWithi" => Op::StartsWithI,
        "$endsWith" => Op::EndsWith,
        "$endsWithi" => Op::EndsWithI,
        "$null" => Op::Null,
        "$empty" => Op::Empty,
        "$notEmpty" => Op::NotEmpty,
        _ => return None,
    })
}

fn bad(path: &str, message: String) -> Error {
    Error::bad_request("KV_WHERE_INVALID", format!("{path}: {message}")).with_data(serde_json::json!({ "path": path }))
}

impl Filter {
    /// Parse a where-filter; `path` names it in errors (e.g. `where`).
    ///
    /// # Errors
    /// `KV_WHERE_INVALID` naming the bad part's path.
    pub fn parse(v: &Json, path: &str) -> Result<Filter, Error> {
        let Json::Object(map) = v else { return Err(bad(path, format!("a filter must be an object, found {v}"))) };
        let mut all = Vec::new();
        for (k, val) in map {
            let here = format!("{path}.{k}");
            match k.as_str() {
                "$and" | "$or" => {
                    let Json::Array(items) = val else {
                        return Err(bad(&here, format!("{k} takes an array of filters, found {val}")));
                    };
                    let parsed = items
                        .iter()
                        .enumerate()
                        .map(|(i, f)| Filter::parse(f, &format!("{here}[{i}]")))
                        .collect::<Result<Vec<_>, _>>()?;
                    all.push(if k == "$and" { Filter::And(parsed) } else { Filter::Or(parsed) });
                }
                "$not" => all.push(Filter::Not(Box::new(Filter::parse(val, &here)?))),
                k if k.starts_with('$') => {
                    return Err(bad(&here, format!("unknown operator '{k}' at the top of a filter")));
                }
                field => {
                    let segs: Vec<String> = field.split('.').map(str::to_string).collect();
                    match val {
                        Json::Object(ops) if ops.keys().any(|o| o.starts_with('$')) => {
                            for (o, arg) in ops {
                                let op = op_of(o)
                                    .ok_or_else(|| bad(&format!("{here}.{o}"), format!("unknown operator '{o}'")))?;
                                check_arg(op, arg, &format!("{here}.{o}"))?;
                                all.push(Filter::Field(segs.clone(), op, arg.clone()));
                            }
                        }
                        other => all.push(Filter::Field(segs, Op::Eq, other.clone())),
                    }
                }
            }
        }
        Ok(Filter::And(all))
    }

    /// Whether `value` passes.
    pub fn matches(&self, value: &Json) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(value)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(value)),
            Filter::Not(f) => !f.matches(value),
            Filter::Field(path, op, arg) => apply(lookup(value, path), *op, arg),
        }
    }
}

fn check_arg(op: Op, arg: &Json, path: &str) -> Result<(), Error> {
    match op {
        Op::Between => match arg {
            Json::Array(a) if a.len() == 2 => Ok(()),
            _ => Err(bad(path, format!("$between takes [low, high], found {arg}"))),
        },
        Op::In | Op::Nin => match arg {
            Json::Array(_) => Ok(()),
            _ => Err(bad(path, format!("takes an array, found {arg}"))),
        },
        Op::Contains
        | Op::ContainsI
        | Op::NotContains
        | Op::NotContainsI
        | Op::StartsWith
        | Op::StartsWithI
        | Op::EndsWith
        | Op::EndsWithI => match arg {
            Json::String(_) => Ok(()),
            Json::Array(_) | Json::Number(_) | Json::Bool(_) if matches!(op, Op::Contains | Op::NotContains) => Ok(()),
            _ => Err(bad(path, format!("takes a string, found {arg}"))),
        },
        Op::Null | Op::Empty | Op::NotEmpty => match arg {
            Json::Bool(_) => Ok(()),
            _ => Err(bad(path, format!("takes true or false, found {arg}"))),
        },
        _ => Ok(()),
    }
}

fn lookup<'a>(mut v: &'a Json, path: &[String]) -> Option<&'a Json> {
    for seg in path {
        v = match v {
            Json::Object(m) => m.get(seg)?,
            Json::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn cmp(a: &Json, b: &Json) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Json::String(x), Json::String(y)) => Some(x.cmp(y)),
        (Json::Bool(x), Json::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn is_empty(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => true,
        Some(Json::String(s)) => s.is_empty(),
        Some(Json::Array(a)) => a.is_empty(),
        Some(Json::Object(o)) => o.is_empty(),
        _ => false,
    }
}

fn text_op(v: Option<&Json>, arg: &Json, insensitive: bool, f: fn(&str, &str) -> bool) -> bool {
    let (Some(Json::String(s)), Json::String(a)) = (v, arg) else { return false };
    if insensitive { f(&s.to_lowercase(), &a.to_lowercase()) } else { f(s, a) }
}

fn contains(v: Option<&Json>, arg: &Json, insensitive: bool) -> bool {
    match v {
        Some(Json::Array(items)) if !insensitive => items.iter().any(|i| eq(i, arg)),
        Some(Json::Array(items)) => items.iter().any(|i| text_op(Some(i), arg, true, |a, b| a == b)),
        _ => text_op(v, arg, insensitive, |s, a| s.contains(a)),
    }
}

fn apply(v: Option<&Json>, op: Op, arg: &Json) -> bool {
    use std::cmp::Ordering::*;
    let ord = || v.and_then(|v| cmp(v, arg));
    match op {
        Op::Eq => v.is_some_and(|v| eq(v, arg)),
        Op::Ne => !v.is_some_and(|v| eq(v, arg)),
        Op::Gt => ord() == Some(Greater),
        Op::Gte => matches!(ord(), Some(Greater | Equal)),
        Op::Lt => ord() == Some(Less),
        Op::Lte => matches!(ord(), Some(Less | Equal)),
        Op::Between => {
            let Json::Array(b) = arg else { return false };
            v.is_some_and(|v| {
                matches!(cmp(v, &b[0]), Some(Greater | Equal)) && matches!(cmp(v, &b[1]), Some(Less | Equal))
            })
        }
        Op::In => arg.as_array().is_some_and(|a| v.is_some_and(|v| a.iter().any(|x| eq(v, x)))),
        Op::Nin => arg.as_array().is_some_and(|a| !v.is_some_and(|v| a.iter().any(|x| eq(v, x)))),
        Op::Contains => contains(v, arg, false),
        Op::ContainsI => contains(v, arg, true),
        Op::NotContains => !contains(v, arg, false),
        Op::NotContainsI => !contains(v, arg, true),
        Op::StartsWith => text_op(v, arg, false, |s, a| s.starts_with(a)),
        Op::StartsWithI => text_op(v, arg, true, |s, a| s.starts_with(a)),
        Op::EndsWith => text_op(v, arg, false, |s, a| s.ends_with(a)),
        Op::EndsWithI => text_op(v, arg, true, |s, a| s.ends_with(a)),
        Op::Null => (matches!(v, None | Some(Json::Null))) == (arg == &Json::Bool(true)),
        Op::Empty => is_empty(v) == (arg == &Json::Bool(true)),
        Op::NotEmpty => is_empty(v) != (arg == &Json::Bool(true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(filter: Json, value: Json) -> bool {
        Filter::parse(&filter, "where").unwrap().matches(&value)
    }

    #[test]
    fn operators() {
        let v = json!({"name": "Ada Lovelace", "age": 36, "tags": ["math", "poet"], "addr": {"city": "London"}, "none": null});
        assert!(m(json!({"age": 36}), v.clone()));
        assert!(m(json!({"age": {"$gte": 36, "$lt": 40}}), v.clone()));
        assert!(!m(json!({"age": {"$gt": 36}}), v.clone()));
        assert!(m(json!({"age": {"$between": [30, 40]}}), v.clone()));
        assert!(m(json!({"addr.city": {"$in": ["Paris", "London"]}}), v.clone()));
        assert!(m(json!({"addr.city": {"$nin": ["Paris"]}}), v.clone()));
        assert!(m(json!({"name": {"$containsi": "LOVE"}}), v.clone()));
        assert!(!m(json!({"name": {"$contains": "LOVE"}}), v.clone()));
        assert!(m(json!({"tags": {"$contains": "poet"}}), v.clone()));
        assert!(m(json!({"tags.0": "math"}), v.clone()));
        assert!(m(json!({"name": {"$startsWith": "Ada", "$endsWithi": "LACE"}}), v.clone()));
        assert!(m(
            json!({"none": {"$null": true}, "missing": {"$empty": true}, "tags": {"$notEmpty": true}}),
            v.clone()
        ));
        assert!(m(json!({"$or": [{"age": 1}, {"name": {"$startsWithi": "ada"}}]}), v.clone()));
        assert!(m(json!({"$not": {"age": 1}, "$and": [{"age": {"$ne": 2}}]}), v.clone()));
        assert!(!m(json!({"age": {"$gt": "a"}}), v));
    }

    #[test]
    fn bad_filters_name_their_path() {
        let e = Filter::parse(&json!({"a": {"$between": 3}}), "where").unwrap_err();
        assert_eq!(e.code(), "KV_WHERE_INVALID");
        assert!(e.message().starts_with("where.a.$between:"), "{}", e.message());
        let e = Filter::parse(&json!({"a": {"$nope": 1}}), "where").unwrap_err();
        assert!(e.message().contains("unknown operator '$nope'"), "{}", e.message());
        assert!(Filter::parse(&json!({"$or": {}}), "where").is_err());
        assert!(Filter::parse(&json!([]), "where").is_err());
    }
}
