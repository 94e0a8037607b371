//! [`KeyStore`]: generated API keys kept in marina's own database (table `marina_api_keys`,
//! created by the store's embedded migrations), so SQLite and PostgreSQL both work and several
//! instances sharing PostgreSQL see the same keys and revocations at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use marina_core::Error;
use marina_store::{Row, Store, Value};
use serde::{Deserialize, Serialize};

use super::model::{Role, parse_expires_in};
use super::secret;

/// `lastUsedAt` is written at most this often per key (Buntime's interval): a busy key must
/// not turn every request into a database write.
const LAST_USED_WRITE_INTERVAL_SECS: i64 = 60;

/// How often `create` tries the next free id before answering 503: each lost try means another
/// create won, so this many simultaneous creates always succeed.
const CREATE_ATTEMPTS: usize = 64;

/// The body of `POST /api/keys`, as Buntime takes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    /// Required, non-blank.
    pub name: Option<String>,
    /// `admin`, `editor` (default), `viewer` or `custom`.
    pub role: Option<String>,
    /// Only for `custom`.
    pub permissions: Option<Vec<String>>,
    /// Free text.
    pub description: Option<String>,
    /// `never` (default), `30d`, `2w`, `6m`, `1y`.
    pub expires_in: Option<String>,
}

/// A key as listed: never the secret, never its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Numeric id, as in Buntime.
    pub id: i64,
    /// The name given at creation.
    pub name: String,
    /// The first 12 characters of the key.
    pub key_prefix: String,
    /// The role.
    pub role: Role,
    /// The permissions it grants.
    pub permissions: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// The id of the key that created it (absent for the root key and the CLI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<i64>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Unix seconds; absent when it never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Unix seconds, updated at most once a minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
    /// Unix seconds; revoked keys are not listed, so only lookups see it.
    #[serde(skip)]
    pub revoked_at: Option<i64>,
}

impl KeyInfo {
    /// Whether the key grants `permission` (admin grants everything).
    pub fn has_permission(&self, permission: &str) -> bool {
        self.role == Role::Admin || self.permissions.iter().any(|p| p == permission)
    }
}

/// What `POST /api/keys` answers: the only time the secret is ever shown.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// The new key's id.
    pub id: i64,
    /// The secret (`btk_...`).
    pub key: String,
    /// Its first 12 characters.
    pub key_prefix: String,
    /// The name given.
    pub name: String,
    /// The role.
    pub role: Role,
}

/// The outcome of looking up a presented key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyCheck {
    /// Known, not revoked, not expired.
    Valid(KeyInfo),
    /// No stored key has this hash.
    Unknown,
    /// Known but past its `expiresAt`.
    Expired(KeyInfo),
    /// Known but revoked.
    Revoked(KeyInfo),
}

/// Generated keys over marina's [`Store`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyStore {
    store: Store,
    /// Keys are never deleted (revocation keeps the row), so once one exists the answer to
    /// [`KeyStore::any_exist`] never goes back to false and need not be asked again.
    seen_one: std::sync::Arc<AtomicBool>,
}

