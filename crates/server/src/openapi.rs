//! `GET /api/openapi.json` and `GET /api/docs`: an OpenAPI 3.1 document of the internal API and
//! a page that lists it (Buntime serves the same two, with a Scalar UI loaded from a CDN; this
//! page needs nothing from outside).
//!
//! The document is kept by hand in [`OPERATIONS`], next to the code, and cannot go stale
//! silently: a unit test checks that its paths are exactly the router's ([`crate::api::paths`]),
//! and `crates/server/tests/openapi.rs` calls every documented operation on a real server
//! (none may answer "no such route" or 405) and every undocumented method on a documented
//! path (each must answer 405).

use serde_json::{Map, Value, json};

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// `GET`, `POST`, `DELETE`.
    pub method: &'static str,
    /// Below the API base, with `{param}`s.
    pub path: &'static str,
    /// Tag (group) in the document.
    pub tag: &'static str,
    /// One line.
    pub summary: &'static str,
    /// The permission a generated key needs (`None`: public).
    pub permission: Option<&'static str>,
    /// The JSON body it takes, if any.
    pub body: Option<&'static str>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    permission: Option<&'static str>,
) -> Operation {
    Operation { method, path, tag, summary, permission, body: None }
}

/// Every operation of the internal API.
pub const OPERATIONS: &[Operation] = &[
    op("GET", "/health", "Health", "Liveness and version: {ok, status: healthy, version}", None),
    op("GET", "/health/live", "Health", "Liveness probe: {ok, status: live, version}", None),
    op(
        "GET",
        "/health/ready",
        "Health",
        "Readiness probe; 503 {ok: false, status: draining} while shutting down",
        None,
    ),
    op(
        "GET",
        "/apps",
        "Apps",
        "Apps in the worker dirs: [{name, path, versions, source, removable, states}]",
        Some("apps:read"),
    ),
    op(
        "DELETE",
        "/apps/{scope}/{name}",
        "Apps",
        "Remove every version of an app (scope: `_` or any placeholder); its workers drain",
        Some("apps:remove"),
    ),
    op(
        "DELETE",
        "/apps/{scope}/{name}/{version}",
        "Apps",
        "Remove one version of an app; its workers drain",
        Some("apps:remove"),
    ),
    op(
        "GET",
        "/workers",
        "Workers",
        "Worker processes, pool metrics, the sandbox and request counters",
        Some("workers:read"),
    ),
    op("GET", "/plugins", "Plugins", "Plugin dirs on disk: [{name, path, source, removable}]", Some("plugins:read")),
    op(
        "DELETE",
        "/plugins/{name}",
        "Plugins",
        "Remove a plugin's dir (URL-encoded name, `@scope/name` allowed); loaded plugins change on the next reload",
        Some("plugins:remove"),
    ),
    op(
        "POST",
        "/plugins/reload",
        "Plugins",
        "Rescan the plugin dirs and reload: {ok, plugins: [{name, version}]}",
        Some("plugins:install"),
    ),
    op(
        "GET",
        "/plugins/loaded",
        "Plugins",
        "Loaded plugins in load order: [{name, base, dependencies, optionalDependencies, menus}]",
        None,
    ),
    op("GET", "/keys", "Keys", "API keys, without secrets: {keys: [...]}", Some("keys:read")),
    Operation {
        body: Some(
            "{name, role?: admin|editor|viewer|custom, permissions?, description?, expiresIn?: never|30d|2w|6m|1y}",
        ),
        ..op(
            "POST",
            "/keys",
            "Keys",
            "Create a key; 201 {success, data: {id, key, keyPrefix, name, role}} (the key is shown once)",
            Some("keys:create"),
        )
    },
    op("GET", "/keys/meta", "Keys", "Roles and permissions: {roles, permissions}", Some("keys:read")),
    op("DELETE", "/keys/{id}", "Keys", "Revoke a key: {success: true}; 404 API_KEY_NOT_FOUND", Some("keys:revoke")),
    op(
        "GET",
        "/admin/session",
        "Keys",
        "Whose X-API-Key this is (the route checks it itself; Bearer is not read): {authenticated, principal: {id, keyPrefix, name, role, permissions, isMaster?}}; 401 without a valid X-API-Key",
        None,
    ),
    op("GET", "/openapi.json", "Docs", "This document", None),
    op("GET", "/docs", "Docs", "A page listing this document", None),
];

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
}

