//! The proxy plugin, at `/redirects` as in Buntime: reverse-proxy rules matched against the
//! whole request path before routing, from the plugin's configuration (`rules:`, read-only) and
//! from its live API (`/redirects/api/rules`), which stores them in marina's database.
//!
//! A change through the API is live when the API call returns: the new [`RuleSet`] is compiled
//! (one `RegexSet` for every enabled rule) before the change is written, and swapped in after,
//! so a request sees either the old set or the new one. Open WebSockets never look at the rule
//! set again, so no change drops them. Rules are served from memory; marina instances sharing a
//! PostgreSQL database follow each other's changes through `LISTEN`/`NOTIFY` ([`follow`]).

mod api;
mod follow;
mod store;

use std::sync::{Arc, OnceLock};

use http::{Request, Response};
use marina_core::{Body, Error};
use marina_proxy::{ClientInfo, Remote, Rule, RuleSet, RuleSpec, TargetPolicy};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

pub use store::RuleStore;

use crate::context::RequestContext;
use crate::plugin::{Outcome, Phases, Plugin, PluginEnv, PluginSpec};

/// The plugin's name, as Buntime's manifests write it.
pub const NAME: &str = "@buntime/plugin-proxy";
/// Where its API lives.
pub const BASE: &str = "/redirects";
/// Most API rules one marina keeps (each is a regex in the shared set).
pub const MAX_RULES: usize = 1000;

/// The rules and the client, once [`Plugin::init`] has run.
pub struct Rules {
    store: RuleStore,
    policy: TargetPolicy,
    remote: Arc<Remote>,
    statics: Vec<Arc<Rule>>,
    dynamic: Mutex<Vec<Arc<Rule>>>,
    set: RwLock<Arc<RuleSet>>,
    writes: tokio::sync::Mutex<()>,
}

impl Rules {
    /// The rule set requests are matched against now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.set.read().clone()
    }

    fn compile(&self, id: String, spec: RuleSpec) -> Result<Rule, Error> {
        Ok(Rule::compile(id, spec, false, &self.policy)?)
    }

    /// Builds the set for `dynamic`, so a change that cannot compile is refused before it is
    /// written.
    fn build(&self, dynamic: &[Arc<Rule>]) -> Result<RuleSet, Error> {
        Ok(RuleSet::new(self.statics.clone(), dynamic.to_vec())?)
    }

    fn swap(&self, dynamic: Vec<Arc<Rule>>, set: RuleSet) {
        *self.dynamic.lock() = dynamic;
        *self.set.write() = Arc::new(set);
    }

    /// Reads the table again (another instance changed it) and swaps the new set in.
    async fn reload(&self) -> Result<(), Error> {
        let _guard = self.writes.lock().await;
        let dynamic = load(&self.store, &self.policy).await?;
        let set = self.build(&dynamic)?;
        tracing::info!(rules = dynamic.len(), "proxy rules reloaded after a change by another instance");
        self.swap(dynamic, set);
        Ok(())
    }
}

/// Every stored rule, compiled; one that no longer compiles is logged and left out.
async fn load(store: &RuleStore, policy: &TargetPolicy) -> Result<Vec<Arc<Rule>>, Error> {
    let mut dynamic = Vec::new();
    for (id, spec) in store.all().await? {
        match Rule::compile(id.clone(), spec, false, policy) {
            Ok(rule) => dynamic.push(Arc::new(rule)),
            // Valid when written; refused now (a stricter policy, a newer marina).
            Err(e) => tracing::error!(rule = %id, error = %e, "a stored proxy rule is no longer valid; it is ignored"),
        }
    }
    Ok(dynamic)
}

