//! The database plugin at `/database/api`: each app's own database over HTTP.
//!
//! - The standard Hrana-over-HTTP pipeline (`marina_store::hrana`) at the paths sqld serves,
//!   relative to `LIBSQL_URL` (`{origin}/database/api/`): `POST v2/pipeline`, `POST
//!   v3/pipeline`, `GET v2` / `GET v3` (version checks). `GET v3-protobuf` answers 404, which
//!   makes clients that probe for protobuf fall back to JSON. `@libsql/client` (HTTP) posts to
//!   `v2/pipeline` directly.
//! - Buntime's pipeline shape at `POST pipeline` (results not nested under `response`).
//! - Buntime's admin routes (`tables`, `tables/:name/schema`, `tables/:name/rows`, `query`,
//!   `tenants`) for admin keys only; `health` for everyone.
//!
//! A worker token reaches its app's database; an admin key picks one with `?tenant=` or the
//! `x-database-namespace` header (default `default`). Tenants are app databases.
//!
//! On PostgreSQL each tenant's SQL runs logged in as the app's own role
//! (`marina_store::app_role`), which can use only the app's schema: a schema-qualified name
//! cannot reach marina's tables or another app's, whether the caller is the app's worker or an
//! admin key. On SQLite each app has a file of its own.

mod admin;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use marina_core::{Body, Error};
use marina_store::hrana::{Hrana, to_buntime_shape};
use marina_store::{BackendKind, Store};
use serde_json::json;
use tokio::sync::Mutex;

use crate::access::{Access, Caller};
use crate::web;

/// The plugin's base path.
pub const BASE: &str = "/database";

/// The database plugin.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    access: Access,
    system: Store,
    database_url: Option<String>,
    state_dir: PathBuf,
    kind: BackendKind,
    open: Mutex<HashMap<String, Arc<Hrana>>>,
}

impl Database {
    /// The plugin over the app databases beside marina's own store `system` (`database_url`
    /// and `state_dir` as marina was started with).
    pub fn new(access: Access, system: Store, database_url: Option<String>, state_dir: PathBuf) -> Self {
        let kind = system.kind();
        Self { inner: Arc::new(Inner { access, system, database_url, state_dir, kind, open: Mutex::default() }) }
    }

    /// Close every open app database (their connections go when the last request using them ends).
    pub async fn close(&self) {
        self.inner.open.lock().await.clear();
    }

    /// The executor of app (tenant) `name`'s database, opened on first use.
    async fn hrana(&self, name: &str) -> Result<Arc<Hrana>, Error> {
        let ident = marina_store::sql::app_ident(name)?;
        let mut open = self.inner.open.lock().await;
        if let Some(h) = open.get(&ident) {
            return Ok(h.clone());
        }
        let i = &self.inner;
        let store = Store::open_app_as_app(&i.system, i.database_url.as_deref(), &i.state_dir, name).await?;
        let h = Arc::new(Hrana::new(store));
        open.insert(ident, h.clone());
        Ok(h)
    }

