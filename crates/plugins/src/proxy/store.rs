//! Where the proxy plugin's API rules live: the `marina_proxy_rules` table of marina's own
//! database (SQLite or PostgreSQL, migration `0014_proxy_rules`). Buntime kept them in keyval
//! under `["proxy","rules",id]`; a table gives marina a transaction for reorder and a schema the
//! migration engine owns.
//!
//! On PostgreSQL several marina instances may share the table, so every write also sends a
//! `NOTIFY` on [`CHANNEL`] in its own transaction (it leaves only if the write commits), with
//! the writing instance's id as payload; each instance `LISTEN`s and reloads the table when
//! another one wrote (see `super::follow`).

use marina_core::Error;
use marina_proxy::RuleSpec;
use marina_store::{BackendKind, Store, Tx, Value};

/// The `LISTEN`/`NOTIFY` channel of rule changes.
pub const CHANNEL: &str = "marina_proxy_rules";

/// The rules table.
#[derive(Clone, Debug)]
pub struct RuleStore {
    store: Store,
    /// This instance's id: the payload of its notifications, so it skips its own.
    origin: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn encode(spec: &RuleSpec) -> Result<String, Error> {
    serde_json::to_string(spec).map_err(|e| Error::internal(format!("cannot encode a proxy rule: {e}")))
}

impl RuleStore {
    /// Over marina's migrated store.
    pub fn new(store: Store) -> Self {
        Self { store, origin: uuid::Uuid::new_v4().to_string() }
    }

    /// The store the table lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The id this instance's notifications carry.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Tells the other instances sharing a PostgreSQL database that the rules changed.
    async fn notify(&self, tx: &mut Tx) -> Result<(), Error> {
        if self.store.kind() == BackendKind::Postgres {
            tx.execute("SELECT pg_notify($1, $2)", &[Value::from(CHANNEL), Value::from(self.origin.as_str())]).await?;
        }
        Ok(())
    }

    /// Every stored rule, in creation order. A row that no longer parses (written by a newer
    /// marina, or edited by hand) is skipped with an error in the log rather than failing the
    /// whole plugin.
    pub async fn all(&self) -> Result<Vec<(String, RuleSpec)>, Error> {
        let rows = self.store.query("SELECT id, spec FROM marina_proxy_rules ORDER BY seq, id", &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get("id")?;
            let text: String = row.get("spec")?;
            match serde_json::from_str::<RuleSpec>(&text) {
                Ok(spec) => out.push((id, spec)),
                Err(e) => tracing::error!(rule = %id, error = %e, "a stored proxy rule does not parse; it is ignored"),
            }
        }
        Ok(out)
    }

    /// Adds a rule after every other.
    pub async fn insert(&self, id: &str, spec: &RuleSpec) -> Result<(), Error> {
        let now = now_ms();
        let text = encode(spec)?;
        self.store
            .transaction(async |tx| {
                tx.execute(
                    "INSERT INTO marina_proxy_rules (id, seq, spec, created_at, updated_at) \
                     VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM marina_proxy_rules), $2, $3, $3)",
                    &[Value::from(id), Value::from(text.as_str()), Value::from(now)],
                )
                .await?;
                self.notify(tx).await
            })
            .await
    }

    /// Replaces rules' specs in one transaction (an update, a toggle, a reorder).
    pub async fn update(&self, rules: &[(String, RuleSpec)]) -> Result<(), Error> {
        let now = now_ms();
        let encoded: Vec<(String, String)> =
            rules.iter().map(|(id, spec)| Ok((id.clone(), encode(spec)?))).collect::<Result<_, Error>>()?;
        self.store
            .transaction(async |tx| {
                for (id, text) in &encoded {
                    tx.execute(
                        "UPDATE marina_proxy_rules SET spec = $1, updated_at = $2 WHERE id = $3",
                        &[Value::from(text.as_str()), Value::from(now), Value::from(id.as_str())],
                    )
                    .await?;
                }
                self.notify(tx).await
            })
            .await
    }

    /// Removes a rule; false when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, Error> {
        self.store
            .transaction(async |tx| {
                let n = tx.execute("DELETE FROM marina_proxy_rules WHERE id = $1", &[Value::from(id)]).await?;
                if n > 0 {
                    self.notify(tx).await?;
                }
                Ok(n > 0)
            })
            .await
    }
}
