//! The route table: where a request goes after the `on_request` hooks, as an ordered list of
//! steps. The first step that claims the path wins:
//!
//! 1. the internal API (`{RUNTIME_API_PREFIX}/api/*`) and discovery (`/.well-known/buntime`);
//! 2. plugin routes, longest base first (`/keyval/api/...` → the keyval plugin; an external
//!    plugin's base → its app, through the worker pool);
//! 3. apps (`/:app[@range]/*`), when the first segment resolves to an app version;
//! 4. the app shell, when a plugin serves one and the request is the shell's (the gateway's
//!    `GATEWAY_SHELL_DIR` and `Sec-Fetch-Dest` rules);
//! 5. marina's own `/` and `/favicon.ico`;
//! 6. 404.

use marina_apps::registry::Resolved;
use marina_plugins::{Loaded, PluginSet};

use crate::Runtime;
use crate::dispatch::split_app_path;

/// One step of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `{prefix}/api` and below.
    InternalApi,
    /// `/.well-known/buntime` (and `/.well-known/marina`).
    WellKnown,
    /// Plugins with routes, longest base first.
    PluginRoutes,
    /// `/:app[@range]/*`.
    Apps,
    /// The shell plugin, for whatever nothing above claimed.
    Shell,
    /// marina's banner at `/` and an empty `/favicon.ico`.
    Root,
}

/// The table, in order. Changing the order changes marina's behaviour: keep README and the
/// crate docs in step.
pub const TABLE: &[Step] =
    &[Step::InternalApi, Step::WellKnown, Step::PluginRoutes, Step::Apps, Step::Shell, Step::Root];

/// Where a request goes.
pub enum Target<'a> {
    /// The internal API router.
    InternalApi,
    /// The discovery document.
    WellKnown,
    /// A plugin's `handle`, with the path below its base.
    Plugin(&'a Loaded, String),
    /// An app version; `segment` is the decoded first segment, `rest` the raw path below it.
    App {
        /// The resolved app version.
        resolved: Resolved,
        /// The first segment as decoded (`todo@^1`), the app's `x-base` without the slash.
        segment: String,
        /// The raw path after the segment.
        rest: String,
    },
    /// The shell plugin's app, at base `/` with the path unchanged.
    Shell(&'a Loaded, std::sync::Arc<marina_apps::App>),
    /// `/`.
    Banner,
    /// `/favicon.ico`.
    Favicon,
    /// Nothing: the first segment, if it looked like an app name.
    NotFound(Option<String>),
}

/// Walk [`TABLE`] for `path` (`headers` decide whether the app shell wants it).
pub fn route<'a>(rt: &Runtime, plugins: &'a PluginSet, path: &str, headers: &http::HeaderMap) -> Target<'a> {
    let mut app_segment = None;
    for step in TABLE {
        match step {
            Step::InternalApi => {
                let base = rt.api_base.as_str();
                if path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/')) {
                    return Target::InternalApi;
                }
            }
            Step::WellKnown => {
                if path == "/.well-known/buntime" || path == "/.well-known/marina" {
                    return Target::WellKnown;
                }
            }
            Step::PluginRoutes => {
                if let Some((plugin, rest)) = plugins.route(path) {
                    return Target::Plugin(plugin, rest.to_string());
                }
            }
            Step::Apps => {
                if let Some(app_path) = split_app_path(path) {
                    if let Some(resolved) = rt.registry.resolve(&app_path.segment) {
                        return Target::App { resolved, segment: app_path.segment, rest: app_path.rest.to_string() };
                    }
                    app_segment = Some(app_path.segment);
                }
            }
            Step::Shell => {
                if let Some((plugin, app)) = plugins.shell(path, headers) {
                    return Target::Shell(plugin, app);
                }
            }
            Step::Root => match path {
                "/" => return Target::Banner,
                "/favicon.ico" => return Target::Favicon,
                _ => {}
            },
        }
    }
    Target::NotFound(app_segment)
}
