//! The key-value engine on both backends (real SQLite file, real PostgreSQL): CRUD, ordering,
//! pagination, where-filters, atomic commits under many concurrent clients, expiry, queues and
//! the DLQ, watchers (also across two engines on one PostgreSQL database), and bad input.

mod common;

use std::time::{Duration, Instant};

use common::test_dbs;
use marina_store::kv::queue::{EnqueueOptions, Nacked};
use marina_store::kv::{Check, Filter, Key, KeyPart, Kv, KvLimits, ListOptions, Mutation, MutationKind, Selector};
use serde_json::json;

fn k(parts: &[serde_json::Value]) -> Key {
    marina_store::kv::key::key_from_json(&json!(parts), "key").unwrap()
}

fn s(x: &str) -> KeyPart {
    KeyPart::String(x.into())
}

async fn kv_for(db: &common::TestDb, limits: KvLimits) -> Kv {
    let store = db.store().await;
    store.migrate_system().await.unwrap();
    Kv::open(store, limits).await.unwrap()
}

/// Poll `check` until it holds or a generous deadline passes.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn crud_list_count_and_pagination() {
    for db in test_dbs().await {
        let kv = kv_for(&db, KvLimits::default()).await;
        let ns = kv.ns("app_a");
        let vs = ns.set(k(&[json!("users"), json!(1)]), json!({"name": "ada", "age": 36}), None).await.unwrap();
        let e = ns.get(&k(&[json!("users"), json!(1)])).await.unwrap().unwrap();
        assert_eq!(e.versionstamp, vs);
        assert_eq!(e.to_json()["key"], json!(["users", 1]));
        for i in 2..=12 {
            ns.set(k(&[json!("users"), json!(i)]), json!({"name": format!("u{i}"), "age": i}), None).await.unwrap();
        }
        // A neighbour whose string extends "users": not under the prefix ["users"].
        ns.set(k(&[json!("usersx"), json!(1)]), json!(0), None).await.unwrap();
        ns.set(k(&[json!("users")]), json!("the prefix key itself"), None).await.unwrap();
        // Another namespace sees none of it.
        assert!(kv.ns("app_b").get(&k(&[json!("users"), json!(1)])).await.unwrap().is_none());

        let prefix = Selector { prefix: Some(vec![s("users")]), ..Default::default() };
        assert_eq!(ns.count(&prefix, None).await.unwrap(), 12, "{:?}", db.kind);
        let page =
            ns.list(&ListOptions { selector: prefix.clone(), limit: Some(5), ..Default::default() }).await.unwrap();
        let ids: Vec<_> = page.entries.iter().map(|e| e.key[1].clone()).collect();
        assert_eq!(ids, (1..=5).map(|i| KeyPart::Number(i as f64)).collect::<Vec<_>>());
        assert!(page.has_more);
        // Walk every page forwards and backwards.
        for reverse in [false, true] {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let p = ns
                    .list(&ListOptions {
                        selector: prefix.clone(),
                        limit: Some(5),
                        reverse,
                        cursor: cursor.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                seen.extend(p.entries.iter().map(|e| e.key[1].clone()));
                match p.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let mut want: Vec<_> = (1..=12).map(|i| KeyPart::Number(i as f64)).collect();
            if reverse {
                want.reverse();
            }
            assert_eq!(seen, want, "reverse={reverse} {:?}", db.kind);
        }
        // start/end within the prefix.
        let range = Selector {
            prefix: Some(vec![s("users")]),
            start: Some(k(&[json!("users"), json!(3)])),
            end: Some(k(&[json!("users"), json!(6)])),
        };
        let p = ns.list(&ListOptions { selector: range, ..Default::default() }).await.unwrap();
        assert_eq!(p.entries.len(), 3);
        // Where-filters, over more than one scan chunk.
        let f = Filter::parse(&json!({"age": {"$gte": 10}}), "where").unwrap();
        let p = ns
            .list(&ListOptions {
                selector: prefix.clone(),
                filter: Some(f.clone()),
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p.entries.len(), 2);
        assert!(p.has_more);
        // ages 10, 11, 12 and ada's 36.
        assert_eq!(ns.count(&prefix, Some(&f)).await.unwrap(), 4);
        // Batch get keeps order and reports absent keys.
        let got = ns.get_many(&[k(&[json!("users"), json!(2)]), k(&[json!("nope")])]).await.unwrap();
        assert!(got[0].is_some() && got[1].is_none());
        // Delete with a filter, then exact, then with descendants.
        assert_eq!(ns.delete(&[s("users")], false, Some(&f)).await.unwrap(), 4);
        assert_eq!(ns.delete(&[s("users")], true, None).await.unwrap(), 1);
        assert_eq!(ns.count(&prefix, None).await.unwrap(), 8);
        ns.set(k(&[json!("users")]), json!(1), None).await.unwrap();
        assert_eq!(ns.delete(&[s("users")], false, None).await.unwrap(), 9);
        assert_eq!(ns.count(&Selector::default(), None).await.unwrap(), 1, "only usersx is left");
    }
}

#[tokio::test]
async fn atomic_checks_and_mutations() {
    for db in test_dbs().await {
        let kv = kv_for(&db, KvLimits::default()).await;
        let ns = kv.ns("a");
        let key = k(&[json!("doc")]);
        let vs1 = ns
            .atomic(
                vec![Check { key: key.clone(), versionstamp: None }],
                vec![Mutation { key: key.clone(), kind: MutationKind::Set(json!([1])), expire_in: None }],
            )
            .await
            .unwrap()
            .expect("absent check holds");
        // The same check fails now: nothing is written.
        let failed = ns
            .atomic(
                vec![Check { key: key.clone(), versionstamp: None }],
                vec![Mutation { key: key.clone(), kind: MutationKind::Set(json!("lost")), expire_in: None }],
            )
            .await
            .unwrap();
        assert!(failed.is_none());
        let m = |kind| Mutation { key: key.clone(), kind, expire_in: None };
        ns.atomic(
            vec![Check { key: key.clone(), versionstamp: Some(vs1) }],
            vec![m(MutationKind::Append(json!([2, 3]))), m(MutationKind::Prepend(json!([0])))],
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ns.get(&key).await.unwrap().unwrap().value, json!([0, 1, 2, 3]));
        let n = k(&[json!("n")]);
        let mn = |kind| Mutation { key: n.clone(), kind, expire_in: None };
        ns.atomic(
            vec![],
            vec![mn(MutationKind::Sum(json!(5))), mn(MutationKind::Max(json!(3))), mn(MutationKind::Min(json!(4)))],
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ns.get(&n).await.unwrap().unwrap().value, json!(4));
        // sum on an array is a clear conflict, and nothing of that commit is applied.
        let err = ns.atomic(vec![], vec![mn(MutationKind::Delete), m(MutationKind::Sum(json!(1)))]).await.unwrap_err();
        assert_eq!(err.code(), "KV_TYPE_MISMATCH");
        assert_eq!(err.status().as_u16(), 409);
        assert!(ns.get(&n).await.unwrap().is_some(), "the delete before the failing sum rolled back");
    }
}

#[tokio::test]
async fn concurrent_sums_lose_no_update() {
    for db in test_dbs().await {
        // Two engines on one database (two marina instances on PostgreSQL; one file on SQLite).
        let kvs = [kv_for(&db, KvLimits::default()).await, kv_for(&db, KvLimits::default()).await];
        let clients = 16;
        let each = 20;
        let mut tasks = Vec::new();
        for c in 0..clients {
            let ns = kvs[c % 2].ns("counter_app");
            tasks.push(tokio::spawn(async move {
                for _ in 0..each {
                    ns.atomic(
                        vec![],
                        vec![Mutation { key: vec![s("hits")], kind: MutationKind::Sum(json!(1)), expire_in: None }],
                    )
                    .await
                    .unwrap()
                    .unwrap();
                }
            }));
        }
        // Read-check-write loops with versionstamp checks: retry until the check holds.
        let mut cas = Vec::new();
        for c in 0..4 {
            let ns = kvs[c % 2].ns("counter_app");
            cas.push(tokio::spawn(async move {
                for _ in 0..10 {
                    loop {
                        let cur = ns.get(&[s("cas")]).await.unwrap();
                        let (n, vs) = cur.map_or((0, None), |e| (e.value.as_i64().unwrap(), Some(e.versionstamp)));
                        let done = ns
                            .atomic(
                                vec![Check { key: vec![s("cas")], versionstamp: vs }],
                                vec![Mutation {
                                    key: vec![s("cas")],
                                    kind: MutationKind::Set(json!(n + 1)),
                                    expire_in: None,
                                }],
                            )
                            .await
                            .unwrap();
                        if done.is_some() {
                            break;
                        }
                    }
                }
            }));
        }
        for t in tasks.into_iter().chain(cas) {
            t.await.unwrap();
        }
        let ns = kvs[0].ns("counter_app");
        assert_eq!(ns.get(&[s("hits")]).await.unwrap().unwrap().value, json!(clients * each), "{:?}", db.kind);
        assert_eq!(ns.get(&[s("cas")]).await.unwrap().unwrap().value, json!(40), "{:?}", db.kind);
    }
}

#[tokio::test]
async fn expired_keys_are_never_returned_and_are_purged() {
    for db in test_dbs().await {
        let limits = KvLimits { purge_interval: Duration::from_millis(200), ..Default::default() };
        let kv = kv_for(&db, limits).await;
        let ns = kv.ns("exp");
        let set_at = Instant::now();
        ns.set(vec![s("short")], json!(1), Some(Duration::from_millis(300))).await.unwrap();
        ns.set(vec![s("long")], json!(2), Some(Duration::from_secs(3600))).await.unwrap();
        let got = ns.get(&[s("short")]).await.unwrap();
        assert!(got.is_some() || set_at.elapsed() >= Duration::from_millis(300));
        eventually("the short key to expire", async || ns.get(&[s("short")]).await.unwrap().is_none()).await;
        // Expiry is kept in whole milliseconds of the wall clock (`now_ms` truncates), so it may
        // come up to 1 ms before 300 ms of the monotonic clock have passed.
        assert!(set_at.elapsed() >= Duration::from_millis(298), "expired early: {:?}", set_at.elapsed());
        let all = ns.list(&ListOptions::default()).await.unwrap();
        assert_eq!(all.entries.len(), 1);
        // The purger removes the row itself within seconds.
        let store = kv.store().clone();
        eventually("the purger to delete the expired row", async || {
            let r =
                store.query_opt("SELECT COUNT(*) AS n FROM kv_entries WHERE ns = 'exp'", &[]).await.unwrap().unwrap();
            r.get::<i64>("n").unwrap() == 1
        })
        .await;
    }
}

#[tokio::test]
async fn queue_delivery_retries_and_dead_letters() {
    for db in test_dbs().await {
        let limits = KvLimits { queue_lock: Duration::from_millis(300), ..Default::default() };
        let kv = kv_for(&db, limits).await;
        let ns = kv.ns("q");
        // Delay: not delivered before its time.
        let id = ns
            .enqueue(
                &json!({"job": 1}),
                &EnqueueOptions {
                    delay: Duration::from_millis(300),
                    backoff: vec![50, 50],
                    keys_if_undelivered: vec![vec![s("failed"), s("job1")]],
                },
            )
            .await
            .unwrap();
        assert!(ns.dequeue().await.unwrap().is_none(), "delivered before its delay");
        let waited = Instant::now();
        let m1 = tokio::time::timeout(Duration::from_secs(20), ns.next_message()).await.unwrap().unwrap();
        assert!(waited.elapsed() >= Duration::from_millis(200));
        assert_eq!((m1.id.as_str(), m1.attempts), (id.as_str(), 1));
        assert_eq!(ns.queue_stats().await.unwrap().processing, 1);
        // nack → retried after the backoff; a lapsed lock counts as a failed attempt.
        assert_eq!(ns.nack(&id).await.unwrap(), Nacked::Retry(50));
        let m2 = tokio::time::timeout(Duration::from_secs(20), ns.next_message()).await.unwrap().unwrap();
        assert_eq!(m2.attempts, 2);
        assert_eq!(ns.nack(&id).await.unwrap(), Nacked::Retry(50));
        let m3 = tokio::time::timeout(Duration::from_secs(20), ns.next_message()).await.unwrap().unwrap();
        assert_eq!(m3.attempts, 3);
        assert_eq!(ns.nack(&id).await.unwrap(), Nacked::DeadLettered);
        let stats = ns.queue_stats().await.unwrap();
        assert_eq!((stats.pending, stats.processing, stats.dlq), (0, 0, 1));
        assert_eq!(ns.get(&[s("failed"), s("job1")]).await.unwrap().unwrap().value, json!({"job": 1}));
        let dl = ns.dlq_list(10, 0).await.unwrap();
        assert_eq!((dl.len(), dl[0].attempts), (1, 3));
        // Requeue from the DLQ, deliver, ack.
        let again = ns.dlq_requeue(&id).await.unwrap();
        let m = ns.dequeue().await.unwrap().unwrap();
        assert_eq!(m.id, again);
        ns.ack(&again).await.unwrap();
        assert_eq!(ns.ack(&again).await.unwrap_err().code(), "KV_MESSAGE_NOT_FOUND");
        // A consumer that dies: the lock lapses and the message comes back.
        let lost = ns.enqueue(&json!("x"), &EnqueueOptions { backoff: vec![], ..Default::default() }).await.unwrap();
        assert_eq!(ns.dequeue().await.unwrap().unwrap().id, lost);
        assert!(ns.dequeue().await.unwrap().is_none(), "locked");
        // With no retries left, the lapsed delivery goes to the DLQ instead of redelivery.
        eventually("the lapsed message to be dead-lettered", async || {
            ns.dequeue().await.unwrap();
            ns.queue_stats().await.unwrap().dlq == 1
        })
        .await;
        // A waiting consumer is woken by an enqueue (no polling: it would sleep 30 s otherwise).
        let waiter = {
            let ns = ns.clone();
            tokio::spawn(async move { ns.next_message().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let woke = Instant::now();
        ns.enqueue(&json!("wake"), &EnqueueOptions::default()).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(20), waiter).await.unwrap().unwrap().unwrap();
        assert_eq!(m.value, json!("wake"));
        assert!(woke.elapsed() < Duration::from_secs(15), "{:?}", db.kind);
    }
}

#[tokio::test]
async fn watchers_see_changes_also_from_another_engine() {
    for db in test_dbs().await {
        let a = kv_for(&db, KvLimits::default()).await;
        // On PostgreSQL a second engine (its own pool and LISTEN session) plays another marina
        // instance; on SQLite both are one process's view of one file, so use the same engine.
        let b = if db.is_pg() { kv_for(&db, KvLimits::default()).await } else { a.clone() };
        let mut w = a.ns("w").watch(vec![vec![s("x")], vec![s("y")]], true).await.unwrap();
        let first = w.next().await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|e| e.entry.is_none()));
        let mut pw = a.ns("w").watch_prefix(vec![s("p")], None, false).await.unwrap();
        // A write elsewhere (other namespace) must not wake the watcher with a false event.
        b.ns("other").set(vec![s("x")], json!(0), None).await.unwrap();
        b.ns("w").set(vec![s("x")], json!(1), None).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(20), w.next()).await.expect("a change in time").unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].entry.as_ref().unwrap().value, json!(1));
        b.ns("w").delete(&[s("x")], true, None).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(20), w.next()).await.unwrap().unwrap();
        assert!(ev[0].entry.is_none());
        b.ns("w").set(vec![s("p"), KeyPart::Number(1.0)], json!("a"), None).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(20), pw.next()).await.unwrap().unwrap();
        assert_eq!(ev[0].key, vec![s("p"), KeyPart::Number(1.0)]);
        b.ns("w").delete(&[s("p")], false, None).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(20), pw.next()).await.unwrap().unwrap();
        assert!(ev[0].entry.is_none(), "deletes under a prefix are reported with a null value");
        // Many watchers cost no queries while idle: they are all parked on the broadcast.
        let mut watchers = Vec::new();
        for i in 0..50 {
            watchers.push(a.ns("w").watch(vec![vec![s("many"), KeyPart::Number(i as f64)]], false).await.unwrap());
        }
        let handles: Vec<_> =
            watchers.into_iter().map(|mut w| tokio::spawn(async move { w.next().await.unwrap() })).collect();
        for i in 0..50 {
            b.ns("w").set(vec![s("many"), KeyPart::Number(i as f64)], json!(i), None).await.unwrap();
        }
        for h in handles {
            let ev = tokio::time::timeout(Duration::from_secs(30), h).await.unwrap().unwrap();
            assert_eq!(ev.len(), 1);
        }
    }
}