/// The proxy plugin.
pub struct ProxyPlugin {
    spec: PluginSpec,
    rules: OnceLock<Arc<Rules>>,
    router: OnceLock<axum::Router>,
    auth: OnceLock<Arc<marina_auth::Auth>>,
    /// The task following other instances' changes (PostgreSQL).
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ProxyPlugin {
    /// A plugin for `spec` (its `rules` option holds the read-only rules).
    pub fn new(spec: &PluginSpec) -> Self {
        Self {
            spec: spec.clone(),
            rules: OnceLock::new(),
            router: OnceLock::new(),
            auth: OnceLock::new(),
            follower: Mutex::new(None),
        }
    }

    /// The spec marina loads it with when no manifest says otherwise.
    pub fn default_spec() -> PluginSpec {
        PluginSpec::new(NAME, BASE)
    }

    /// The rules, once initialised.
    pub fn rules(&self) -> Option<&Arc<Rules>> {
        self.rules.get()
    }
}

#[crate::async_trait]
impl Plugin for ProxyPlugin {
    async fn init(&self, env: &PluginEnv) -> Result<(), Error> {
        // The server's client and policy (marina's own address refused), shared with app rules.
        let remote = env.remote.clone();
        let mut policy = remote.config().policy.clone();
        policy.add_own(env.listen);
        let mut statics = Vec::new();
        if let Some(v) = self.spec.options.get("rules").filter(|v| !v.is_null()) {
            let Value::Array(items) = v else {
                return Err(Error::internal(format!("plugin {NAME}: `rules` must be a list of rules")));
            };
            for (i, item) in items.iter().enumerate() {
                let spec: RuleSpec = serde_json::from_value(item.clone())
                    .map_err(|e| Error::internal(format!("plugin {NAME}: `rules[{i}]`: {e}")))?;
                let id = spec.id.clone().unwrap_or_else(|| format!("static-{i}"));
                let rule = Rule::compile(id, spec, true, &policy)
                    .map_err(|e| Error::internal(format!("plugin {NAME}: {}", e.within(&format!("rules[{i}]")))))?;
                statics.push(Arc::new(rule));
            }
        }
        let store = RuleStore::new(env.store.clone());
        // Listen before reading, so that no change made in between goes unseen.
        let session = follow::listen(&env.store).await;
        // A marina.db this start created has no stored rules (and is still being migrated).
        let dynamic = if env.store.is_new() { Vec::new() } else { load(&store, &policy).await? };
        let set = RuleSet::new(statics.clone(), dynamic.clone())
            .map_err(|e| Error::internal(format!("plugin {NAME}: the rules do not compile together: {e}")))?;
        let rules = Arc::new(Rules {
            store,
            policy,
            remote,
            statics,
            dynamic: Mutex::new(dynamic),
            set: RwLock::new(Arc::new(set)),
            writes: tokio::sync::Mutex::new(()),
        });
        // The API is behind marina's API keys, with the internal API's rules (the server's one
        // Auth, see `api::guard`): once the root key is set or any key exists, reading needs a
        // key and changing needs an admin key (or the root key); before that, changes need a
        // same-host Origin (CSRF). JWTs are for apps, never for this API.
        let _ = self.auth.set(env.auth.clone());
        let _ = self.router.set(api::router(rules.clone()));
        if let Some(rx) = session {
            let task = follow::follow(Arc::downgrade(&rules), env.store.clone(), rules.store.origin().to_string(), rx);
            *self.follower.lock() = Some(tokio::spawn(task));
        }
        let _ = self.rules.set(rules);
        Ok(())
    }

    fn phases(&self) -> Phases {
        Phases { on_request: true, ..Phases::NONE }
    }

    async fn on_request(&self, req: &mut Request<Body>, ctx: &mut RequestContext) -> Result<Outcome, Error> {
        let Some(rules) = self.rules.get() else { return Ok(Outcome::Continue) };
        let set = rules.current();
        let Some(m) = set.find(req.uri().path()) else { return Ok(Outcome::Continue) };
        let path = req.uri().path().to_string();
        // The request (with hyper's upgrade handle in its extensions) goes upstream whole.
        let owned = std::mem::replace(req, Request::new(marina_core::body::empty()));
        let client = ClientInfo { ip: ctx.client_ip, proto: "http" };
        // Boxed on its own: this hook runs for every request, and its future (which the plugin
        // trait boxes) would otherwise hold the whole forward inline, so every request — most
        // match no rule — paid for copying a future of that size into its box (~400
        // instructions of memcpy a request, callgrind on `bench/js-hop.sh`'s app).
        let resp = Box::pin(rules.remote.forward(&m.rule, &path, owned, client)).await?;
        Ok(Outcome::Respond(resp))
    }

    async fn shutdown(&self) {
        if let Some(task) = self.follower.lock().take() {
            task.abort();
        }
    }

    fn has_routes(&self) -> bool {
        true
    }

    async fn handle(&self, req: Request<Body>, ctx: &mut RequestContext) -> Result<Response<Body>, Error> {
        let Some(router) = self.router.get() else {
            return Err(Error::unavailable("PLUGIN_NOT_READY", format!("plugin {NAME} is not initialised")));
        };
        if !req.uri().path().starts_with("/api/") {
            return Err(Error::not_found(format!("nothing is served at '{}'", ctx.path)));
        }
        if let Some(auth) = self.auth.get() {
            crate::api::guard(auth, req.method(), req.headers(), &ctx.path, ctx.connection()).await?;
        }
        crate::api::call(router, req).await
    }
}

/// The factory marina registers the plugin under.
pub fn factory() -> crate::plugin::Factory {
    Arc::new(|spec: &PluginSpec, _env: &PluginEnv| Ok(Arc::new(ProxyPlugin::new(spec)) as Arc<dyn Plugin>))
}
