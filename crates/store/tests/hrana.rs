//! The Hrana executor on both backends (an app's real SQLite file, an app schema on a real
//! PostgreSQL): statements and typed values, batches with conditions, transactions across
//! requests with batons, stored SQL, errors as results, bad bodies, expired batons, and the
//! SQLite confinement (no ATTACH).

mod common;

use common::test_dbs;
use marina_store::hrana::{Hrana, to_buntime_shape};
use serde_json::{Value as Json, json};

fn exec(sql: &str, args: Json) -> Json {
    json!({ "type": "execute", "stmt": { "sql": sql, "args": args } })
}

fn int(i: i64) -> Json {
    json!({ "type": "integer", "value": i.to_string() })
}

fn text(s: &str) -> Json {
    json!({ "type": "text", "value": s })
}

fn ok_result(resp: &Json, i: usize) -> &Json {
    let r = &resp["results"][i];
    assert_eq!(r["type"], "ok", "result {i}: {r}");
    &r["response"]["result"]
}

#[tokio::test]
async fn statements_batches_and_transactions() {
    for db in test_dbs().await {
        let h = Hrana::new(db.app_store("todo").await);
        let pg = db.is_pg();
        let id_type = if pg { "BIGSERIAL PRIMARY KEY" } else { "INTEGER PRIMARY KEY" };
        let blob = if pg { "BYTEA" } else { "BLOB" };
        let r = h
            .pipeline(&json!({ "requests": [
                exec(&format!("CREATE TABLE items (id {id_type}, name TEXT UNIQUE NOT NULL, n BIGINT, f DOUBLE PRECISION, b {blob})"), json!([])),
                exec("INSERT INTO items (name, n, f, b) VALUES (?, ?, ?, ?)", json!([text("a"), int(9007199254740993), {"type": "float", "value": 1.5}, {"type": "blob", "base64": "AP8="}])),
                exec("SELECT name, n, f, b FROM items", json!([])),
                exec("INSERT INTO items (name) VALUES (?)", json!([text("a")])),
                {"type": "close"}
            ]}))
            .await
            .unwrap();
        assert_eq!(r["baton"], Json::Null, "closed");
        assert_eq!(ok_result(&r, 1)["affected_row_count"], 1);
        if !pg {
            assert_eq!(ok_result(&r, 1)["last_insert_rowid"], "1");
        }
        let sel = ok_result(&r, 2);
        assert_eq!(sel["cols"][0]["name"], "name");
        assert_eq!(
            sel["rows"][0],
            json!([text("a"), int(9007199254740993), {"type": "float", "value": 1.5}, {"type": "blob", "base64": "AP8="}])
        );
        // A constraint violation is a result, with SQLite's code on both backends.
        assert_eq!(r["results"][3]["type"], "error");
        assert_eq!(r["results"][3]["error"]["code"], "SQLITE_CONSTRAINT_UNIQUE", "{}", r["results"][3]);

        // A transaction across requests: BEGIN on one stream, its write invisible to another
        // stream until COMMIT.
        let t = h.pipeline(&json!({ "requests": [exec("BEGIN IMMEDIATE", json!([])), exec("INSERT INTO items (name) VALUES ('tx')", json!([])), {"type": "get_autocommit"}] })).await.unwrap();
        assert_eq!(t["results"][2]["response"]["is_autocommit"], false, "{t}");
        let baton = t["baton"].as_str().unwrap().to_string();
        if pg {
            // On SQLite the transaction holds the one connection; PostgreSQL shows isolation.
            let other = h
                .pipeline(
                    &json!({ "requests": [exec("SELECT COUNT(*) AS c FROM items", json!([])), {"type": "close"}] }),
                )
                .await
                .unwrap();
            assert_eq!(ok_result(&other, 0)["rows"][0][0], int(1));
        }
        let t2 = h.pipeline(&json!({ "baton": baton, "requests": [exec("COMMIT", json!([])), {"type": "get_autocommit"}, {"type": "close"}] })).await.unwrap();
        assert_eq!(t2["results"][1]["response"]["is_autocommit"], true, "{t2}");
        // The baton was good for one request only.
        let err = h.pipeline(&json!({ "baton": baton, "requests": [] })).await.unwrap_err();
        assert_eq!(err.code(), "HRANA_STREAM_EXPIRED");

        // A batch as @libsql/client sends it: BEGIN, steps each on the previous one's success,
        // COMMIT, and ROLLBACK when COMMIT did not run. The failing step rolls everything back.
        let step = |sql: &str, cond: Json| json!({ "stmt": { "sql": sql }, "condition": cond });
        let b = h
            .pipeline(&json!({ "requests": [{ "type": "batch", "batch": { "steps": [
                { "stmt": { "sql": "BEGIN" } },
                step("INSERT INTO items (name) VALUES ('b1')", json!({"type": "ok", "step": 0})),
                step("INSERT INTO items (name) VALUES ('a')", json!({"type": "ok", "step": 1})),
                step("COMMIT", json!({"type": "ok", "step": 2})),
                step("ROLLBACK", json!({"type": "not", "cond": {"type": "ok", "step": 3}})),
            ]}}, {"type": "close"}]}))
            .await
            .unwrap();
        let res = &b["results"][0]["response"]["result"];
        assert!(res["step_errors"][2]["message"].is_string(), "{res}");
        assert_eq!(res["step_results"][3], Json::Null, "COMMIT skipped");
        assert!(res["step_results"][4].is_object(), "ROLLBACK ran: {res}");
        let c = h
            .pipeline(
                &json!({ "requests": [exec("SELECT name FROM items ORDER BY name", json!([])), {"type": "close"}] }),
            )
            .await
            .unwrap();
        assert_eq!(ok_result(&c, 0)["rows"], json!([[text("a")], [text("tx")]]), "b1 was rolled back");

        // Stored SQL, sequence, describe.
        let s = h
            .pipeline(&json!({ "requests": [
                {"type": "store_sql", "sql_id": 1, "sql": "SELECT name FROM items WHERE name = ?"},
                {"type": "execute", "stmt": {"sql_id": 1, "args": [text("tx")]}},
                {"type": "sequence", "sql": "CREATE TABLE s1 (x BIGINT); INSERT INTO s1 VALUES (1); INSERT INTO s1 VALUES (2)"},
                {"type": "describe", "sql": "SELECT x FROM s1 WHERE x > ?"},
                {"type": "close_sql", "sql_id": 1},
                {"type": "execute", "stmt": {"sql_id": 1}},
                {"type": "close"}
            ]}))
            .await
            .unwrap();
        assert_eq!(ok_result(&s, 1)["rows"][0][0], text("tx"));
        assert_eq!(s["results"][2]["type"], "ok", "{}", s["results"][2]);
        let d = ok_result(&s, 3);
        assert_eq!((d["params"].as_array().unwrap().len(), d["is_readonly"].clone()), (1, json!(true)), "{d}");
        assert_eq!(s["results"][5]["error"]["code"], "SQL_NOT_FOUND");

        // Buntime's shape: result directly under each item.
        let bshape = to_buntime_shape(
            h.pipeline(&json!({ "requests": [exec("SELECT 40 + 2 AS answer", json!([]))] })).await.unwrap(),
        );
        assert_eq!(bshape["results"][0]["result"]["rows"][0][0], int(42), "{bshape}");
    }
}

