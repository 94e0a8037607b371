//! From plugin directories to a running [`PluginSet`]: read the manifests, match each to a
//! plugin marina implements (the [`Catalog`]), order them by their dependencies, build and
//! `init` them in that order. Used at start-up and by `POST /api/plugins/reload`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use marina_core::Error;
use serde_json::json;

use crate::manifest::{self, Discovered};
use crate::order::{Node, load_order};
use crate::plugin::{Factory, PluginEnv};
use crate::set::{Loaded, PluginSet};

/// The plugins marina can run, by name. Buntime's names are accepted for each:
/// `@buntime/plugin-gateway`, `plugin-gateway` and `gateway` are one plugin.
#[derive(Clone, Default)]
pub struct Catalog {
    factories: Vec<(String, Factory)>,
}

/// `@buntime/plugin-keyval` → `keyval`; other names unchanged (lower-cased).
pub fn canonical(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    let n = n.strip_prefix("@buntime/").unwrap_or(&n);
    n.strip_prefix("plugin-").unwrap_or(n).to_string()
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// marina's core plugins: the proxy plugin (`@buntime/plugin-proxy`, `/redirects`), the
    /// gateway (`@buntime/plugin-gateway`, `/gateway`), keyval (`@buntime/plugin-keyval`,
    /// `/keyval`) and database (`@buntime/plugin-database`, `/database`). Each core plugin
    /// registers here as it lands.
    pub fn builtin() -> Self {
        let mut catalog = Self::new();
        catalog.register(crate::proxy::NAME, crate::proxy::factory());
        catalog.register(crate::gateway::NAME, crate::gateway::Gateway::factory());
        catalog.register(crate::data::KEYVAL, crate::data::KeyvalPlugin::factory());
        catalog.register(crate::data::DATABASE, crate::data::DatabasePlugin::factory());
        catalog
    }

    /// Add a plugin under `name` (and so under its Buntime spellings).
    pub fn register(&mut self, name: &str, factory: Factory) -> &mut Self {
        self.factories.push((canonical(name), factory));
        self
    }

    /// The factory for a manifest name.
    pub fn get(&self, name: &str) -> Option<&Factory> {
        let key = canonical(name);
        self.factories.iter().find(|(n, _)| *n == key).map(|(_, f)| f)
    }
}

/// Bases a plugin may not take: the internal API's first segment and `/.well-known`.
pub fn reserved_bases(api_base: &str) -> Vec<String> {
    let first = api_base.trim_start_matches('/').split('/').next().unwrap_or("api");
    vec![format!("/{first}"), "/.well-known".to_string()]
}

