//! Following rule changes made by other marina instances that share a PostgreSQL database.
//!
//! Each instance keeps its rules in memory and answers from them, so a rule written through
//! another instance's API would otherwise stay unseen until a restart. Writes send a `NOTIFY`
//! in their transaction ([`super::store`]); here one `LISTEN` session per instance reloads the
//! table when a notification from another instance arrives. Notifications that arrive together
//! cost one reload. When the session drops, it is reopened with backoff and the table is
//! reloaded, since notifications sent meanwhile are lost. SQLite has no cross-process
//! notification: there, other processes' changes are seen on restart (see docs/proxy.md).

use std::sync::Weak;
use std::time::Duration;

use marina_store::Store;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Rules;
use super::store::CHANNEL;

/// Opens the `LISTEN` session: `None` on SQLite. On PostgreSQL a failure is logged and left to
/// [`follow`] to retry, so a database hiccup at start does not stop marina.
pub(super) async fn listen(store: &Store) -> Option<Option<UnboundedReceiver<String>>> {
    match store.listen(CHANNEL).await {
        Ok(None) => None,
        Ok(Some(rx)) => Some(Some(rx)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN for proxy rule changes yet; retrying");
            Some(None)
        }
    }
}

/// Reloads `rules` whenever another instance changed the table; ends when `rules` is dropped.
pub(super) async fn follow(
    rules: Weak<Rules>,
    store: Store,
    origin: String,
    mut rx: Option<UnboundedReceiver<String>>,
) {
    loop {
        if let Some(session) = rx.as_mut() {
            while let Some(payload) = session.recv().await {
                let mut foreign = payload != origin;
                while let Ok(more) = session.try_recv() {
                    foreign |= more != origin;
                }
                if foreign && !reload(&rules).await {
                    return;
                }
            }
        }
        let mut delay = Duration::from_millis(100);
        rx = loop {
            tokio::time::sleep(delay).await;
            if rules.strong_count() == 0 {
                return;
            }
            match store.listen(CHANNEL).await {
                Ok(Some(session)) => break Some(session),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "the proxy rules LISTEN session is down; retrying");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        if !reload(&rules).await {
            return;
        }
    }
}

/// Reloads once; false when the rules are gone (the plugin shut down).
async fn reload(rules: &Weak<Rules>) -> bool {
    let Some(rules) = rules.upgrade() else { return false };
    if let Err(e) = rules.reload().await {
        tracing::error!(error = %e, "reloading the proxy rules after another instance changed them failed");
    }
    true
}
