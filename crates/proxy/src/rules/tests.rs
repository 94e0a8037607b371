use std::collections::BTreeMap;

use super::*;

fn spec(pattern: &str, target: &str) -> RuleSpec {
    RuleSpec { pattern: pattern.into(), target: target.into(), ..Default::default() }
}

fn compile(s: RuleSpec) -> Result<Rule, RuleError> {
    let policy = TargetPolicy::new(vec!["127.0.0.1:8000".parse().unwrap()], vec![]);
    Rule::compile("r".into(), s, false, &policy)
}

fn field_of(s: RuleSpec) -> (String, String) {
    let e = compile(s).expect_err("must be refused");
    (e.field, e.message)
}

#[test]
fn bad_rules_name_the_field() {
    let cases: Vec<(RuleSpec, &str, &str)> = vec![
        (spec("", "http://a"), "pattern", "required"),
        (spec("(", "http://a"), "pattern", "not a valid regular expression"),
        (spec("^/(?=x)", "http://a"), "pattern", "look-around"),
        (spec(r"^/(a)\1", "http://a"), "pattern", "backreferences"),
        (spec(&"a".repeat(MAX_PATTERN_LEN + 1), "http://a"), "pattern", "longer than"),
        (spec("a{1000}{1000}", "http://a"), "pattern", "compiles to more than"),
        (spec("^/", ""), "target", "required"),
        (spec("^/", "not a url"), "target", "not a URL"),
        (spec("^/", "example.com"), "target", "no scheme"),
        (spec("^/", "ftp://example.com"), "target", "scheme 'ftp'"),
        (spec("^/", "http://u:p@example.com"), "target", "credentials"),
        (spec("^/", "http://example.com/?a=1"), "target", "query string"),
        (spec("^/", "http://example.com/#x"), "target", "fragment"),
        (spec("^/", "http://169.254.169.254/latest"), "target", "metadata"),
        (spec("^/", "http://[fe80::1]:80"), "target", "link-local"),
        (spec("^/", "http://127.0.0.1:8000"), "target", "marina's own listener"),
        (spec("^/", "http://localhost:8000"), "target", "marina's own listener"),
        (RuleSpec { rewrite: Some("/$2".into()), ..spec("^/(a)", "http://a") }, "rewrite", "1 capture group"),
        (
            RuleSpec { headers: Some(BTreeMap::from([("bad name".into(), "v".into())])), ..spec("^/", "http://a") },
            "headers.bad name",
            "header name",
        ),
        (
            RuleSpec { headers: Some(BTreeMap::from([("x-a".into(), "a\nb".into())])), ..spec("^/", "http://a") },
            "headers.x-a",
            "header value",
        ),
        (
            RuleSpec { headers: Some(BTreeMap::from([("Host".into(), "h".into())])), ..spec("^/", "http://a") },
            "headers.Host",
            "changeOrigin",
        ),
        (RuleSpec { base: Some("\"><script>".into()), ..spec("^/", "http://a") }, "base", "HTML attribute"),
        (
            RuleSpec { public_routes: Some(PublicRoutesSpec::All(vec!["".into()])), ..spec("^/", "http://a") },
            "publicRoutes[0]",
            "1 to 1024",
        ),
    ];
    for (s, field, needle) in cases {
        let (f, m) = field_of(s.clone());
        assert_eq!(f, field, "{s:?}: {m}");
        assert!(m.contains(needle), "{s:?}: '{m}' should mention '{needle}'");
    }
}

#[test]
fn catastrophic_patterns_compile_and_run_in_linear_time() {
    // `(a+)+$` backtracks exponentially in JavaScript; here it is a plain automaton.
    let rule = compile(spec("^(a+)+$", "http://a")).unwrap();
    let path = format!("{}!", "a".repeat(50_000));
    assert!(!rule.matches(&path));
}

#[test]
fn first_match_wins_manifest_first_then_order() {
    let policy = TargetPolicy::default();
    let mk = |id: &str, pattern: &str, order: i64, enabled: bool| {
        let s = RuleSpec { order: Some(order), enabled: Some(enabled), ..spec(pattern, "http://a") };
        Arc::new(Rule::compile(id.into(), s, false, &policy).unwrap())
    };
    let set = RuleSet::new(
        vec![mk("m1", "^/m/", 100, true), mk("m-off", "^/", 0, false)],
        vec![mk("d9", "^/", 9, true), mk("d1", "^/api/", 1, true), mk("d2", "^/api/x", 2, true)],
    )
    .unwrap();
    let ids: Vec<_> = set.rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m-off", "d1", "d2", "d9"]);
    assert_eq!(set.find("/m/1").unwrap().rule.id, "m1");
    assert_eq!(set.find("/api/x").unwrap().rule.id, "d1");
    assert_eq!(set.find("/other").unwrap().rule.id, "d9", "the disabled catch-all is skipped");
    assert!(RuleSet::default().find("/").is_none());
}

#[test]
fn upstream_uri_joins_target_path_rewrite_and_query() {
    let r = compile(RuleSpec { rewrite: Some("/v1/$1".into()), ..spec("^/api/(.*)$", "https://up.example/base/") })
        .unwrap();
    assert_eq!(r.upstream_uri("/api/a/b", Some("x=1&y")).unwrap().to_string(), "https://up.example/base/v1/a/b?x=1&y");
    let r = compile(spec("^/api", "ws://up:9000")).unwrap();
    assert_eq!(r.upstream_uri("/api/z", None).unwrap().to_string(), "http://up:9000/api/z");
    assert_eq!(r.target.host_header, "up:9000");
    assert_eq!(r.target.origin_header, "http://up:9000");
}

/// A rewrite that fills the start of the path from the request cannot move the host: the path
/// part always starts with `/`, so `@evil.example` stays in the path.
#[test]
fn a_rewritten_path_cannot_become_userinfo_and_a_host() {
    let r = compile(RuleSpec { rewrite: Some("$1".into()), ..spec("^/api/(.*)$", "http://up:9000") }).unwrap();
    let uri = r.upstream_uri("/api/@evil.example/x", None).unwrap();
    assert_eq!(uri.authority().unwrap().as_str(), "up:9000");
    assert_eq!(uri.to_string(), "http://up:9000/@evil.example/x");
}

#[test]
fn spec_json_matches_buntime_and_refuses_unknown_fields() {
    let s: RuleSpec = serde_json::from_str(
        r#"{"name":"ext","pattern":"^/ext/(.*)$","target":"http://127.0.0.1:9","rewrite":"/v1/$1","readonly":true}"#,
    )
    .unwrap();
    assert_eq!(s.rewrite.as_deref(), Some("/v1/$1"));
    let back = serde_json::to_value(&s).unwrap();
    assert_eq!(
        back,
        serde_json::json!({"name":"ext","pattern":"^/ext/(.*)$","target":"http://127.0.0.1:9","rewrite":"/v1/$1"})
    );
    let e =
        serde_json::from_str::<RuleSpec>(r#"{"pattern":"^/","target":"http://a","changeorigin":true}"#).unwrap_err();
    assert!(e.to_string().contains("changeorigin"), "{e}");
}
