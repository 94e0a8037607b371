//! `marina keys`: create, list and revoke API keys directly in marina's database.
//!
//! This is the way in when the internal API already requires a key and none is at hand (the
//! first key of a fresh install without a root key, or after every key was revoked): it works
//! on the database itself, like `marina db`, so it needs the same `DATABASE_URL` /
//! `RUNTIME_STATE_DIR` as `marina serve`.
//!
//! Exit codes: 0 success; 1 a database error; 2 bad input (name, role, permission, expiry, an
//! unknown id).

use std::path::PathBuf;
use std::process::ExitCode;

use marina_auth::keys::{KeyStore, NewKey};
use marina_core::Error;
use marina_store::Store;

/// `marina keys ...`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,

    /// The database: `sqlite://path` or `postgres://user:pass@host/db`
    /// (default `sqlite://{state-dir}/marina.db`).
    #[arg(long, env = "DATABASE_URL", global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Where marina keeps its state (the default SQLite file).
    #[arg(long, env = "RUNTIME_STATE_DIR", global = true, default_value = "./.marina", value_name = "DIR")]
    pub state_dir: PathBuf,
}

/// The `marina keys` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// A name for the key.
        #[arg(long)]
        name: String,
        /// admin, editor, viewer or custom [default: editor].
        #[arg(long)]
        role: Option<String>,
        /// For --role custom: comma-separated permissions (see `marina keys meta`).
        #[arg(long, value_delimiter = ',')]
        permissions: Vec<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// never, or a count of days, weeks, months or years: 30d, 2w, 6m, 1y [default: never].
        #[arg(long)]
        expires_in: Option<String>,
        /// Print JSON ({"id", "key", "keyPrefix", "name", "role"}) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys that are not revoked (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id: it stops working at once.
    Revoke {
        /// The key's id (from `marina keys list`).
        id: i64,
    },
    /// Print the roles and permissions.
    Meta,
}

/// Run a `marina keys` command.
pub async fn run(args: KeysArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marina: {e}");
            if e.status().is_client_error() { ExitCode::from(2) } else { ExitCode::from(1) }
        }
    }
}

async fn run_inner(args: KeysArgs) -> Result<(), Error> {
    if let KeysCommand::Meta = args.command {
        let meta = serde_json::json!({
            "roles": marina_auth::keys::ALL_ROLES,
            "permissions": marina_auth::keys::ALL_PERMISSIONS,
        });
        println!("{}", serde_json::to_string_pretty(&meta).unwrap_or_default());
        return Ok(());
    }
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| Error::internal(format!("cannot create the state dir {}: {e}", args.state_dir.display())))?;
    let store = Store::open(args.database_url.as_deref(), &args.state_dir).await?;
    store.migrate_system().await?;
    let keys = KeyStore::new(store);
    match args.command {
        KeysCommand::Create { name, role, permissions, description, expires_in, json } => {
            let created = keys
                .create(
                    NewKey {
                        name: Some(name),
                        role,
                        permissions: (!permissions.is_empty()).then_some(permissions),
                        description,
                        expires_in,
                    },
                    None,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string(&created).unwrap_or_default());
            } else {
                println!("{}", created.key);
                eprintln!(
                    "created key {} ({}, role {}); it is shown only now: store it safely",
                    created.id,
                    created.key_prefix,
                    created.role.as_str()
                );
            }
        }
        KeysCommand::List { json } => {
            let list = keys.list().await?;
            if json {
                println!("{}", serde_json::to_string(&serde_json::json!({ "keys": list })).unwrap_or_default());
            } else if list.is_empty() {
                println!("no keys");
            } else {
                println!("{:<5} {:<14} {:<8} {:<30} {:<30} NAME", "ID", "PREFIX", "ROLE", "EXPIRES", "LAST USED");
                for k in list {
                    let when = |t: Option<i64>| {
                        t.map_or_else(
                            || "-".to_string(),
                            |t| {
                                httpdate::fmt_http_date(
                                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
                                )
                            },
                        )
                    };
                    println!(
                        "{:<5} {:<14} {:<8} {:<30} {:<30} {}",
                        k.id,
                        k.key_prefix,
                        k.role.as_str(),
                        when(k.expires_at),
                        when(k.last_used_at),
                        k.name
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            keys.revoke(id).await?;
            println!("revoked key {id}");
        }
        KeysCommand::Meta => {}
    }
    Ok(())
}
