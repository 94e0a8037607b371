//! Property: any sequence of `migrate --to` and `rollback` leaves exactly the migrations a
//! simple model predicts applied, and the schema matches the bookkeeping (SQLite in memory;
//! the backends share the engine, which the other tests run on both).

use marina_store::migrate::State;
use marina_store::{MigrateOptions, MigrationSet, Migrator, RollbackTarget, Store};
use proptest::prelude::*;

const N: i64 = 4;

#[derive(Debug, Clone)]
enum Op {
    Migrate(Option<i64>),
    Steps(u32),
    To(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::option::of(1..=N).prop_map(Op::Migrate),
        (0u32..4).prop_map(Op::Steps),
        (0..=N).prop_map(Op::To),
    ]
}

fn set() -> MigrationSet {
    let files = (1..=N).flat_map(|i| {
        [
            (format!("{i:04}_t{i}.up.sql"), format!("CREATE TABLE t{i} (x BIGINT);")),
            (format!("{i:04}_t{i}.down.sql"), format!("DROP TABLE t{i};")),
        ]
    });
    MigrationSet::from_files("model", files).unwrap()
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Store::open(Some("sqlite::memory:"), std::path::Path::new(".")).await.unwrap();
    let set = set();
    let m = Migrator::new(&store, &set);
    let mut applied = 0i64; // the model: migrations 1..=applied are applied
    for op in ops {
        match op {
            Op::Migrate(to) => {
                m.migrate(&MigrateOptions { to, dry_run: false }).await.unwrap().into_result().unwrap();
                applied = applied.max(to.unwrap_or(N));
            }
            Op::Steps(n) => {
                m.rollback(RollbackTarget::Steps(n)).await.unwrap().into_result().unwrap();
                applied = (applied - i64::from(n)).max(0);
            }
            Op::To(t) => {
                let result = m.rollback(RollbackTarget::To(t)).await;
                if t != 0 && t > applied {
                    let err = result.unwrap_err();
                    prop_assert_eq!(err.code(), "MIGRATION_TARGET_UNKNOWN");
                } else {
                    result.unwrap().into_result().unwrap();
                    applied = applied.min(t);
                }
            }
        }
        let status = m.status().await.unwrap();
        let ids: Vec<i64> = status.entries.iter().filter(|e| e.state == State::Applied).map(|e| e.id).collect();
        prop_assert_eq!(ids, (1..=applied).collect::<Vec<_>>());
        let tables: Vec<String> = store
            .query("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 't%' ORDER BY name", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("name").unwrap())
            .collect();
        prop_assert_eq!(tables, (1..=applied).map(|i| format!("t{i}")).collect::<Vec<_>>());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn applied_migrations_follow_the_model(ops in proptest::collection::vec(op(), 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(ops))?;
    }
}
