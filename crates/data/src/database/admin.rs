//! Buntime's admin routes of the database plugin: tenants (app databases), tables, a table's
//! schema and rows, and arbitrary SQL (`query`). Admin keys only.

use std::collections::HashMap;

use base64::Engine as _;
use http::{Response, StatusCode};
use marina_core::{Body, Error};
use marina_store::{BackendKind, Store, Value, sql};
use serde_json::{Value as Json, json};

use super::Database;
use crate::web;

fn cell(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        Value::Real(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Bool(b) => json!(b),
    }
}

fn row_object(r: &marina_store::Row) -> Json {
    Json::Object(r.columns().iter().cloned().zip(r.values().iter().map(cell)).collect())
}

async fn list_tables(store: &Store) -> Result<Vec<(String, String)>, Error> {
    let q = match store.kind() {
        BackendKind::Sqlite => {
            "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        BackendKind::Postgres => {
            "SELECT table_name::text AS name, CASE table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END AS type \
             FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name"
        }
    };
    store.query(q, &[]).await?.iter().map(|r| Ok((r.get("name")?, r.get("type")?))).collect()
}

async fn known_table(store: &Store, name: &str) -> Result<(), Error> {
    if list_tables(store).await?.iter().any(|(n, _)| n == name) {
        Ok(())
    } else {
        Err(Error::new(StatusCode::NOT_FOUND, "TABLE_NOT_FOUND", format!("no table or view '{name}'"))
            .with_data(json!({ "table": name })))
    }
}

pub(super) async fn tables(db: &Database, tenant: &str) -> Result<Response<Body>, Error> {
    let h = db.hrana(tenant).await?;
    let t = list_tables(h.store()).await?;
    Ok(web::ok(
        &json!({ "tables": t.iter().map(|(n, ty)| json!({ "name": n, "type": ty })).collect::<Vec<_>>(), "type": db.kind_name() }),
    ))
}

pub(super) async fn schema(db: &Database, tenant: &str, table: &str) -> Result<Response<Body>, Error> {
    let h = db.hrana(tenant).await?;
    let store = h.store();
    known_table(store, table).await?;
    let columns: Vec<Json> = match store.kind() {
        BackendKind::Sqlite => store
            .query("SELECT name, type, \"notnull\" AS nn, pk FROM pragma_table_info($1) ORDER BY cid", &[table.into()])
            .await?
            .iter()
            .map(|r| Ok(json!({ "name": r.get::<String>("name")?, "type": r.get::<String>("type")?, "nullable": r.get::<i64>("nn")? == 0, "pk": r.get::<i64>("pk")? > 0 })))
            .collect::<Result<_, Error>>()?,
        BackendKind::Postgres => store
            .query(
                "SELECT c.column_name::text AS name, c.data_type::text AS type, c.is_nullable::text AS nullable, \
                 EXISTS (SELECT 1 FROM information_schema.key_column_usage k JOIN information_schema.table_constraints t \
                   ON t.constraint_name = k.constraint_name AND t.table_schema = k.table_schema \
                   WHERE t.constraint_type = 'PRIMARY KEY' AND k.table_schema = c.table_schema AND k.table_name = c.table_name AND k.column_name = c.column_name) AS pk \
                 FROM information_schema.columns c WHERE c.table_schema = current_schema() AND c.table_name = $1 ORDER BY c.ordinal_position",
                &[table.into()],
            )
            .await?
            .iter()
            .map(|r| Ok(json!({ "name": r.get::<String>("name")?, "type": r.get::<String>("type")?, "nullable": r.get::<String>("nullable")? == "YES", "pk": r.get::<bool>("pk")? })))
            .collect::<Result<_, Error>>()?,
    };
    Ok(web::ok(&json!({ "table": table, "type": db.kind_name(), "columns": columns })))
}

