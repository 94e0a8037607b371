//! Buntime-compatibility details of `/keyval/api` through a real server (the bundled keyval
//! plugin, the root key as an admin caller): a wrong method on the DLQ routes is 405 with
//! `Allow`, `true`/`false` URL segments stay strings as in Buntime, and `sum`/`min`/`max` on a
//! value written in Buntime's bigint form (`{"__type":"bigint","value":"10"}`) answer 200 with an
//! exact bigint.

mod common;

use serde_json::{Value, json};

const ROOT: &str = "a-root-key-for-the-keyval-tests";

async fn send(method: &str, url: String, body: Option<Value>) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url).header("x-api-key", ROOT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let allow = resp.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), allow)
}

async fn server() -> (common::Running, tempfile::TempDir) {
    let apps = tempfile::tempdir().unwrap();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_PLUGIN_DIRS", common::bundled_plugins()).set("RUNTIME_ROOT_KEY", ROOT);
    })
    .await;
    (srv, apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_routes_answer_405_to_a_wrong_method() {
    let (srv, _apps) = server().await;
    let api = format!("{}/keyval/api", srv.base);
    for (method, path, allow) in [
        ("POST", "/queue/dlq", "GET, DELETE"),
        ("PUT", "/queue/dlq", "GET, DELETE"),
        ("POST", "/queue/dlq/some-id", "GET, DELETE"),
        ("PATCH", "/queue/dlq/some-id", "GET, DELETE"),
        ("GET", "/queue/dlq/some-id/requeue", "POST"),
        ("DELETE", "/queue/dlq/some-id/requeue", "POST"),
    ] {
        let (status, body, allowed) = send(method, format!("{api}{path}"), None).await;
        assert_eq!((status, body["code"].as_str()), (405, Some("METHOD_NOT_ALLOWED")), "{method} {path}: {body}");
        assert_eq!(allowed.as_deref(), Some(allow), "{method} {path}");
    }
    // Right methods still work; an unknown shape is still 404.
    assert_eq!(send("GET", format!("{api}/queue/dlq"), None).await.0, 200);
    assert_eq!(send("DELETE", format!("{api}/queue/dlq/some-id"), None).await.0, 200);
    let (status, body, _) = send("GET", format!("{api}/queue/dlq/a/b/c"), None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")), "{body}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_segments_true_and_false_stay_strings() {
    let (srv, _apps) = server().await;
    let api = format!("{}/keyval/api", srv.base);
    assert_eq!(send("PUT", format!("{api}/keys/flags/true/7"), Some(json!({"on": 1}))).await.0, 200);
    let (status, entry, _) = send("GET", format!("{api}/keys/flags/true/7"), None).await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["key"], json!(["flags", "true", 7]));
    // The same key through JSON, with the string part: found; with a boolean part: another key.
    let (_, found, _) =
        send("POST", format!("{api}/keys/batch"), Some(json!({"keys": [["flags", "true", 7], ["flags", true, 7]]})))
            .await;
    assert_eq!(found[0]["value"], json!({"on": 1}), "{found}");
    assert_eq!(found[1]["value"], Value::Null, "{found}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sum_min_max_on_a_buntime_bigint_are_exact() {
    let (srv, _apps) = server().await;
    let api = format!("{}/keyval/api", srv.base);
    let big = |s: &str| json!({"__type": "bigint", "value": s});
    for (kind, operand, expected) in [("sum", json!(5), "15"), ("max", json!(20), "20"), ("min", json!(5), "5")] {
        let key = format!("{kind}-test-key");
        assert_eq!(send("PUT", format!("{api}/keys/{key}"), Some(big("10"))).await.0, 200);
        let (status, body, _) = send(
            "POST",
            format!("{api}/atomic"),
            Some(json!({"mutations": [{"type": kind, "key": [key], "value": operand}]})),
        )
        .await;
        assert_eq!((status, body["ok"].clone()), (200, json!(true)), "{kind}: {body}");
        let (_, entry, _) = send("GET", format!("{api}/keys/{key}"), None).await;
        assert_eq!(entry["value"], big(expected), "{kind}: {entry}");
    }
    // Past 64 bits, exactly; a bigint operand on a plain number too.
    assert_eq!(send("PUT", format!("{api}/keys/n"), Some(json!(i64::MAX))).await.0, 200);
    let (status, _, _) = send(
        "POST",
        format!("{api}/atomic"),
        Some(json!({"mutations": [{"type": "sum", "key": ["n"], "value": big("1")}]})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, entry, _) = send("GET", format!("{api}/keys/n"), None).await;
    assert_eq!(entry["value"], big("9223372036854775808"));
    // Bad operands name the field.
    let (status, body, _) = send(
        "POST",
        format!("{api}/atomic"),
        Some(json!({"mutations": [{"type": "sum", "key": ["n"], "value": big("12x")}]})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("KV_ATOMIC_INVALID")), "{body}");
    assert_eq!(body["data"]["path"], "mutations[0].value", "{body}");
    srv.stop().await;
}

/// Buntime's server/index.test.ts reads `error` and looks for these words in it; marina's codes
/// and `data.path` stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_carry_buntimes_words() {
    let (srv, _apps) = server().await;
    let api = format!("{}/keyval/api", srv.base);
    let (status, body, _) = send("GET", format!("{api}/keys/nonexistent/key"), None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("Key not found")), "{body}");
    let atomic = |kind: &str| json!({"mutations": [{"type": kind, "key": ["arr"], "value": "not-array"}]});
    let deep = vec!["part"; 21].join("/");
    let long = "a".repeat(1025);
    let many: Vec<Value> = (0..1001).map(|i| json!(["k", i])).collect();
    for (method, path, body, words) in [
        ("GET", format!("/keys/{deep}"), None, "Key too deep"),
        ("GET", format!("/keys/{long}"), None, "Key part too long"),
        ("GET", "/keys?limit=0".to_string(), None, "limit must be a positive number"),
        ("PUT", "/keys/x?expiresIn=0".to_string(), Some(json!(1)), "expiresIn must be a positive number"),
        ("POST", "/keys/batch".to_string(), Some(json!({"keys": many})), "Too many keys: 1001"),
        ("POST", "/keys/batch".to_string(), Some(json!({"keys": []})), "keys must be a non-empty array"),
    ]
    .into_iter()
    .chain(
        [
            ("POST", "/atomic", Some(atomic("append")), "append value must be an array"),
            ("POST", "/atomic", Some(atomic("prepend")), "prepend value must be an array"),
            ("POST", "/queue/ack", Some(json!({"id": 123})), "id must be a non-empty string"),
            ("POST", "/queue/ack", Some(json!({"id": ""})), "id must be a non-empty string"),
            ("POST", "/queue/nack", Some(json!({"id": null})), "id must be a non-empty string"),
            ("POST", "/indexes", Some(json!({"prefix": ["posts"], "options": {}})), "fields must be a non-empty array"),
            ("POST", "/indexes", Some(json!({"prefix": ["posts"], "options": {"fields": []}})), "At least one field"),
            ("DELETE", "/indexes", None, "prefix"),
            ("GET", "/search?query=test", None, "prefix"),
            ("GET", "/search?prefix=posts", None, "query"),
            ("GET", "/watch", None, "keys"),
            ("GET", "/watch/poll", None, "keys"),
            ("GET", "/watch/prefix", None, "prefix"),
            ("GET", "/watch/prefix/poll", None, "prefix"),
        ]
        .map(|(m, p, b, w)| (m, p.to_string(), b, w)),
    ) {
        let (status, answer, _) = send(method, format!("{api}{path}"), body.clone()).await;
        assert_eq!(status, 400, "{method} {path} {body:?}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{method} {path} {body:?}: {answer}");
        assert!(answer["code"].as_str().is_some_and(|c| !c.is_empty()), "{answer}");
    }
    srv.stop().await;
}