#[tokio::test]
async fn limits_and_bad_input_are_clear_errors_and_lose_nothing() {
    for db in test_dbs().await {
        let limits = KvLimits { max_value_bytes: 64, max_key_depth: 3, max_batch: 4, ..Default::default() };
        let kv = kv_for(&db, limits).await;
        let ns = kv.ns("bad");
        ns.set(vec![s("keep")], json!("safe"), None).await.unwrap();
        let err = ns.set(vec![s("keep")], json!("x".repeat(100)), None).await.unwrap_err();
        assert_eq!((err.status().as_u16(), err.code()), (413, "KV_VALUE_TOO_LARGE"));
        assert!(err.message().contains("maxValueSize"), "{}", err.message());
        assert_eq!(ns.get(&[s("keep")]).await.unwrap().unwrap().value, json!("safe"), "nothing lost");
        let err = ns.set(vec![s("a"), s("b"), s("c"), s("d")], json!(1), None).await.unwrap_err();
        assert_eq!((err.status().as_u16(), err.code()), (400, "KV_KEY_TOO_LARGE"));
        assert!(err.message().contains("maxKeyDepth"));
        let err = ns.set(vec![], json!(1), None).await.unwrap_err();
        assert_eq!(err.code(), "KV_KEY_INVALID");
        let keys: Vec<Key> = (0..5).map(|i| vec![KeyPart::Number(i as f64)]).collect();
        let err = ns.get_many(&keys).await.unwrap_err();
        assert!(err.message().contains("maxBatchSize"), "{}", err.message());
        let err = ns.list(&ListOptions { cursor: Some("%%%".into()), ..Default::default() }).await.unwrap_err();
        assert_eq!(err.code(), "KV_CURSOR_INVALID");
        let err = ns.list(&ListOptions { limit: Some(5000), ..Default::default() }).await.unwrap_err();
        assert!(err.message().contains("maxListLimit"));
        let err = marina_store::kv::atomic::parse_request(&json!({"mutations": [{"type": "explode", "key": ["a"]}]}))
            .unwrap_err();
        assert_eq!(err.data().unwrap()["path"], "mutations[0].type");
        let err = marina_store::kv::atomic::parse_request(
            &json!({"mutations": [{"type": "sum", "key": ["a"], "value": "x"}]}),
        )
        .unwrap();
        let (c, m) = err;
        let err = ns.atomic(c, m).await.unwrap_err();
        assert_eq!(err.code(), "KV_ATOMIC_INVALID");
        assert_eq!(ns.count(&Selector::default(), None).await.unwrap(), 1);
    }
}