pub(super) async fn rows(
    db: &Database,
    tenant: &str,
    table: &str,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, Error> {
    let limit = web::query_num(q, "limit")?.unwrap_or(100).min(1000);
    let offset = web::query_num(q, "offset")?.unwrap_or(0);
    let h = db.hrana(tenant).await?;
    let store = h.store();
    known_table(store, table).await?;
    // The name is one listed by the catalog, and quoted: never interpolated as given.
    let ident = sql::quote_ident(table);
    let rows = store
        .query(
            &format!("SELECT * FROM {ident} LIMIT $1 OFFSET $2"),
            &[Value::Integer(limit as i64), Value::Integer(offset as i64)],
        )
        .await?;
    let total: i64 = store
        .query_opt(&format!("SELECT COUNT(*) AS n FROM {ident}"), &[])
        .await?
        .map(|r| r.get("n"))
        .transpose()?
        .unwrap_or(0);
    Ok(web::ok(
        &json!({ "table": table, "rows": rows.iter().map(row_object).collect::<Vec<_>>(), "total": total, "limit": limit, "offset": offset }),
    ))
}

/// Arbitrary SQL, run through the Hrana executor so a bad statement is a 400 with the
/// driver's message (Buntime answered 500) and the connection rules are the same.
pub(super) async fn query(db: &Database, tenant: &str, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let Some(sql_text) = b.get("sql").and_then(Json::as_str) else {
        // Buntime's exact text (its clients compare it); `data.path` names the field.
        return Err(
            Error::bad_request("SQL_INVALID", "Missing or invalid SQL query").with_data(json!({ "path": "sql" }))
        );
    };
    let tenant = b.get("tenant").and_then(Json::as_str).unwrap_or(tenant);
    let h = db.hrana(tenant).await?;
    let started = std::time::Instant::now();
    let resp = h
        .pipeline(&json!({ "requests": [{ "type": "execute", "stmt": { "sql": sql_text } }, { "type": "close" }] }))
        .await?;
    let r = &resp["results"][0];
    if r["type"] == "error" {
        return Err(Error::bad_request(
            "SQL_ERROR",
            r["error"]["message"].as_str().unwrap_or("the statement failed").to_string(),
        )
        .with_data(json!({ "sqlite_code": r["error"]["code"] })));
    }
    let result = &r["response"]["result"];
    let cols: Vec<String> = result["cols"]
        .as_array()
        .map(|c| c.iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    let rows: Vec<Json> = result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let vals = row.as_array().cloned().unwrap_or_default();
                    Json::Object(cols.iter().cloned().zip(vals.iter().map(hrana_cell)).collect())
                })
                .collect()
        })
        .unwrap_or_default();
    let count = if rows.is_empty() { result["affected_row_count"].as_u64().unwrap_or(0) as usize } else { rows.len() };
    Ok(web::ok(&json!({ "rows": rows, "rowCount": count, "duration": started.elapsed().as_millis() as u64 })))
}

/// A Hrana value as plain JSON (integers as numbers when they fit a double exactly).
fn hrana_cell(v: &Json) -> Json {
    match v["type"].as_str() {
        Some("integer") => {
            let t = v["value"].as_str().unwrap_or("0");
            match t.parse::<i64>() {
                Ok(i) if i.unsigned_abs() < (1 << 53) => json!(i),
                _ => json!(t),
            }
        }
        Some("float") => v["value"].clone(),
        Some("text") => v["value"].clone(),
        Some("blob") => v["base64"].clone(),
        _ => Json::Null,
    }
}

pub(super) async fn tenants(db: &Database) -> Result<Response<Body>, Error> {
    let mut names: Vec<String> = match db.inner.kind {
        BackendKind::Sqlite => std::fs::read_dir(db.inner.state_dir.join("apps"))
            .map(|rd| {
                // One dir per app holding its `app.db` (marina_store::app_sqlite_path).
                rd.flatten()
                    .filter(|e| e.path().join("app.db").is_file())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        BackendKind::Postgres => {
            db.inner
                .system
                .query("SELECT schema_name::text AS s FROM information_schema.schemata WHERE schema_name LIKE 'app\\_%' ORDER BY schema_name", &[])
                .await?
                .iter()
                .map(|r| r.get::<String>("s").map(|s| s.trim_start_matches("app_").to_string()))
                .collect::<Result<_, _>>()?
        }
    };
    names.sort();
    Ok(web::ok(&json!({ "tenants": names, "type": db.kind_name() })))
}

pub(super) async fn create_tenant(db: &Database, body: Body) -> Result<Response<Body>, Error> {
    let b = web::json_required(body).await?;
    let Some(id) = b.get("id").and_then(Json::as_str) else {
        // Buntime's exact text (its clients compare it); `data.path` names the field.
        return Err(
            Error::bad_request("TENANT_INVALID", "Missing or invalid tenant id").with_data(json!({ "path": "id" }))
        );
    };
    let ident = sql::app_ident(id)?;
    db.hrana(id).await?.store().query("SELECT 1 AS ok", &[]).await?;
    Ok(web::reply(StatusCode::CREATED, &json!({ "ok": true, "id": ident, "type": db.kind_name() })))
}

pub(super) async fn delete_tenant(db: &Database, id: &str) -> Result<Response<Body>, Error> {
    let ident = sql::app_ident(id)?;
    db.inner.open.lock().await.remove(&ident);
    match db.inner.kind {
        BackendKind::Sqlite => {
            let path = marina_store::app_sqlite_path(&db.inner.state_dir, &ident);
            if !path.exists() {
                return Err(Error::new(StatusCode::NOT_FOUND, "TENANT_NOT_FOUND", format!("no tenant '{ident}'")));
            }
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            marina_store::release_app_database(&db.inner.state_dir, &ident);
        }
        BackendKind::Postgres => {
            // The app's role stays (its password in marina_app_roles): a tenant created again
            // under the same name gets it back.
            db.inner
                .system
                .execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", sql::quote_ident(&format!("app_{ident}"))), &[])
                .await?;
        }
    }
    Ok(web::ok(&json!({ "ok": true })))
}
