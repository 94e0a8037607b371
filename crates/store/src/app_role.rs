//! Per-app PostgreSQL login roles: what lets an app's own SQL (Hrana from its worker token) run
//! on marina's PostgreSQL server without reaching marina's tables or another app's.
//!
//! Why a login role and not `SET ROLE`: SQL sent by the app could say `RESET ROLE` and be
//! marina again. A session opened *as* the app's role has nothing to reset to.
//!
//! Each app (tenant) `name` gets:
//! - the schema `app_{ident}` (as [`crate::Store::open_app`] names it), on which its role has
//!   `USAGE` and `CREATE`; tables marina creates there (app migrations) are granted to the role
//!   as well, now and by default privileges for later ones;
//! - the role `app_{ident}_{db}` (`{db}`: 8 hex digits of the database's name, since roles are
//!   shared by every database of a cluster) with `LOGIN` and nothing else: no superuser,
//!   `CREATEDB`, `CREATEROLE`, replication or `BYPASSRLS`, and no membership in marina's role.
//!   marina's role is made a member of the app's role, so marina (admin keys, app migrations,
//!   dropping a tenant) still reaches what the app created.
//!
//! The role's password is random and kept in marina's own table `marina_app_roles`, so every
//! marina instance on the same database logs in with it. Provisioning runs under an advisory
//! lock, so two instances starting the same app do not race. marina's role needs `CREATEROLE`
//! (or superuser); without it app tokens are refused with 503 `DATABASE_APP_ROLES_UNAVAILABLE`.

use marina_core::Error;
use sha2::{Digest, Sha256};

use crate::sql::{app_ident, quote_ident};
use crate::store::{BackendKind, Store};
use crate::value::Value;

/// How an app's sessions log in on PostgreSQL.
#[derive(Clone)]
pub struct AppLogin {
    /// The role name.
    pub role: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for AppLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppLogin").field("role", &self.role).finish_non_exhaustive()
    }
}

/// The role name of app `ident` in database `db`.
pub fn role_name(ident: &str, db: &str) -> String {
    let h = hex::encode(Sha256::digest(db.as_bytes()));
    format!("app_{ident}_{}", &h[..8])
}

fn unavailable(cause: &Error) -> Error {
    Error::unavailable(
        "DATABASE_APP_ROLES_UNAVAILABLE",
        format!(
            "cannot give the app a PostgreSQL role of its own (marina's role needs CREATEROLE or superuser): {}",
            cause.message()
        ),
    )
}

/// Create (or bring up to date) app `name`'s role and schema privileges, through marina's own
/// store `system` (whose migrations created `marina_app_roles`).
///
/// # Errors
/// `APP_NAME_INVALID`; `DATABASE_APP_ROLES_UNAVAILABLE` when marina's role may not create
/// roles or grant; store errors. On SQLite: an internal error (apps have files there).
pub async fn ensure(system: &Store, name: &str) -> Result<AppLogin, Error> {
    if system.kind() != BackendKind::Postgres {
        return Err(Error::internal("app roles exist only on PostgreSQL"));
    }
    let ident = app_ident(name)?;
    let db: String = system
        .query_opt("SELECT current_database()::text AS db", &[])
        .await?
        .ok_or_else(|| Error::internal("current_database() returned no row"))?
        .get("db")?;
    let role = role_name(&ident, &db);
    let schema = format!("app_{ident}");
    let (qr, qs) = (quote_ident(&role), quote_ident(&schema));
    let password = system
        .transaction(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[Value::from(format!("marina_app_role:{role}"))])
                .await?;
            let stored: Option<String> = tx
                .query_opt("SELECT password FROM marina_app_roles WHERE role = $1", &[Value::from(role.as_str())])
                .await?
                .map(|r| r.get("password"))
                .transpose()?;
            let exists =
                tx.query_opt("SELECT 1 AS ok FROM pg_roles WHERE rolname = $1", &[Value::from(role.as_str())]).await?.is_some();
            let password = match (&stored, exists) {
                (Some(p), true) => p.clone(),
                _ => {
                    // Hex only: safe inside the quoted literal below (DDL takes no parameters).
                    let p = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                    let ddl = if exists {
                        format!("ALTER ROLE {qr} WITH LOGIN PASSWORD '{p}'")
                    } else {
                        format!(
                            "CREATE ROLE {qr} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '{p}'"
                        )
                    };
                    tx.batch(&ddl).await.map_err(|e| unavailable(&e))?;
                    tx.execute(
                        "INSERT INTO marina_app_roles (role, app, password, created_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (role) DO UPDATE SET password = excluded.password",
                        &[
                            Value::from(role.as_str()),
                            Value::from(ident.as_str()),
                            Value::from(p.as_str()),
                            Value::Integer(crate::kv::now_ms()),
                        ],
                    )
                    .await?;
                    p
                }
            };
            // marina keeps reaching what the app creates (admin routes, migrations, dropping it).
            let grants = format!(
                "GRANT {qr} TO CURRENT_USER;\n\
                 CREATE SCHEMA IF NOT EXISTS {qs};\n\
                 REVOKE ALL ON SCHEMA {qs} FROM PUBLIC;\n\
                 GRANT USAGE, CREATE ON SCHEMA {qs} TO {qr};\n\
                 GRANT ALL ON ALL TABLES IN SCHEMA {qs} TO {qr};\n\
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA {qs} TO {qr};\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA {qs} GRANT ALL ON TABLES TO {qr};\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA {qs} GRANT ALL ON SEQUENCES TO {qr};"
            );
            tx.batch(&grants).await.map_err(|e| unavailable(&e))?;
            Ok(password)
        })
        .await?;
    Ok(AppLogin { role, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_fit_postgres_and_differ_by_database() {
        let long = "a".repeat(50);
        assert!(role_name(&long, "marina").len() <= 63);
        assert_ne!(role_name("todo", "one"), role_name("todo", "two"));
        assert!(role_name("todo", "one").starts_with("app_todo_"));
    }
}