/// The OpenAPI 3.1 document, for an API at `api_base` (`/api`, `/_/api`).
pub fn document(api_base: &str, version: &str) -> Value {
    let error = json!({ "$ref": "#/components/responses/Error" });
    let mut paths = Map::new();
    for o in OPERATIONS {
        let mut responses = Map::new();
        let ok = if o.method == "POST" && o.path == "/keys" { "201" } else { "200" };
        responses.insert(
            ok.into(),
            json!({ "description": o.summary, "content": { "application/json": { "schema": {} } } }),
        );
        if o.path == "/admin/session" {
            responses.insert("401".into(), error.clone());
        }
        if o.permission.is_some() {
            for code in ["401", "403"] {
                responses.insert(code.into(), error.clone());
            }
        }
        if o.path.contains('{') || o.body.is_some() {
            responses.insert("400".into(), error.clone());
        }
        if o.method == "DELETE" {
            responses.insert("404".into(), error.clone());
        }
        let mut operation = json!({
            "tags": [o.tag],
            "summary": o.summary,
            "operationId": format!("{} {}", o.method, o.path),
            "parameters": parameters(o.path),
            "responses": responses,
        });
        match o.permission {
            Some(p) => {
                operation["x-permission"] = json!(p);
                operation["security"] = json!([{ "apiKey": [] }, { "bearer": [] }, {}]);
            }
            None => operation["security"] = json!([{}]),
        }
        if let Some(body) = o.body {
            operation["requestBody"] = json!({
                "required": true,
                "description": body,
                "content": { "application/json": { "schema": { "type": "object" } } },
            });
        }
        let item = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        item[o.method.to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "marina internal API",
            "version": version,
            "description": "Buntime's internal API as marina serves it. A key is needed once RUNTIME_ROOT_KEY is set or any key was created (the security `{}` alternative stands for the open API before that); without one, state-changing calls need X-Buntime-Internal: true or a same-host Origin, and apps' workers are refused. See docs/auth.md.",
        },
        "servers": [{ "url": api_base }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
                "bearer": { "type": "http", "scheme": "bearer" },
            },
            "responses": {
                "Error": {
                    "description": "marina's error body",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["success", "code", "message", "error"],
                        "properties": {
                            "success": { "const": false },
                            "code": { "type": "string" },
                            "message": { "type": "string" },
                            "error": { "type": "string", "description": "the message again, or Buntime's fixed text where its clients compare one" },
                            "data": {},
                        },
                    } } },
                },
            },
        },
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The `/docs` page: every operation, with the permission it needs.
pub fn page(api_base: &str, version: &str) -> String {
    let mut rows = String::new();
    for o in OPERATIONS {
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td><code>{}{}</code></td><td>{}</td><td>{}</td></tr>\n",
            o.method,
            escape(api_base),
            escape(o.path),
            escape(o.summary),
            o.permission.map_or_else(|| "public".to_string(), |p| format!("<code>{p}</code>")),
        ));
    }
    let base = escape(api_base);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>marina internal API</title>\n\
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}}</style>\n\
</head><body>\n<h1>marina internal API <small>v{version}</small></h1>\n\
<p>The OpenAPI 3.1 document: <a href=\"{base}/openapi.json\"><code>{base}/openapi.json</code></a>. Send a key as <code>X-API-Key</code> or <code>Authorization: Bearer</code> once keys exist.</p>\n\
<table><thead><tr><th>method</th><th>path</th><th>what</th><th>key permission</th></tr></thead><tbody>\n{rows}</tbody></table>\n</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A documented path is served by the router path it equals, or by a catch-all
    /// (`/keys/{*rest}`) it falls under.
    fn served_by(doc: &str, route: &str) -> bool {
        match route.split_once("/{*") {
            Some((prefix, _)) => doc.starts_with(&format!("{prefix}/")),
            None => doc == route,
        }
    }

    #[test]
    fn the_document_covers_the_router_and_nothing_else() {
        let routes = crate::api::paths();
        for o in OPERATIONS {
            assert!(
                routes.iter().any(|r| served_by(o.path, r)),
                "{} {} is documented but not routed",
                o.method,
                o.path
            );
        }
        for r in &routes {
            assert!(OPERATIONS.iter().any(|o| served_by(o.path, r)), "{r} is routed but not documented");
        }
    }

    #[test]
    fn each_operation_documents_the_permission_the_gate_asks_for() {
        use marina_auth::api_rules::{Requirement, requirement};
        for o in OPERATIONS {
            let method: http::Method = o.method.parse().unwrap();
            let expected = match o.permission {
                Some(p) => Requirement::Permission(p),
                None => Requirement::Public,
            };
            assert_eq!(requirement(&method, o.path), expected, "{} {}", o.method, o.path);
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_operation() {
        let doc = document("/_/api", "1.0.0");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["servers"][0]["url"], "/_/api");
        let count: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(count, OPERATIONS.len());
        let del = &doc["paths"]["/apps/{scope}/{name}/{version}"]["delete"];
        assert_eq!(del["parameters"].as_array().unwrap().len(), 3);
        assert_eq!(del["x-permission"], "apps:remove");
        assert!(page("/api", "1").contains("/api/apps/{scope}/{name}"));
    }
}
