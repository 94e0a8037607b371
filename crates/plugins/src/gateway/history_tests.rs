//! The history's ring, sampler and storage (on SQLite and PostgreSQL).

use super::*;
use crate::gateway::history_db::{INSTANCE_FILE, RETENTION_MS, instance_id};
use crate::test_db::stores;

fn snap(ts: u64, total: u64) -> Snapshot {
    Snapshot { timestamp: ts, total_requests: total, blocked_requests: 0, allowed_requests: total, active_buckets: 1 }
}

fn times(snaps: &[Snapshot]) -> Vec<u64> {
    snaps.iter().map(|s| s.timestamp).collect()
}

#[test]
fn quiet_seconds_are_filled_when_read_and_not_kept() {
    let h = History::default();
    h.push(snap(1_000, 1));
    assert_eq!(h.push(snap(4_500, 2)), 2, "two snapshots wait to be written, no filler");
    let got = h.newest(10);
    assert_eq!(
        got.iter().map(|s| (s.timestamp, s.total_requests)).collect::<Vec<_>>(),
        [(4_500, 2), (3_500, 1), (2_500, 1), (1_000, 1)]
    );
    assert_eq!(h.newest(2).len(), 2);
    // Days of silence fill at most the capacity; the snapshot before them is only its source.
    h.push(snap(10_000_000, 3));
    let all = h.newest(usize::MAX);
    assert_eq!(all.len(), CAPACITY);
    assert_eq!((all[0].total_requests, all[CAPACITY - 1].total_requests), (3, 2));
    assert_eq!(h.ring.lock().entries.len(), 2, "the first snapshot is out of reach: dropped");
}

