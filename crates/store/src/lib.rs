//! marina's storage layer: one [`Store`] API over an embedded SQLite file or a PostgreSQL
//! server, and the migration engine that shapes both.
//!
//! `DATABASE_URL` picks the backend ([`DatabaseUrl`]): unset means
//! `sqlite://{RUNTIME_STATE_DIR}/marina.db`, so marina runs with nothing to install;
//! `postgres://...` lets several marina instances share state. Every app also gets a database
//! of its own ([`Store::open_app`]): a file `{state_dir}/apps/{name}/app.db`, or a schema
//! `app_{name}` on the same PostgreSQL server.
//!
//! Why the drivers are what they are: rusqlite (bundled SQLite, run on the blocking pool so the
//! async runtime never waits on disk) and tokio-postgres with a deadpool pool. sqlx is out
//! because its `libsqlite3-sys` conflicts with rusqlite's.
//!
//! Why the migration engine is ours ([`migrate`]): refinery and similar crates have no down
//! migrations, and marina needs `rollback`, per-app databases, verified checksums, a
//! cross-process lock and an opt-out of the transaction; see `docs/storage.md`.
//!
//! The key-value engine ([`kv`]) lives here too: tables created by marina's own migrations,
//! reached through the same [`Store`], with change notification for watchers.
//!
//! # Example
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use marina_store::{Store, Value};
//! let store = Store::open(Some("sqlite::memory:"), std::path::Path::new(".")).await?;
//! store.migrate_system().await?;
//! let row = store
//!     .query_opt("SELECT value FROM marina_meta WHERE key = $1", &[Value::from("schema_version")])
//!     .await?
//!     .expect("the first migration writes it");
//! assert_eq!(row.get::<String>("value")?, "1");
//! # Ok::<(), marina_core::Error>(())
//! # }).unwrap();
//! ```

#![warn(missing_docs)]

pub mod app_role;
mod conn;
mod fresh;
pub mod hrana;
pub mod kv;
pub mod migrate;
pub mod sql;
mod store;
mod url;
mod value;

pub use migrate::{MigrateOptions, MigrationReport, MigrationSet, Migrator, RollbackTarget, Status};
pub use store::{BackendKind, SYSTEM_SCHEMA, Store, Tx, app_sqlite_path, claim_app_database, release_app_database};
pub use url::DatabaseUrl;
pub use value::{ColumnIndex, FromValue, Row, Value};
