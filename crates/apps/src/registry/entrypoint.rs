//! From a version's dir to an [`App`]: the manifest read and checked, the entrypoint found and
//! confined to the dir, the worker kind chosen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use marina_core::Error;

use super::Resolved;
use crate::app::{App, WorkerKind};
use crate::manifest::{self, AppConfig};

/// The entrypoints tried, in order, when the manifest names none (or names a missing file).
pub const DEFAULT_ENTRYPOINTS: [&str; 4] = ["index.html", "index.ts", "index.js", "index.mjs"];

/// Load one app version: the app, or why not, and the warnings to log about it.
pub(super) fn build_app(resolved: &Resolved) -> (Result<App, Error>, Vec<String>) {
    let loaded = match manifest::load(&resolved.dir) {
        Ok(l) => l,
        Err(e) => {
            let warnings = e.warnings.clone();
            return (Err(e.into()), warnings);
        }
    };
    let mut warnings = loaded.warnings.clone();
    if let Some(e) = loaded.config.entrypoint.as_deref().filter(|e| !resolved.dir.join(e).is_file()) {
        warnings.push(format!("the manifest's entrypoint {e:?} does not exist; trying index.*"));
    }
    (build_from(resolved, loaded), warnings)
}

fn build_from(resolved: &Resolved, loaded: manifest::LoadedManifest) -> Result<App, Error> {
    let config = loaded.config;
    if !config.enabled {
        let file = loaded.source.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            "APP_DISABLED",
            format!("app {}@{} is disabled (`enabled: false` in {file})", resolved.name, resolved.version),
        )
        .with_data(json!({ "app": resolved.name, "version": resolved.version })));
    }
    let (entrypoint, kind) = resolve_entrypoint(&resolved.dir, &config)?;
    let proxy = Arc::new(crate::proxy_rules::compile(&config.proxy)?);
    Ok(App {
        name: resolved.name.clone(),
        version: resolved.version.clone(),
        dir: resolved.dir.clone(),
        entrypoint,
        kind,
        config: Arc::new(config),
        proxy,
        key: App::key_of(&resolved.name, &resolved.version),
        migrated: Default::default(),
    })
}

/// The entrypoint file of the app in `dir` (buntime.md §2.2) and the worker kind it implies.
///
/// The manifest's `entrypoint` is used when that file exists; otherwise the first existing of
/// [`DEFAULT_ENTRYPOINTS`]. With `command` the kind is always `Process` and the entrypoint is
/// informational (the app dir itself when no file is found). Unlike Buntime, a missing
/// entrypoint is an error here, not a worker that fails later.
///
/// # Errors
/// 500 `APP_ENTRYPOINT_NOT_FOUND`, `APP_ENTRYPOINT_OUTSIDE` (the file resolves, through `..` or
/// a symlink, outside the app dir) or `APP_ENTRYPOINT_UNSUPPORTED` (an extension no worker
/// kind runs).
pub fn resolve_entrypoint(dir: &Path, config: &AppConfig) -> Result<(PathBuf, WorkerKind), Error> {
    let configured = config.entrypoint.as_deref().filter(|e| dir.join(e).is_file());
    let found = configured.or_else(|| DEFAULT_ENTRYPOINTS.iter().copied().find(|f| dir.join(f).is_file()));
    let Some(rel) = found else {
        if config.command.is_some() {
            return Ok((dir.to_path_buf(), WorkerKind::Process));
        }
        let tried = config
            .entrypoint
            .iter()
            .map(String::as_str)
            .chain(DEFAULT_ENTRYPOINTS)
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ");
        // A WebAssembly app whose component was not built yet (it is not committed).
        let hint = config
            .entrypoint
            .as_deref()
            .filter(|e| e.ends_with(".wasm"))
            .map(|e| dir.join(e).with_extension("wat"))
            .filter(|wat| wat.is_file())
            .map(|wat| format!("; build it with `marina wasm build {}`", wat.display()))
            .unwrap_or_default();
        return Err(Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "APP_ENTRYPOINT_NOT_FOUND",
            format!("app dir {} has no entrypoint: none of {tried} exists{hint}", dir.display()),
        )
        // `entrypoint` (the manifest's, if any) also tells the registry which file to watch
        // for the fix.
        .with_data(json!({ "dir": dir.display().to_string(), "entrypoint": config.entrypoint })));
    };
    let path = dir.join(rel);
    let outside = || {
        Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "APP_ENTRYPOINT_OUTSIDE",
            format!("entrypoint {rel:?} resolves outside the app dir {}", dir.display()),
        )
        .with_data(json!({ "dir": dir.display().to_string(), "entrypoint": rel }))
    };
    // `..` or a symlink may lead out of the dir: only the real paths can tell.
    let (Ok(real_dir), Ok(real_path)) = (dir.canonicalize(), path.canonicalize()) else {
        return Err(outside());
    };
    if !real_path.starts_with(&real_dir) {
        return Err(outside());
    }
    if config.command.is_some() {
        return Ok((path, WorkerKind::Process));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let kind = match ext.as_str() {
        "html" | "htm" => WorkerKind::Static,
        "ts" | "js" | "mjs" | "cjs" => WorkerKind::Js,
        "wasm" => WorkerKind::Wasm,
        _ => {
            return Err(Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "APP_ENTRYPOINT_UNSUPPORTED",
                format!(
                    "entrypoint {rel:?} cannot be run: expected a .html file (static), a .ts/.js/.mjs/.cjs file (js), a .wasm component (wasm), or a `command` in the manifest to run the app as a process"
                ),
            )
            .with_data(json!({ "dir": dir.display().to_string(), "entrypoint": rel })));
        }
    };
    Ok((path, kind))
}
