//! The readers for each kind of manifest value: each checks one value's shape, converts it, and
//! reports what was wrong with its key path.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use marina_core::units::{UnitError, duration_from_value, size_from_value};

use super::report::{describe, join_key, suggest, unknown_key_warning};
use super::validate::Validator;
use super::{Instances, MAX_INSTANCES, PUBLIC_ROUTE_METHODS, PublicRoutes};

impl Validator {
    pub(super) fn entrypoint(&mut self, v: &Value) -> Option<String> {
        let Value::String(s) = v else {
            self.expected("entrypoint", "a file path relative to the app dir (such as \"index.ts\")", v);
            return None;
        };
        if s.trim().is_empty() {
            self.expected("entrypoint", "a file path relative to the app dir (such as \"index.ts\")", v);
            return None;
        }
        let p = Path::new(s);
        if p.is_absolute() {
            self.problem("entrypoint", format!("must be relative to the app dir, found the absolute path {v}"));
            return None;
        }
        let mut depth: i64 = 0;
        for comp in p.components() {
            match comp {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                self.problem(
                    "entrypoint",
                    format!("must stay inside the app dir, found {v} which leaves it through `..`"),
                );
                return None;
            }
        }
        Some(s.clone())
    }

    pub(super) fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        match duration_from_value(v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(path, unit_message(e, v));
                None
            }
        }
    }

    pub(super) fn size(&mut self, path: &str, v: &Value) -> Option<u64> {
        match size_from_value(v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(path, unit_message(e, v));
                None
            }
        }
    }

    pub(super) fn uint(&mut self, path: &str, v: &Value) -> Option<u64> {
        if let Value::String(s) = v
            && let Ok(n) = s.trim().parse::<u64>()
        {
            self.coerced(path, v, &n.to_string());
            return Some(n);
        }
        match v.as_u64() {
            Some(n) => Some(n),
            None => {
                self.expected(path, "a whole number of 0 or more", v);
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, path: &str, v: &Value, non_empty_items: bool) -> Option<Vec<String>> {
        let Value::Array(items) = v else {
            self.expected(path, "a list of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) if !(non_empty_items && s.is_empty()) => out.push(s.clone()),
                other => {
                    let what = if non_empty_items { "a non-empty string" } else { "a string" };
                    self.expected(&format!("{path}[{i}]"), what, other);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn env(&mut self, v: &Value) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Object(map) = v else {
            self.expected("env", "a map of variable names to values (such as `PORT: \"3000\"`)", v);
            return out;
        };
        for (k, val) in map {
            let path = join_key("env", k);
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.problem(
                    &path,
                    format!("invalid variable name {}: must be non-empty without `=`", Value::String(k.clone())),
                );
                continue;
            }
            // Values are coerced to strings, as Buntime's schema does; null becomes "".
            let s = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => {
                    self.expected(&path, "a string, number or boolean", other);
                    continue;
                }
            };
            if s.contains('\0') {
                self.problem(&path, "must not contain a NUL character");
                continue;
            }
            out.insert(k.clone(), s);
        }
        out
    }

    pub(super) fn public_routes(&mut self, v: &Value) -> PublicRoutes {
        let mut out = PublicRoutes::default();
        match v {
            Value::Array(_) => {
                if let Some(list) = self.string_list("publicRoutes", v, true) {
                    out.by_method.insert("ALL".to_string(), list);
                }
            }
            Value::Object(map) => {
                for (method, list) in map {
                    let path = join_key("publicRoutes", method);
                    if !PUBLIC_ROUTE_METHODS.contains(&method.as_str()) {
                        let hint = match suggest(method, &PUBLIC_ROUTE_METHODS) {
                            Some(s) => format!(" (did you mean `{s}`?)"),
                            None => String::new(),
                        };
                        self.problem(
                            &path,
                            format!(
                                "unknown method {}: expected one of {}{hint}",
                                Value::String(method.clone()),
                                PUBLIC_ROUTE_METHODS.join(", ")
                            ),
                        );
                        continue;
                    }
                    if list.is_null() {
                        continue;
                    }
                    if let Some(list) = self.string_list(&path, list, true) {
                        out.by_method.insert(method.clone(), list);
                    }
                }
            }
            other => self.expected(
                "publicRoutes",
                "a list of paths, or a map of method (ALL, GET, POST, ...) to a list of paths",
                other,
            ),
        }
        out
    }

    pub(super) fn instances(&mut self, v: &Value) -> Option<Instances> {
        let in_range = |n: u64| (1..=u64::from(MAX_INSTANCES)).contains(&n);
        match v {
            Value::Number(_) => match v.as_u64().filter(|n| in_range(*n)) {
                Some(n) => Some(Instances { min: n as u32, max: n as u32 }),
                None => {
                    self.expected("instances", &format!("a whole number from 1 to {MAX_INSTANCES}"), v);
                    None
                }
            },
            Value::Object(map) => {
                let field = |this: &mut Self, key: &str| -> Result<Option<u32>, ()> {
                    match map.get(key).filter(|v| !v.is_null()) {
                        None => Ok(None),
                        Some(x) => match x.as_u64().filter(|n| in_range(*n)) {
                            Some(n) => Ok(Some(n as u32)),
                            None => {
                                this.expected(
                                    &format!("instances.{key}"),
                                    &format!("a whole number from 1 to {MAX_INSTANCES}"),
                                    x,
                                );
                                Err(())
                            }
                        },
                    }
                };
                let min = field(self, "min");
                let max = field(self, "max");
                for k in map.keys().filter(|k| *k != "min" && *k != "max") {
                    let w = unknown_key_warning("instances", k, &["min", "max"]);
                    self.warnings.push(w);
                }
                let (Ok(min), Ok(max)) = (min, max) else { return None };
                let min_v = min.unwrap_or(1);
                let max_v = max.unwrap_or(min_v);
                if min_v > max_v {
                    self.problem(
                        "instances.min",
                        format!("must not be above `instances.max` ({max_v}), found {min_v}"),
                    );
                    return None;
                }
                Some(Instances { min: min_v, max: max_v })
            }
            other => {
                self.expected(
                    "instances",
                    &format!("a whole number from 1 to {MAX_INSTANCES} or a map {{min, max}}"),
                    other,
                );
                None
            }
        }
    }
}

/// Units' own messages already quote the value; a wrong JSON type reads better said plainly.
fn unit_message(e: UnitError, v: &Value) -> String {
    match (&e, v) {
        (UnitError::Duration { .. }, Value::Bool(_) | Value::Array(_) | Value::Object(_)) => format!(
            "expected a duration (a number of seconds or a string such as \"30s\", \"5m\"), found {}",
            describe(v)
        ),
        (UnitError::Size { .. }, Value::Bool(_) | Value::Array(_) | Value::Object(_)) => format!(
            "expected a size (a number of bytes or a string such as \"512kb\", \"10mb\"), found {}",
            describe(v)
        ),
        _ => e.to_string(),
    }
}