#[tokio::test]
async fn no_seconds_are_filled_across_runs_or_a_clock_stepped_back() {
    let h = History::default();
    h.push(snap(1_000, 1));
    h.clear().await.unwrap();
    assert!(h.newest(5).is_empty());
    // A previous run's snapshot (as `attach` leaves it): the downtime is not filled.
    h.ring.lock().entries.push_back(Entry { seq: 7, run: 1, snap: snap(1_000, 9) });
    h.push(snap(9_000, 0));
    assert_eq!(times(&h.newest(5)), [9_000, 1_000]);
    // The wall clock stepped back: kept in the order taken, nothing filled.
    h.push(snap(4_000, 1));
    assert_eq!(times(&h.newest(5)), [4_000, 9_000, 1_000]);
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_sampler_parks_when_idle_and_a_touch_wakes_it() {
    struct Owner {
        h: History,
        n: std::sync::atomic::AtomicU64,
    }
    let owner = Arc::new(Owner { h: History::default(), n: 0.into() });
    let take = |o: &Owner| Snapshot { timestamp: epoch_ms(), ..snap(0, o.n.load(Ordering::SeqCst)) };
    let stop = CancellationToken::new();
    let task = tokio::spawn(History::run(Arc::downgrade(&owner), |o: &Owner| &o.h, take, stop.clone()));
    // The first tick samples at once; the second finds nothing changed and parks.
    until("the sampler to park", || owner.h.parked.load(Ordering::SeqCst)).await;
    let before = owner.h.newest(100).len();
    assert!(before >= 2, "{before}");
    // Parked: no tick runs (a wait for something that must not happen has to be a wait).
    tokio::time::sleep(EVERY * 2).await;
    assert_eq!(owner.h.newest(100).len(), before, "parked: nothing sampled");
    owner.n.store(5, Ordering::SeqCst);
    owner.h.touch();
    until("a sample after the touch", || owner.h.newest(1)[0].total_requests == 5).await;
    // The seconds slept through are filled with the unchanged values.
    let all = owner.h.newest(100);
    assert!(all.len() >= 4, "{all:?}");
    assert!(all[1..].iter().all(|s| s.total_requests == 0));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("the sampler stops").unwrap();
}

/// A history attached to `store` under an instance id of its own.
async fn attached(store: &marina_store::Store, instance: &str) -> History {
    let h = History::default();
    h.attach(HistoryDb::new(store.clone(), instance.to_string())).await.unwrap();
    h
}

async fn rows(store: &marina_store::Store, instance: &str) -> i64 {
    let row = store
        .query_opt(
            "SELECT COUNT(*) AS n FROM marina_gateway_metrics_history WHERE instance = $1",
            &[marina_store::Value::from(instance)],
        )
        .await
        .unwrap()
        .unwrap();
    row.get::<i64>("n").unwrap()
}

/// Held by the tests that write the table: a write deletes every instance's rows older than an
/// hour, so one test's write could take (and lock) another's rows mid-test.
static TABLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn unique(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn an_idle_quarter_hour_stores_two_rows_and_reads_back_filled() {
    let _table = TABLE.lock().await;
    for (_dir, store) in stores().await {
        let id = unique("idle");
        let h = attached(&store, &id).await;
        let base = epoch_ms() - 1_000_000;
        h.push(snap(base, 1));
        h.push(snap(base + 900_000, 2));
        h.flush().await;
        assert_eq!(rows(&store, &id).await, 2, "{}: only the snapshots taken are stored", store.describe());
        assert_eq!(h.newest(CAPACITY).len(), 901);
        // After a restart the same run's quiet seconds are filled in again.
        let again = attached(&store, &id).await;
        assert_eq!(again.newest(CAPACITY), h.newest(CAPACITY), "{}", store.describe());
    }
}

#[tokio::test]
async fn a_clock_stepped_back_does_not_stall_the_writes() {
    let _table = TABLE.lock().await;
    for (_dir, store) in stores().await {
        let id = unique("clock");
        let h = attached(&store, &id).await;
        let base = epoch_ms() - 60_000;
        h.push(snap(base + 10_000, 1));
        h.flush().await;
        // Ten seconds back: written at once, in the order taken, after a restart too.
        h.push(snap(base, 2));
        h.push(snap(base + 1_000, 3));
        h.flush().await;
        assert_eq!(rows(&store, &id).await, 3, "{}", store.describe());
        let again = attached(&store, &id).await;
        assert_eq!(times(&again.newest(10)), [base + 1_000, base, base + 10_000], "{}", store.describe());
        // New snapshots follow the stored ones.
        again.push(snap(base + 2_000, 4));
        again.flush().await;
        assert_eq!(attached(&store, &id).await.newest(1)[0].total_requests, 4, "{}", store.describe());
    }
}

#[tokio::test]
async fn rows_out_of_reach_or_older_than_an_hour_are_deleted() {
    let _table = TABLE.lock().await;
    for (_dir, store) in stores().await {
        let (me, gone, live) = (unique("me"), unique("gone"), unique("live"));
        let now = epoch_ms();
        let entry = |seq: u64, ts: u64| Entry { seq, run: 1, snap: snap(ts, seq) };
        for (id, ts) in [(&gone, now - RETENTION_MS - 60_000), (&live, now - 10_000)] {
            let db = HistoryDb::new(store.clone(), id.clone());
            db.append(&[entry(1, ts)], 0, now).await.unwrap();
        }
        let db = HistoryDb::new(store.clone(), me.clone());
        db.append(&[entry(1, now - 3_000), entry(2, now - 2_000), entry(3, now - 1_000)], 0, now).await.unwrap();
        db.append(&[entry(4, now)], 3, now).await.unwrap();
        let (kept, last) = db.load(now).await.unwrap();
        assert_eq!((kept.iter().map(|e| e.seq).collect::<Vec<_>>(), last), (vec![3, 4], 4), "{}", store.describe());
        assert_eq!((rows(&store, &gone).await, rows(&store, &live).await), (0, 1), "{}", store.describe());
        // Loading skips this instance's rows older than an hour (keeping their seq).
        let (kept, last) = db.load(now + RETENTION_MS - 500).await.unwrap();
        assert_eq!((kept.iter().map(|e| e.seq).collect::<Vec<_>>(), last), (vec![4], 4), "{}", store.describe());
        db.clear().await.unwrap();
        HistoryDb::new(store.clone(), live).clear().await.unwrap();
    }
}

#[test]
fn the_instance_id_follows_the_state_dir() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let id = instance_id(&dir).unwrap();
    assert_eq!(instance_id(&dir).unwrap(), id);
    assert!(!id.contains(&dir.display().to_string()), "{id}");
    // Mounted elsewhere (or on a host with another name): the same instance.
    let moved = root.path().join("elsewhere");
    std::fs::rename(&dir, &moved).unwrap();
    assert_eq!(instance_id(&moved).unwrap(), id);
    let other = root.path().join("other");
    std::fs::create_dir(&other).unwrap();
    assert_ne!(instance_id(&other).unwrap(), id);
    // One an operator chose is kept; an unusable one is an error naming the file.
    std::fs::write(other.join(INSTANCE_FILE), "web-0\n").unwrap();
    assert_eq!(instance_id(&other).unwrap(), "web-0");
    std::fs::write(other.join(INSTANCE_FILE), "\n").unwrap();
    let e = instance_id(&other).unwrap_err().to_string();
    assert!(e.contains(INSTANCE_FILE) && e.contains("found nothing"), "{e}");
    assert_eq!(std::fs::read_dir(&moved).unwrap().count(), 1, "no temporary file left behind");
}

/// Two processes creating the id at once must not touch each other's files: a pid names no
/// file uniquely (two containers sharing the state dir may both run marina as pid 1). Here a
/// file of "another process" carries this process's pid, as the temporary file was once named.
#[test]
fn making_the_instance_id_leaves_other_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join(format!(".{INSTANCE_FILE}.{}", std::process::id()));
    std::fs::write(&theirs, "their-id\n").unwrap();
    let id = instance_id(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "their-id\n", "another process's file was changed");
    assert_eq!(std::fs::read_to_string(dir.path().join(INSTANCE_FILE)).unwrap(), format!("{id}\n"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file of ours left behind");
}

/// Only a regular file is read, and only its first bytes: a FIFO named `instance-id` would
/// otherwise block the gateway's `init` (and marina's start) for good, a huge file fill memory.
#[test]
fn an_instance_id_that_is_no_regular_file_or_too_big_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join(INSTANCE_FILE);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let state = dir.path().to_path_buf();
    std::thread::spawn(move || tx.send(instance_id(&state).map_err(|e| e.to_string())));
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("instance_id returned within 10 s");
    let e = got.unwrap_err();
    assert!(e.contains(INSTANCE_FILE) && e.contains("a FIFO"), "{e}");
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, "x".repeat(1 << 20)).unwrap();
    let e = instance_id(dir.path()).unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
}