#[tokio::test]
async fn search_indexes_on_both_backends() {
    for db in test_dbs().await {
        let kv = kv_for(&db, KvLimits::default()).await;
        let ns = kv.ns("search");
        for (i, t) in ["red apple pie", "green apple", "red wine", "blue sky"].iter().enumerate() {
            ns.set(k(&[json!("docs"), json!(i)]), json!({ "t": t, "n": i }), None).await.unwrap();
        }
        ns.set(k(&[json!("other"), json!(1)]), json!({ "t": "red apple" }), None).await.unwrap();
        let prefix = k(&[json!("docs")]);
        let e = ns.search(&prefix, "apple", None, None).await.unwrap_err();
        assert_eq!(e.code(), "KV_INDEX_NOT_FOUND", "{:?}", db.kind);
        ns.create_index(prefix.clone(), vec!["t".into()], None).await.unwrap();
        ns.create_index(prefix.clone(), vec!["t".into()], Some("porter".into())).await.unwrap();
        let idx = ns.list_indexes().await.unwrap();
        assert_eq!((idx.len(), idx[0].tokenize.as_deref()), (1, Some("porter")), "{:?}", db.kind);
        let keys = |es: Vec<marina_store::kv::Entry>| es.into_iter().map(|e| e.key).collect::<Vec<_>>();
        let found = keys(ns.search(&prefix, "RED apple", None, None).await.unwrap());
        assert_eq!(found, vec![k(&[json!("docs"), json!(0)])], "{:?}", db.kind);
        assert_eq!(ns.search(&prefix, "apple", Some(1), None).await.unwrap().len(), 1);
        let odd = Filter::parse(&json!({ "n": { "$gt": 0 } }), "where").unwrap();
        let found = keys(ns.search(&prefix, "re*", None, Some(&odd)).await.unwrap());
        assert_eq!(found, vec![k(&[json!("docs"), json!(2)])], "{:?}", db.kind);
        assert!(ns.remove_index(&prefix).await.unwrap());
        assert!(!ns.remove_index(&prefix).await.unwrap());
        assert!(kv.ns("elsewhere").list_indexes().await.unwrap().is_empty());
    }
}