#[tokio::test]
async fn bad_bodies_and_sql_errors_are_clear() {
    for db in test_dbs().await {
        let h = Hrana::new(db.app_store("bad").await);
        let err = h.pipeline(&json!({ "requests": [{"type": "explode"}] })).await.unwrap_err();
        assert_eq!((err.status().as_u16(), err.code()), (400, "HRANA_PROTO"));
        assert!(err.message().starts_with("requests[0]"), "{}", err.message());
        let err = h.pipeline(&json!({ "requests": [exec("SELECT ?", json!([{"type": "integer", "value": "x"}])), {"type": "close"}] })).await.unwrap();
        assert_eq!(err["results"][0]["error"]["code"], "ARGS_INVALID");
        assert!(h.pipeline(&json!({"baton": 5, "requests": []})).await.is_err());
        let r = h.pipeline(&json!({ "requests": [exec("selec nonsense", json!([])), exec("SELECT 1", json!([])), {"type": "close"}] })).await.unwrap();
        assert_eq!(r["results"][0]["type"], "error");
        assert_eq!(r["results"][0]["error"]["code"], "SQLITE_ERROR");
        assert_eq!(r["results"][1]["type"], "ok", "a failed statement does not stop the pipeline");
        let r = h
            .pipeline(&json!({ "requests": [exec("SELECT 1; SELECT 2", json!([])), {"type": "close"}] }))
            .await
            .unwrap();
        assert_eq!(r["results"][0]["type"], "error", "{r}");
        if !db.is_pg() {
            // The app's SQL cannot reach another database file.
            let target = db.state_dir().join("marina.db");
            let r = h
                .pipeline(&json!({ "requests": [exec(&format!("ATTACH DATABASE '{}' AS m", target.display()), json!([])), {"type": "close"}] }))
                .await
                .unwrap();
            assert_eq!(r["results"][0]["type"], "error", "{r}");
            assert!(r["results"][0]["error"]["message"].as_str().unwrap().contains("too many attached"), "{r}");
        }
        assert_eq!(h.open_streams().await, 0);
    }
}

#[tokio::test]
async fn an_abandoned_transaction_is_rolled_back() {
    for db in test_dbs().await {
        let h = Hrana::new(db.app_store("gone").await);
        let t = h
            .pipeline(&json!({ "requests": [exec("CREATE TABLE t (x BIGINT)", json!([])), exec("BEGIN", json!([])), exec("INSERT INTO t VALUES (1)", json!([]))] }))
            .await
            .unwrap();
        assert!(t["baton"].is_string());
        // The client vanishes. Within the idle timeout (10 s) plus a reaper tick, the stream
        // is dropped, its transaction rolled back, and the database usable again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            if h.open_streams().await == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the stream never expired");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let r = h
            .pipeline(&json!({ "requests": [exec("SELECT COUNT(*) FROM t", json!([])), {"type": "close"}] }))
            .await
            .unwrap();
        assert_eq!(ok_result(&r, 0)["rows"][0][0], int(0), "{r}");
    }
}
