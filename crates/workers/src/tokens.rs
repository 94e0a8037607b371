//! Scoped credentials for workers: each worker gets a random token naming its app, given to it
//! as `LIBSQL_AUTH_TOKEN` (with `LIBSQL_URL`), and valid for the keyval and database plugins
//! until the worker's process exits. With it an app reaches its own keyval namespace and its
//! own database, nothing else.
//!
//! Tokens live only in memory, keyed by their SHA-256: a restarted marina starts new workers
//! with new tokens, so there is nothing to persist, and a stopped worker's token is gone.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};

/// The prefix of a worker token (so a leaked one is recognisable in logs and scanners).
pub const TOKEN_PREFIX: &str = "mwt_";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The app whose keys and database the token reaches.
    pub app: String,
    /// The worker it was issued to.
    pub worker_id: String,
}

/// The live worker tokens. Cheap to clone; clones share the table.
#[derive(Clone, Default)]
pub struct WorkerTokens {
    by_hash: Arc<RwLock<HashMap<[u8; 32], Grant>>>,
}

impl std::fmt::Debug for WorkerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerTokens").field("live", &self.by_hash.read().len()).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl WorkerTokens {
    /// A new token for `worker_id` of `app`.
    pub fn issue(&self, app: &str, worker_id: &str) -> String {
        let token = format!("{TOKEN_PREFIX}{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        self.by_hash.write().insert(digest(&token), Grant { app: app.to_string(), worker_id: worker_id.to_string() });
        token
    }

    /// Revoke every token of `worker_id` (its process exited).
    pub fn revoke_worker(&self, worker_id: &str) {
        self.by_hash.write().retain(|_, g| g.worker_id != worker_id);
    }

    /// What `token` grants, if it is live.
    pub fn verify(&self, token: &str) -> Option<Grant> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        self.by_hash.read().get(&digest(token)).cloned()
    }

    /// How many tokens are live.
    pub fn live(&self) -> usize {
        self.by_hash.read().len()
    }
}

/// Revokes a worker's tokens when dropped.
#[derive(Default)]
pub(crate) struct Revoke(Option<(WorkerTokens, String)>);

impl Revoke {
    pub(crate) fn new(tokens: WorkerTokens, worker_id: String) -> Self {
        Self(Some((tokens, worker_id)))
    }
}

impl Drop for Revoke {
    fn drop(&mut self) {
        if let Some((tokens, id)) = self.0.take() {
            tokens.revoke_worker(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_revoke() {
        let t = WorkerTokens::default();
        let a = t.issue("todo", "w1");
        let b = t.issue("todo", "w2");
        assert_ne!(a, b);
        assert_eq!(t.verify(&a).unwrap().app, "todo");
        assert!(t.verify("mwt_nope").is_none());
        assert!(t.verify(&a[..a.len() - 1]).is_none());
        t.revoke_worker("w1");
        assert!(t.verify(&a).is_none());
        assert!(t.verify(&b).is_some());
        assert_eq!(t.live(), 1);
    }
}
