//! `publicRoutes` of a rule: which paths auth plugins let through without credentials.
//!
//! Buntime's glob dialect (§5.6 of the reference): `*` is one path segment's worth of
//! characters, `**` anything, `?` one character, and a pattern starting with `(` is a raw
//! regular expression. The globs are compiled into one anchored [`RegexSet`] per method.

use std::collections::BTreeMap;

use regex::RegexSet;

use super::spec::PublicRoutesSpec;

/// Methods `publicRoutes` may name.
const METHODS: [&str; 8] = ["ALL", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Compiled `publicRoutes`.
#[derive(Debug, Clone)]
pub struct PublicRoutes {
    by_method: BTreeMap<String, RegexSet>,
}

impl PublicRoutes {
    /// Compiles the spec; the error names the bad entry (`publicRoutes.GET[1]`).
    pub fn compile(spec: &PublicRoutesSpec) -> Result<Self, (String, String)> {
        let lists: Vec<(String, &Vec<String>)> = match spec {
            PublicRoutesSpec::All(list) => vec![("ALL".to_string(), list)],
            PublicRoutesSpec::ByMethod(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        };
        let mut by_method = BTreeMap::new();
        for (method, globs) in lists {
            let field = if matches!(spec, PublicRoutesSpec::All(_)) {
                "publicRoutes".to_string()
            } else {
                format!("publicRoutes.{method}")
            };
            if !METHODS.contains(&method.as_str()) {
                return Err((field, format!("'{method}' is not one of {}", METHODS.join(", "))));
            }
            let mut regexes = Vec::with_capacity(globs.len());
            for (i, glob) in globs.iter().enumerate() {
                if glob.is_empty() || glob.len() > 1024 {
                    return Err((format!("{field}[{i}]"), "must be 1 to 1024 characters".into()));
                }
                let re = glob_to_regex(glob);
                if let Err(e) = regex::Regex::new(&re) {
                    return Err((format!("{field}[{i}]"), format!("'{glob}' is not a valid pattern: {e}")));
                }
                regexes.push(re);
            }
            let set = RegexSet::new(&regexes).map_err(|e| (field.clone(), e.to_string()))?;
            by_method.insert(method, set);
        }
        Ok(Self { by_method })
    }

    /// Whether `path` is public for `method`: the `ALL` list or the method's own.
    pub fn is_public(&self, path: &str, method: &str) -> bool {
        ["ALL", method].iter().any(|m| self.by_method.get(*m).is_some_and(|set| set.is_match(path)))
    }
}

/// `/api/*/x` → `^/api/[^/]*/x$`; `(…)` patterns are taken as written.
fn glob_to_regex(glob: &str) -> String {
    if glob.starts_with('(') {
        return format!("^(?:{glob})$");
    }
    let mut out = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push_str(".*");
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push('.'),
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_buntime() {
        let p = PublicRoutes::compile(&PublicRoutesSpec::ByMethod(BTreeMap::from([
            ("ALL".into(), vec!["/health".into(), "/pub/**".into()]),
            ("GET".into(), vec!["/items/*".into(), "(/v[0-9]+/docs)".into()]),
        ])))
        .unwrap();
        assert!(p.is_public("/health", "POST"));
        assert!(p.is_public("/pub/a/b", "DELETE"));
        assert!(p.is_public("/items/3", "GET"));
        assert!(!p.is_public("/items/3/x", "GET"));
        assert!(!p.is_public("/items/3", "POST"));
        assert!(p.is_public("/v2/docs", "GET"));
        assert!(!p.is_public("/health.x", "GET"), "'.' is literal");
    }

    #[test]
    fn bad_entries_are_named() {
        let e =
            PublicRoutes::compile(&PublicRoutesSpec::ByMethod(BTreeMap::from([("FETCH".into(), vec![])]))).unwrap_err();
        assert_eq!(e.0, "publicRoutes.FETCH");
        let e = PublicRoutes::compile(&PublicRoutesSpec::All(vec!["/a".into(), "(unclosed".into()])).unwrap_err();
        assert_eq!(e.0, "publicRoutes[1]");
    }
}
