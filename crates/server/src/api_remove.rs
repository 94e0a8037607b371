//! `DELETE /api/apps/:scope/:name[/:version]` and `DELETE /api/plugins/:name` (buntime.md
//! §4.2), and the `source` / `removable` fields of the app and plugin listings. The file work and
//! its safety rules are in [`marina_apps::removal`]; here the runtime catches up: caches are
//! dropped and the removed versions' workers drain and stop.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use http::StatusCode;
use marina_apps::removal::{self, Source};
use marina_core::Error;
use marina_plugins::api::{ApiError, reply};
use serde_json::{Value, json};

use crate::Runtime;

type ApiResult = Result<axum::response::Response, ApiError>;

fn bad_path(e: PathRejection) -> ApiError {
    Error::bad_request("INVALID_PATH", format!("the path's parameters cannot be read: {}", e.body_text())).into()
}

/// All versions of an app.
pub(crate) async fn delete_app(
    State(rt): State<Arc<Runtime>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let Path((scope, name)) = path.map_err(bad_path)?;
    remove_app(&rt, &scope, name, None).await
}

/// One version of an app.
pub(crate) async fn delete_app_version(
    State(rt): State<Arc<Runtime>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult {
    let Path((scope, name, version)) = path.map_err(bad_path)?;
    remove_app(&rt, &scope, name, Some(version)).await
}

async fn remove_app(rt: &Arc<Runtime>, scope: &str, name: String, version: Option<String>) -> ApiResult {
    // Buntime's scope is `@x` for a scoped package and any placeholder (`_`) otherwise; marina
    // serves no scoped apps, so there is never one to remove.
    if scope.starts_with('@') {
        let what = format!("{scope}/{name}{}", version.as_deref().map(|v| format!("@{v}")).unwrap_or_default());
        let code = if version.is_some() { "VERSION_NOT_FOUND" } else { "APP_NOT_FOUND" };
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            code,
            format!("app not found: {what} (marina serves no scoped apps)"),
        )
        .with_data(json!({ "name": format!("{scope}/{name}"), "version": version }))
        .into());
    }
    let before = rt.registry.all_versions();
    let dirs = rt.registry.dirs().to_vec();
    let app = name.clone();
    let result = tokio::task::spawn_blocking(move || removal::remove_app(&dirs, &name, version.as_deref()))
        .await
        .map_err(|e| Error::internal(format!("the removal did not finish: {e}")))?;
    // Also when it failed part-way (a 500 after some folders went): what is gone is gone.
    after_removal(rt, &before, &app);
    result?;
    reply(&json!({ "success": true }))
}

/// Drop the caches and drain the workers of every version of `app` whose folder is gone now —
/// read from the disk rather than from the removal's list, so a removal that failed part-way
/// still retires what it took.
fn after_removal(rt: &Runtime, before: &[marina_apps::registry::Resolved], app: &str) {
    rt.registry.invalidate();
    for r in before.iter().filter(|r| r.name == app && std::fs::symlink_metadata(&r.dir).is_err()) {
        tracing::info!(app = %r.name, version = %r.version, dir = %r.dir.display(), "app version removed through the API");
        rt.migrations.forget(&r.dir);
        rt.pool.retire_app(&format!("{}@{}", r.name, r.version), "its app version was removed");
    }
}

/// A plugin's directory. Loaded plugins keep running until `POST /api/plugins/reload` or a
/// restart, as in Buntime — an external plugin's worker only until it is recycled (its files are
/// gone, so its next start fails).
pub(crate) async fn delete_plugin(
    State(rt): State<Arc<Runtime>>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = path.map_err(bad_path)?;
    if name == marina_plugins::auth::NAME {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "BUILT_IN_PLUGIN_REMOVE_FORBIDDEN",
            format!("built-in plugin cannot be removed: {name} is part of marina's core"),
        )
        .with_data(json!({ "name": name }))
        .into());
    }
    let dirs = rt.config.plugin_dirs.clone();
    let removed = tokio::task::spawn_blocking(move || removal::remove_plugin(&dirs, &name))
        .await
        .map_err(|e| Error::internal(format!("the removal did not finish: {e}")))??;
    for p in &removed {
        tracing::info!(dir = %p.display(), "plugin removed through the API; loaded plugins change on the next reload");
    }
    reply(&json!({ "success": true }))
}

/// Buntime's `source` and `removable` for something found at `path` under one of `dirs`.
pub(crate) fn with_source(mut listing: Value, path: &FsPath, dirs: &[PathBuf]) -> Value {
    let source = dirs.iter().find(|d| path.starts_with(d)).map_or(Source::Uploaded, |d| Source::of_dir(d));
    listing["source"] = json!(source);
    listing["removable"] = json!(source.removable());
    listing
}