const COLUMNS: &str = "id, name, key_prefix, key_hash, role, permissions, description, created_by, created_at, expires_at, last_used_at, revoked_at";

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl KeyStore {
    /// Keys in `store`, which must have marina's migrations applied ([`Store::migrate_system`]).
    pub fn new(store: Store) -> Self {
        Self { store, seen_one: Default::default() }
    }

    /// Create a key. `created_by` is the id of the key making the request, if any.
    ///
    /// # Errors
    /// 400 `MISSING_KEY_NAME`, `INVALID_KEY_ROLE`, `MISSING_PERMISSIONS`, `INVALID_PERMISSION`,
    /// `INVALID_EXPIRATION` (each with `data.path`); storage errors.
    pub async fn create(&self, input: NewKey, created_by: Option<i64>) -> Result<CreatedKey, Error> {
        let name = input.name.as_deref().map(str::trim).unwrap_or_default();
        if name.is_empty() {
            return Err(Error::bad_request(
                "MISSING_KEY_NAME",
                "Key name is required: a key needs a non-empty \"name\"",
            )
            .with_data(serde_json::json!({ "path": "name" })));
        }
        if name.chars().count() > 200 {
            return Err(Error::bad_request("INVALID_KEY_NAME", "a key name is at most 200 characters")
                .with_data(serde_json::json!({ "path": "name" })));
        }
        let role = Role::parse(input.role.as_deref())?;
        if role != Role::Custom && input.permissions.as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(Error::bad_request(
                "INVALID_PERMISSION",
                format!("\"permissions\" only applies to role \"custom\"; role \"{}\" has a fixed set", role.as_str()),
            )
            .with_data(serde_json::json!({ "path": "permissions" })));
        }
        let permissions = role.permissions(input.permissions.as_deref())?;
        let lifetime = parse_expires_in(input.expires_in.as_deref())?;
        let description = input.description.as_deref().map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned);
        let key = secret::generate()?;
        let now = now_secs();
        let expires_at = lifetime.map(|l| now + l);
        let permissions_json = serde_json::to_string(&permissions).unwrap_or_else(|_| "[]".into());
        // Buntime's ids are small integers (max + 1). Concurrent creators (tasks, or instances on
        // one PostgreSQL server) may pick the same one; ON CONFLICT makes the loser see 0 rows and
        // try the next id. A loss always means another create succeeded in between, so with
        // `CREATE_ATTEMPTS` tries up to that many simultaneous creates all get an id.
        for _ in 0..CREATE_ATTEMPTS {
            let next = self
                .store
                .query_opt("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM marina_api_keys", &[])
                .await?
                .ok_or_else(|| Error::internal("SELECT MAX(id) returned no row"))?
                .get::<i64>("next")?;
            let inserted = self
                .store
                .execute(
                    "INSERT INTO marina_api_keys (id, name, key_prefix, key_hash, role, permissions, description, created_by, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                    &[
                        Value::from(next),
                        Value::from(name),
                        Value::from(secret::shown_prefix(&key)),
                        Value::from(secret::hash_hex(&key)),
                        Value::from(role.as_str()),
                        Value::from(permissions_json.as_str()),
                        Value::from(description.clone()),
                        Value::from(created_by),
                        Value::from(now),
                        Value::from(expires_at),
                    ],
                )
                .await?;
            if inserted == 1 {
                self.seen_one.store(true, Ordering::Relaxed);
                return Ok(CreatedKey {
                    id: next,
                    key_prefix: secret::shown_prefix(&key).to_string(),
                    key,
                    name: name.to_string(),
                    role,
                });
            }
        }
        Err(Error::unavailable("API_KEY_CREATE_CONFLICT", "could not allocate a key id; retry"))
    }

    /// Keys that are not revoked (expired ones included, as in Buntime), oldest first.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        let rows = self
            .store
            .query(&format!("SELECT {COLUMNS} FROM marina_api_keys WHERE revoked_at IS NULL ORDER BY id"), &[])
            .await?;
        rows.iter().map(info_from_row).collect()
    }

    /// One key by id, revoked or not.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn get(&self, id: i64) -> Result<Option<KeyInfo>, Error> {
        let row =
            self.store.query_opt(&format!("SELECT {COLUMNS} FROM marina_api_keys WHERE id = $1"), &[id.into()]).await?;
        row.as_ref().map(info_from_row).transpose()
    }

    /// Revoke a key: it stops working at once (on every instance sharing the database).
    ///
    /// # Errors
    /// 404 `API_KEY_NOT_FOUND` for an unknown or already revoked id; storage errors.
    pub async fn revoke(&self, id: i64) -> Result<(), Error> {
        let n = self
            .store
            .execute(
                "UPDATE marina_api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                &[now_secs().into(), id.into()],
            )
            .await?;
        if n == 0 {
            return Err(Error::new(
                StatusCode::NOT_FOUND,
                "API_KEY_NOT_FOUND",
                format!("API key not found: no active API key with id {id}"),
            )
            .with_data(serde_json::json!({ "id": id })));
        }
        Ok(())
    }

    /// Whether any key was ever created (revoked and expired ones count). Once one has been,
    /// the internal API requires a key: revoking every key must not reopen it to anyone.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn any_exist(&self) -> Result<bool, Error> {
        if self.seen_one.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let any = self.store.query_opt("SELECT id FROM marina_api_keys LIMIT 1", &[]).await?.is_some();
        if any {
            self.seen_one.store(true, Ordering::Relaxed);
        }
        Ok(any)
    }

    /// Look up a presented key. Rows are narrowed by the shown prefix, then the SHA-256 digests
    /// are compared in constant time. A valid key's `lastUsedAt` is refreshed in the background
    /// when it is more than a minute old.
    ///
    /// # Errors
    /// Storage errors (the caller answers 503, never "valid").
    pub async fn verify(&self, presented: &str) -> Result<KeyCheck, Error> {
        if !presented.starts_with(secret::KEY_PREFIX) {
            return Ok(KeyCheck::Unknown);
        }
        let digest = secret::digest(presented);
        let rows = self
            .store
            .query(
                &format!("SELECT {COLUMNS} FROM marina_api_keys WHERE key_prefix = $1"),
                &[secret::shown_prefix(presented).into()],
            )
            .await?;
        let mut found = None;
        for row in &rows {
            // Every candidate is compared, so the time does not depend on which one matches.
            if secret::matches_hash(&digest, &row.get::<String>("key_hash")?) {
                found = Some(info_from_row(row)?);
            }
        }
        let Some(info) = found else { return Ok(KeyCheck::Unknown) };
        let now = now_secs();
        if info.revoked_at.is_some() {
            return Ok(KeyCheck::Revoked(info));
        }
        if info.expires_at.is_some_and(|t| t <= now) {
            return Ok(KeyCheck::Expired(info));
        }
        if info.last_used_at.is_none_or(|t| now - t >= LAST_USED_WRITE_INTERVAL_SECS) {
            let store = self.store.clone();
            let id = info.id;
            tokio::spawn(async move {
                if let Err(e) = store
                    .execute("UPDATE marina_api_keys SET last_used_at = $1 WHERE id = $2", &[now.into(), id.into()])
                    .await
                {
                    tracing::warn!(error = %e, key_id = id, "could not record an API key's lastUsedAt");
                }
            });
        }
        Ok(KeyCheck::Valid(info))
    }
}

fn info_from_row(row: &Row) -> Result<KeyInfo, Error> {
    let role = Role::parse(Some(&row.get::<String>("role")?))
        .map_err(|e| Error::internal(format!("marina_api_keys holds an unknown role: {}", e.message())))?;
    let permissions: Vec<String> = serde_json::from_str(&row.get::<String>("permissions")?)
        .map_err(|e| Error::internal(format!("marina_api_keys.permissions is not a JSON list of strings: {e}")))?;
    Ok(KeyInfo {
        id: row.get("id")?,
        name: row.get("name")?,
        key_prefix: row.get("key_prefix")?,
        role,
        permissions,
        created_at: row.get("created_at")?,
        created_by: row.get("created_by")?,
        description: row.get("description")?,
        expires_at: row.get("expires_at")?,
        last_used_at: row.get("last_used_at")?,
        revoked_at: row.get("revoked_at")?,
    })
}