/// Two instances on one PostgreSQL write at the same moment, each deleting its own rows out of
/// reach and the other's older than an hour. B's write here is held open after deleting its own
/// old row until A's write waits for that row; then B deletes A's old rows. Had A's write kept
/// its own old row locked while it waited (the other instances' rows deleted in the same
/// transaction), B would now wait for A and A for B: PostgreSQL's deadlock, one write failed.
#[tokio::test]
async fn two_instances_trimming_each_other_at_once_do_not_deadlock() {
    let _table = TABLE.lock().await;
    for (_dir, store) in stores().await {
        if store.kind() != marina_store::BackendKind::Postgres {
            continue; // SQLite runs one write at a time
        }
        let (a, b) = (unique("dl-a"), unique("dl-b"));
        let now = epoch_ms();
        let old = now - RETENTION_MS - 60_000;
        for (id, seq, ts) in [(&a, 1, old), (&a, 2, now - 1_000), (&b, 1, old), (&b, 2, now - 1_000)] {
            store
                .execute(
                    "INSERT INTO marina_gateway_metrics_history \
                     (instance, seq, run, ts, total_requests, blocked_requests, allowed_requests, active_buckets) \
                     VALUES ($1, $2, 1, $3, 0, 0, 0, 0)",
                    &[marina_store::Value::from(id.as_str()), (seq as i64).into(), (ts as i64).into()],
                )
                .await
                .unwrap();
        }
        let db_a = HistoryDb::new(store.clone(), a.clone());
        let waiter = store.clone();
        let b_id = b.clone();
        let b_write = store.transaction(async |tx| {
            let own = [marina_store::Value::from(b_id.as_str()), 2i64.into()];
            let n =
                tx.execute("DELETE FROM marina_gateway_metrics_history WHERE instance = $1 AND seq < $2", &own).await?;
            assert_eq!(n, 1, "B's old row is there for B to lock");
            let a_write =
                tokio::spawn(async move { db_a.append(&[Entry { seq: 3, run: 1, snap: snap(now, 3) }], 2, now).await });
            // Until A's write waits for a lock (B's old row).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let row = waiter
                    .query_opt(
                        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                         AND wait_event_type = 'Lock' AND query LIKE '%marina_gateway_metrics_history%'",
                        &[],
                    )
                    .await?
                    .unwrap();
                if row.get::<i64>("n")? > 0 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "A's write never waited for B's");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let others = [marina_store::Value::from(b_id.as_str()), ((now - RETENTION_MS) as i64).into()];
            tx.execute("DELETE FROM marina_gateway_metrics_history WHERE instance <> $1 AND ts < $2", &others).await?;
            Ok(a_write)
        });
        let a_write = b_write.await.unwrap_or_else(|e| panic!("{}: B's write failed: {e}", store.describe()));
        let a_done = tokio::time::timeout(Duration::from_secs(10), a_write).await.expect("A's write ends").unwrap();
        a_done.unwrap_or_else(|e| panic!("{}: A's write failed: {e}", store.describe()));
        assert_eq!((rows(&store, &a).await, rows(&store, &b).await), (2, 1), "{}", store.describe());
        HistoryDb::new(store.clone(), a).clear().await.unwrap();
        HistoryDb::new(store.clone(), b).clear().await.unwrap();
    }
}

/// A plugin reload: the new gateway loads the stored history while the old one still samples
/// and writes (it is shut down after). Every snapshot of both is stored, and a later start
/// reads them all (with one counter per history, both numbered on from the stored `seq` and the
/// new gateway's first snapshots were dropped as conflicts).
#[tokio::test]
async fn a_reloaded_gateway_and_the_one_it_replaces_both_keep_their_snapshots() {
    let _table = TABLE.lock().await;
    for (_dir, store) in stores().await {
        let id = unique("reload");
        let base = epoch_ms() - 60_000;
        let old = attached(&store, &id).await;
        old.push(snap(base, 1));
        old.flush().await;
        let new = attached(&store, &id).await;
        for i in 1..=3 {
            old.push(snap(base + i * 1_000, 1 + i));
        }
        old.flush().await;
        for i in 1..=3 {
            new.push(snap(base + i * 1_000 + 500, 100 + i));
        }
        new.flush().await;
        assert_eq!(rows(&store, &id).await, 7, "{}: a snapshot was lost", store.describe());
        let totals: Vec<u64> = attached(&store, &id).await.newest(10).iter().map(|s| s.total_requests).collect();
        assert_eq!(totals.iter().filter(|&&t| t > 100).count(), 3, "{}: {totals:?}", store.describe());
        HistoryDb::new(store.clone(), id).clear().await.unwrap();
    }
}
