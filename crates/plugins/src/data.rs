//! The keyval (`@buntime/plugin-keyval`, base `/keyval`) and database
//! (`@buntime/plugin-database`, base `/database`) plugins: thin [`Plugin`] adapters around the
//! services of `marina_data`, which owns their HTTP surfaces.
//!
//! Why the services live in their own crate below this one: they are storage front-ends with
//! no business in the pipeline's phases, and keeping them free of the plugin trait lets them be
//! driven directly (tests, benches) while plugins → data keeps every arrow pointing down
//! (data depends on store, workers and auth only).
//!
//! Both answer only under `{base}/api`; the rest of the base is 404 (Buntime serves a UI there,
//! marina has none). Who may call is decided inside each service (worker tokens, admin keys;
//! see `marina_data::access`), not by the API-key guard of other plugins, because an app's
//! worker token must reach its own data. The bases are fixed: workers are told
//! `LIBSQL_URL=…/database/api/` and `RUNTIME_API_URL`, to which apps add `/keyval/api`.

use std::sync::{Arc, OnceLock};

use http::{Request, Response};
use marina_core::{Body, Error};
use marina_data::{Access, Database, Keyval};

use crate::context::RequestContext;
use crate::plugin::{Phases, Plugin, PluginEnv, PluginSpec};

/// The keyval plugin's manifest name.
pub const KEYVAL: &str = "@buntime/plugin-keyval";
/// The database plugin's manifest name.
pub const DATABASE: &str = "@buntime/plugin-database";

fn access(env: &PluginEnv) -> Access {
    Access { tokens: env.tokens.clone(), auth: Some(env.auth.clone()) }
}

/// Refuse a base other than the one workers are told about.
fn fixed_base(spec: &PluginSpec, base: &str) -> Result<(), Error> {
    if spec.base == base {
        return Ok(());
    }
    Err(Error::internal(format!(
        "plugin {}: `base` must be {base} (workers are given URLs under it), found {:?}",
        spec.name, spec.base
    ))
    .with_data(serde_json::json!({ "path": "base" })))
}

/// The path below `/api` of a request whose base was stripped, or 404.
fn api_rest<'p>(req: &'p Request<Body>, ctx: &RequestContext) -> Result<&'p str, Error> {
    marina_data::under(req.uri().path(), "/api")
        .ok_or_else(|| Error::not_found(format!("nothing is served at '{}'", ctx.path)))
}

/// The keyval plugin.
pub struct KeyvalPlugin {
    spec: PluginSpec,
    service: OnceLock<Keyval>,
}

impl KeyvalPlugin {
    /// The catalog entry. The manifest's options are the engine's limits
    /// (`marina_data::keyval::limits`); a bad one fails the plugin's start, naming it.
    pub fn factory() -> crate::Factory {
        Arc::new(|spec: &PluginSpec, _env: &PluginEnv| {
            fixed_base(spec, "/keyval")?;
            Ok(Arc::new(KeyvalPlugin { spec: spec.clone(), service: OnceLock::new() }) as Arc<dyn Plugin>)
        })
    }
}

#[crate::async_trait]
impl Plugin for KeyvalPlugin {
    fn phases(&self) -> Phases {
        Phases::NONE
    }

    async fn init(&self, env: &PluginEnv) -> Result<(), Error> {
        let limits = marina_data::keyval::limits::limits_from_options(&self.spec.options)?;
        let kv = marina_store::kv::Kv::open(env.store.clone(), limits).await?;
        let _ = self.service.set(Keyval::new(kv, access(env)));
        Ok(())
    }

    fn has_routes(&self) -> bool {
        true
    }

    async fn handle(&self, req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        let Some(service) = self.service.get() else {
            return Err(Error::unavailable("PLUGIN_NOT_READY", format!("plugin {KEYVAL} is not initialised")));
        };
        let rest = api_rest(&req, ctx)?.to_string();
        service.handle(req, &rest).await
    }
}

/// The database plugin.
pub struct DatabasePlugin {
    service: OnceLock<Database>,
}

impl DatabasePlugin {
    /// The catalog entry.
    pub fn factory() -> crate::Factory {
        Arc::new(|spec: &PluginSpec, _env: &PluginEnv| {
            fixed_base(spec, "/database")?;
            Ok(Arc::new(DatabasePlugin { service: OnceLock::new() }) as Arc<dyn Plugin>)
        })
    }
}

#[crate::async_trait]
impl Plugin for DatabasePlugin {
    fn phases(&self) -> Phases {
        Phases::NONE
    }

    async fn init(&self, env: &PluginEnv) -> Result<(), Error> {
        let db = Database::new(access(env), env.store.clone(), env.database_url.clone(), env.state_dir.clone());
        let _ = self.service.set(db);
        Ok(())
    }

    fn has_routes(&self) -> bool {
        true
    }

    async fn handle(&self, req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        let Some(service) = self.service.get() else {
            return Err(Error::unavailable("PLUGIN_NOT_READY", format!("plugin {DATABASE} is not initialised")));
        };
        let rest = api_rest(&req, ctx)?.to_string();
        service.handle(req, &rest).await
    }

    async fn shutdown(&self) {
        if let Some(service) = self.service.get() {
            service.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_other_than_the_one_workers_know_is_refused() {
        assert!(fixed_base(&PluginSpec::new(DATABASE, "/database"), "/database").is_ok());
        let e = fixed_base(&PluginSpec::new(DATABASE, "/db"), "/database").unwrap_err();
        assert!(e.message().contains("`base` must be /database") && e.message().contains("\"/db\""), "{}", e.message());
        assert_eq!(e.data().unwrap()["path"], "base");
    }
}
