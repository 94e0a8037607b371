//! The `proxy` key of an app manifest: the app's reverse-proxy rules.
//!
//! Two shapes are read. The list form is Buntime's rule objects (`pattern`, `target`, …, see
//! docs/proxy.md); the map form is the legacy `worker.config.json` one, keyed by pattern, whose
//! value is a target URL or a rule object without `pattern`. Every rule is validated with the
//! proxy layer's own [`Rule::compile`], so a manifest and the `/redirects` API accept exactly the
//! same rules; problems carry the key path (`proxy[1].rewrite`, `proxy["^/api"].target`).

use marina_proxy::rules::RuleSpec;
use marina_proxy::{Rule, RuleSet, TargetPolicy};
use serde_json::{Map, Value};

use crate::manifest::describe;

/// A problem under `proxy`: the key path and the message.
pub type ProxyProblem = (String, String);

/// Reads and validates `proxy`. Rules without an `id` get `static-<i>`.
pub fn parse(v: &Value) -> (Vec<RuleSpec>, Vec<ProxyProblem>) {
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    // (key path, the rule object or why the entry is not one)
    let entries: Vec<(String, Result<Value, String>)> = match v {
        Value::Array(items) => {
            items.iter().enumerate().map(|(i, item)| (format!("proxy[{i}]"), Ok(item.clone()))).collect()
        }
        Value::Object(map) => map.iter().map(|(pattern, item)| legacy_entry(pattern, item)).collect(),
        other => {
            problems.push((
                "proxy".to_string(),
                format!(
                    "expected a list of rules (such as `- {{pattern: \"^/api/(.*)\", target: \"http://127.0.0.1:4000\"}}`) or a map of pattern to target, found {}",
                    describe(other)
                ),
            ));
            return (rules, problems);
        }
    };
    let policy = TargetPolicy::default();
    for (i, (path, item)) in entries.into_iter().enumerate() {
        let item = match item {
            Ok(item) => item,
            Err(message) => {
                problems.push((path, message));
                continue;
            }
        };
        if !item.is_object() {
            problems
                .push((path, format!("expected a rule map with `pattern` and `target`, found {}", describe(&item))));
            continue;
        }
        let spec: RuleSpec = match serde_path_to_error::deserialize(&item) {
            Ok(s) => s,
            Err(e) => {
                let at = e.path().to_string();
                let full = if at == "." || at.is_empty() { path.clone() } else { format!("{path}.{at}") };
                problems.push((full, e.into_inner().to_string()));
                continue;
            }
        };
        let id = spec.id.clone().unwrap_or_else(|| format!("static-{i}"));
        match Rule::compile(id, spec.clone(), true, &policy) {
            Ok(_) => rules.push(spec),
            Err(e) => problems.push((format!("{path}.{}", e.field), e.message)),
        }
    }
    (rules, problems)
}

/// One entry of the legacy map form: `pattern: target` or `pattern: {target, ...}`.
fn legacy_entry(pattern: &str, item: &Value) -> (String, Result<Value, String>) {
    let path = format!("proxy[{}]", Value::String(pattern.to_string()));
    let mut obj = match item {
        Value::String(target) => Map::from_iter([("target".to_string(), Value::String(target.clone()))]),
        Value::Object(o) => o.clone(),
        other => return (path, Err(format!("expected a target URL or a rule map, found {}", describe(other)))),
    };
    if obj.contains_key("pattern") {
        let msg = "the map form takes the pattern from the key; remove `pattern` or use the list form";
        return (path, Err(msg.to_string()));
    }
    obj.insert("pattern".into(), Value::String(pattern.to_string()));
    (path, Ok(Value::Object(obj)))
}

/// The compiled rule set of an app's `proxy` rules (already validated when the manifest was
/// read). Fails only when the rules cannot be compiled together (a size limit).
pub fn compile(specs: &[RuleSpec]) -> Result<RuleSet, marina_core::Error> {
    let policy = TargetPolicy::default();
    let mut rules = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let id = spec.id.clone().unwrap_or_else(|| format!("static-{i}"));
        let rule = Rule::compile(id, spec.clone(), true, &policy).map_err(|e| e.within(&format!("proxy[{i}]")))?;
        rules.push(std::sync::Arc::new(rule));
    }
    RuleSet::new(rules, Vec::new()).map_err(|e| e.within("proxy").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_shapes_and_their_problems() {
        let (rules, problems) = parse(&json!([
            {"pattern": "^/api/(.*)$", "target": "http://127.0.0.1:4000", "rewrite": "/$1"},
            {"id": "mine", "pattern": "^/x", "target": "https://example.com"}
        ]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].id.as_deref(), Some("mine"));

        let (rules, problems) =
            parse(&json!({"^/api": "http://127.0.0.1:4000", "^/ws": {"target": "ws://h", "ws": true}}));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rules[0].pattern, "^/api");

        let (_, problems) = parse(&json!([
            {"pattern": "(", "target": "http://a"},
            {"pattern": "^/", "target": "http://169.254.169.254"},
            {"pattern": "^/", "target": "http://a", "changeorigin": true},
            {"pattern": "^/", "target": "http://a", "ws": "yes"},
            "http://a"
        ]));
        let paths: Vec<_> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(paths, ["proxy[0].pattern", "proxy[1].target", "proxy[2].changeorigin", "proxy[3].ws", "proxy[4]"]);
    }
}