/// Load the plugins of `dirs`: `extra` (built in code) first, then the manifests in
/// dependency order. A manifest the catalog does not know but that names an `entrypoint` is an
/// external plugin ([`crate::external`]). Plugins that are disabled, unknown to the catalog
/// without an entrypoint, missing a required
/// dependency, or whose `init` fails are left out with a warning (and so are their dependents)
/// — except a plugin with request hooks that is not `onRequestFailOpen`: its `init` failing
/// stops the load, as its hook failing at request time answers 503, because serving without a
/// gateway or an auth hook that was configured would be failing open.
///
/// # Errors
/// A manifest that cannot be read or is invalid (its path and key), a plugin whose factory
/// refuses its configuration (its options or variables), a fail-closed hook plugin whose
/// `init` fails, a dependency cycle (its members), two plugins answering under the same base.
pub async fn load(
    dirs: &[PathBuf],
    catalog: &Catalog,
    env: &PluginEnv,
    extra: Vec<Loaded>,
) -> Result<PluginSet, Error> {
    let reserved = reserved_bases(&env.api_base);
    let mut specs = Vec::new();
    let mut seen: HashSet<String> = extra.iter().map(|p| canonical(&p.spec.name)).collect();
    for Discovered { found, spec, disabled } in manifest::discover(dirs, &reserved) {
        let spec = spec?;
        if disabled {
            tracing::info!(plugin = %spec.name, "plugin disabled in its manifest");
            continue;
        }
        if !seen.insert(canonical(&spec.name)) {
            tracing::warn!(plugin = %spec.name, dir = %found.path.display(), "a plugin of this name was found earlier; this one is ignored");
            continue;
        }
        if catalog.get(&spec.name).is_none() && spec.entrypoint.is_none() {
            tracing::warn!(plugin = %spec.name, dir = %found.path.display(), "plugin skipped: marina has no plugin of this name and its manifest names no entrypoint");
            continue;
        }
        specs.push(spec);
    }
    let known: Vec<String> = extra.iter().map(|p| canonical(&p.spec.name)).collect();
    let canon: Vec<(String, Vec<String>, Vec<String>)> = specs
        .iter()
        .map(|s| {
            let deps = |v: &[String]| v.iter().map(|d| canonical(d)).filter(|d| !known.contains(d)).collect();
            (canonical(&s.name), deps(&s.dependencies), deps(&s.optional_dependencies))
        })
        .collect();
    let nodes: Vec<Node> = canon.iter().map(|(n, r, o)| Node { name: n, requires: r, optional: o }).collect();
    let (order, skipped) = load_order(&nodes).map_err(|cycle| {
        // "Circular dependency" is Buntime's wording, which its tooling looks for.
        Error::internal(format!("Circular dependency between plugins (plugin dependency cycle: {})", cycle.join(" → ")))
            .with_data(json!({ "cycle": cycle }))
    })?;
    for s in skipped {
        tracing::warn!(plugin = %s.name, missing = %s.missing, "plugin skipped: a required dependency is missing or was skipped");
    }
    let mut loaded = extra;
    let mut failed: HashSet<String> = HashSet::new();
    for i in order {
        let spec = specs[i].clone();
        if let Some(dep) = canon[i].1.iter().find(|d| failed.contains(*d)) {
            tracing::warn!(plugin = %spec.name, missing = %dep, "plugin skipped: a required dependency failed to start");
            failed.insert(canon[i].0.clone());
            continue;
        }
        // A built-in plugin of the name wins; otherwise the dir is an external plugin, whose
        // entrypoint runs as a worker app (only those with an entrypoint were kept).
        let factory = catalog.get(&spec.name).cloned().unwrap_or_else(crate::external::External::factory);
        // A configuration the plugin refuses stops the load (start-up, or the reload, which then
        // keeps the old set): skipping a gateway whose limit is mistyped would silently serve
        // without the protection it was configured for.
        let plugin = factory(&spec, env).map_err(|e| {
            Error::internal(format!("plugin '{}' is misconfigured: {}", spec.name, e.message()))
                .with_data(json!({ "plugin": spec.name, "dir": spec.dir }))
        })?;
        let phases = plugin.phases();
        let guards_requests = (phases.early_request || phases.on_request) && !spec.fail_open;
        match plugin.init(env).await {
            Ok(()) => loaded.push(Loaded::new(spec, plugin)),
            Err(e) if guards_requests => {
                return Err(Error::internal(format!(
                    "plugin '{}' failed to start: {} (it checks requests and is not onRequestFailOpen, so marina does not serve without it)",
                    spec.name,
                    e.message()
                ))
                .with_data(json!({ "plugin": spec.name, "dir": spec.dir })));
            }
            Err(e) => {
                tracing::error!(plugin = %spec.name, error = %e, "plugin failed to start; it and its dependents are skipped");
                failed.insert(canon[i].0.clone());
            }
        }
    }
    let mut bases: Vec<(&str, &str)> = Vec::new();
    for p in loaded.iter().filter(|p| p.plugin.has_routes() && !p.spec.base.is_empty()) {
        if let Some((other, _)) = bases.iter().find(|(_, b)| *b == p.spec.base) {
            return Err(Error::internal(format!(
                "plugins '{other}' and '{}' both answer under {}",
                p.spec.name, p.spec.base
            )));
        }
        bases.push((&p.spec.name, &p.spec.base));
    }
    Ok(PluginSet::new(loaded))
}

/// Shut down the instances of `old` that `new` does not carry over.
pub async fn retire(old: &PluginSet, new: &PluginSet) {
    let kept: Vec<&Arc<dyn crate::Plugin>> = new.plugins().iter().map(|p| &p.plugin).collect();
    let gone: Vec<Loaded> =
        old.plugins().iter().filter(|p| !kept.iter().any(|k| Arc::ptr_eq(k, &p.plugin))).cloned().collect();
    PluginSet::new(gone).shutdown().await;
}
