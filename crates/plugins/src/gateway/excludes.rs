//! Shell excludes added at runtime (`/gateway/api/shell/excludes`), kept in marina's database
//! (the `marina_gateway_shell_excludes` table, migration 0018, SQLite or PostgreSQL) so they
//! survive a restart, and in memory so that the shell's bypass sees a change at once.
//!
//! Excludes from `GATEWAY_SHELL_EXCLUDES` or the manifest (`source: "env"`) are not stored and
//! cannot be removed through the API: the configuration owns them. Several instances sharing a
//! PostgreSQL database read the table at start; one instance's later change reaches the others
//! at their next start (or plugin reload).
//!
//! Within one instance an add and a remove are serialized (row and memory changed together, one
//! change at a time), so memory always says what the table says: two concurrent calls for one
//! name could otherwise write the table in one order and memory in the other.

use std::collections::BTreeMap;

use marina_core::Error;
use marina_store::{Store, Value};
use parking_lot::RwLock;

use super::limit::epoch_ms;

/// The stored excludes: basename → when it was added (epoch ms).
pub struct Stored {
    store: Store,
    names: RwLock<BTreeMap<String, u64>>,
    /// Held across a change's database write and memory update.
    changing: tokio::sync::Mutex<()>,
}

impl Stored {
    /// Read the table.
    ///
    /// # Errors
    /// The database's.
    pub async fn load(store: Store) -> Result<Self, Error> {
        // A marina.db this start created holds none (and may still be being migrated).
        let rows = if store.is_new() {
            Vec::new()
        } else {
            store.query("SELECT basename, added_at FROM marina_gateway_shell_excludes", &[]).await?
        };
        let mut names = BTreeMap::new();
        for row in rows {
            let name: String = row.get("basename")?;
            let at: i64 = row.get("added_at")?;
            names.insert(name, u64::try_from(at).unwrap_or(0));
        }
        Ok(Self { store, names: RwLock::new(names), changing: tokio::sync::Mutex::new(()) })
    }

    /// Whether `basename` is excluded here.
    pub fn contains(&self, basename: &str) -> bool {
        self.names.read().contains_key(basename)
    }

    /// Every stored exclude with its time, by name.
    pub fn all(&self) -> Vec<(String, u64)> {
        self.names.read().iter().map(|(n, t)| (n.clone(), *t)).collect()
    }

    /// Store `basename` (already validated); false when it was there.
    ///
    /// # Errors
    /// The database's; memory is changed only after the row is written.
    pub async fn add(&self, basename: &str) -> Result<bool, Error> {
        let _one = self.changing.lock().await;
        let now = epoch_ms();
        let n = self
            .store
            .execute(
                "INSERT INTO marina_gateway_shell_excludes (basename, added_at) VALUES ($1, $2) \
                 ON CONFLICT (basename) DO NOTHING",
                &[Value::from(basename), Value::from(now as i64)],
            )
            .await?;
        let mut names = self.names.write();
        let fresh = !names.contains_key(basename);
        names.entry(basename.to_string()).or_insert(now);
        Ok(n > 0 || fresh)
    }

    /// Remove `basename`; false when it was not stored.
    ///
    /// # Errors
    /// The database's; memory is changed only after the row is deleted.
    pub async fn remove(&self, basename: &str) -> Result<bool, Error> {
        let _one = self.changing.lock().await;
        let n = self
            .store
            .execute("DELETE FROM marina_gateway_shell_excludes WHERE basename = $1", &[Value::from(basename)])
            .await?;
        let known = self.names.write().remove(basename).is_some();
        Ok(n > 0 || known)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::test_db::stores;

    async fn stored_in_table(store: &Store, name: &str) -> bool {
        let rows = store
            .query("SELECT basename FROM marina_gateway_shell_excludes WHERE basename = $1", &[Value::from(name)])
            .await
            .unwrap();
        !rows.is_empty()
    }

    /// Adds and removes of one name racing each other: after each round memory and the table
    /// agree (without serialization one round in a few left them apart).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_adds_and_removes_leave_memory_and_table_agreeing() {
        for (_dir, store) in stores().await {
            let name = format!("race{}", uuid::Uuid::new_v4().simple());
            let stored = Arc::new(Stored::load(store.clone()).await.unwrap());
            for round in 0..100 {
                let calls: Vec<_> = (0..4)
                    .map(|i| {
                        let (s, n) = (stored.clone(), name.clone());
                        tokio::spawn(
                            async move { if (i + round) % 2 == 0 { s.add(&n).await } else { s.remove(&n).await } },
                        )
                    })
                    .collect();
                for c in calls {
                    c.await.unwrap().unwrap();
                }
                assert_eq!(
                    stored.contains(&name),
                    stored_in_table(&store, &name).await,
                    "{}: round {round}: memory and table disagree",
                    store.describe()
                );
            }
            stored.remove(&name).await.unwrap();
        }
    }
}