    /// Serve a request whose path is under `/database/api`; `rest` is the path after it.
    ///
    /// # Errors
    /// Every failure as a `marina_core::Error` (rendered at the server's edge).
    pub async fn handle(&self, req: Request<Body>, rest: &str) -> Result<Response<Body>, Error> {
        // Parts, not the request: the body is not `Sync` (see keyval).
        let (parts, body) = req.into_parts();
        // HEAD is GET without the body (hyper drops it): every GET route here only reads.
        let method = if parts.method == Method::HEAD { Method::GET } else { parts.method.clone() };
        let segs: Vec<String> = rest.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(web::decode).collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let allow = allowed(&segs);
        if !allow.is_empty() && !allow.contains(&method.as_str()) {
            return Err(web::method_not_allowed(&parts.method, &format!("/database/api/{}", segs.join("/")), allow));
        }
        let q = web::query(parts.uri.query());
        let adapter = self.adapter_type(&q)?;
        match (&method, segs.as_slice()) {
            (&Method::GET, ["health"]) => return self.health(adapter).await,
            (&Method::GET, ["v2"] | ["v3"]) => return Ok(web::ok(&json!({}))),
            (&Method::GET, ["v3-protobuf"]) => {
                return Err(Error::new(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "marina speaks Hrana over JSON only (v2, v3)",
                ));
            }
            _ => {}
        }
        let caller = self.inner.access.caller(&parts.headers).await?;
        let tenant = match &caller {
            Caller::App(app) => app.clone(),
            Caller::Admin => q
                .get("tenant")
                .filter(|t| !t.is_empty())
                .cloned()
                .or_else(|| parts.headers.get("x-database-namespace").and_then(|v| v.to_str().ok()).map(str::to_string))
                .unwrap_or_else(|| "default".into()),
        };
        if let Caller::App(app) = &caller {
            // An app reaches only a database it owns: another app whose name maps to the same
            // database (`Foo-Bar` and `foo_bar`) is refused (marina_store::claim_app_database).
            let i = &self.inner;
            Store::claim_app(i.database_url.as_deref(), &i.state_dir, app)?;
        }
        let admin_only = || -> Result<(), Error> {
            match caller {
                Caller::Admin => Ok(()),
                Caller::App(_) => Err(Error::new(StatusCode::FORBIDDEN, "FORBIDDEN", "this route needs an admin key")),
            }
        };
        match (&method, segs.as_slice()) {
            (&Method::POST, ["v2", "pipeline"] | ["v3", "pipeline"]) => {
                let b = web::json_required(body).await?;
                Ok(web::ok(&self.hrana(&tenant).await?.pipeline(&b).await?))
            }
            (&Method::POST, ["pipeline"]) => {
                let b = web::json_required(body).await?;
                Ok(web::ok(&to_buntime_shape(self.hrana(&tenant).await?.pipeline(&b).await?)))
            }
            (&Method::GET, ["adapters"]) => {
                Ok(web::ok(&json!({ "adapters": [self.kind_name()], "default": self.kind_name() })))
            }
            (&Method::GET, ["tenants"]) => {
                admin_only()?;
                admin::tenants(self).await
            }
            (&Method::POST, ["tenants"]) => {
                admin_only()?;
                admin::create_tenant(self, body).await
            }
            (&Method::DELETE, ["tenants", id]) => {
                admin_only()?;
                admin::delete_tenant(self, id).await
            }
            (&Method::GET, ["tables"]) => {
                admin_only()?;
                admin::tables(self, &tenant).await
            }
            (&Method::GET, ["tables", name, "schema"]) => {
                admin_only()?;
                admin::schema(self, &tenant, name).await
            }
            (&Method::GET, ["tables", name, "rows"]) => {
                admin_only()?;
                admin::rows(self, &tenant, name, &q).await
            }
            (&Method::POST, ["query"]) => {
                admin_only()?;
                admin::query(self, &tenant, body).await
            }
            _ => Err(Error::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("no database route {method} /database/api/{}", segs.join("/")),
            )),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.inner.kind {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }

    /// The names `?type=` may give this marina's one backend: its own, and `libsql` for SQLite
    /// (Buntime's default adapter, which its clients send).
    fn accepts(&self, name: &str) -> bool {
        name == self.kind_name() || (self.inner.kind == BackendKind::Sqlite && name == "libsql")
    }

    /// Buntime's `?type=` adapter choice: absent or a name of this backend is fine (and echoed by
    /// `health`); another is 400 `ADAPTER_NOT_CONFIGURED` (Buntime: 500 "... not configured")
    /// rather than an answer from a backend the caller did not ask for.
    fn adapter_type<'q>(&self, q: &'q HashMap<String, String>) -> Result<Option<&'q str>, Error> {
        match q.get("type").map(String::as_str).filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) if self.accepts(t) => Ok(Some(t)),
            Some(t) => Err(Error::bad_request(
                "ADAPTER_NOT_CONFIGURED",
                format!(
                    "type: adapter {t:?} is not configured; this marina has {}{}",
                    self.kind_name(),
                    if self.inner.kind == BackendKind::Sqlite { " (also accepted as libsql)" } else { "" }
                ),
            )
            .with_data(json!({ "path": "type", "adapters": [self.kind_name()] }))),
        }
    }

    async fn health(&self, adapter: Option<&str>) -> Result<Response<Body>, Error> {
        let probe = async {
            let h = self.hrana("default").await?;
            h.store().query("SELECT 1 AS ok", &[]).await
        };
        let (status, state, error) = match probe.await {
            Ok(_) => (StatusCode::OK, "healthy", None),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy", Some(e.message().to_string())),
        };
        let mut body = json!({ "status": state, "adapters": { self.kind_name(): state } });
        if let Some(t) = adapter {
            body["type"] = json!(t);
        }
        if let Some(e) = error {
            body["error"] = json!(e);
        }
        Ok(web::reply(status, &body))
    }
}

/// The methods [`Database::handle`] serves at `segs` (none: no such route), for 405's `Allow`.
fn allowed(segs: &[&str]) -> &'static [&'static str] {
    match segs {
        ["health"] | ["v2" | "v3" | "v3-protobuf"] | ["adapters"] | ["tables"] => &["GET", "HEAD"],
        ["tables", _, "schema" | "rows"] => &["GET", "HEAD"],
        ["v2" | "v3", "pipeline"] | ["pipeline"] | ["query"] => &["POST"],
        ["tenants"] => &["GET", "HEAD", "POST"],
        ["tenants", _] => &["DELETE"],
        _ => &[],
    }
}
