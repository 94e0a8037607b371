//! Removing an app, an app version or a plugin from disk (`DELETE /api/apps/...`,
//! `DELETE /api/plugins/:name`), as Buntime does, without its traps.
//!
//! Buntime joins the URL's name to each configured dir and removes whatever directory that
//! gives, so `..` removes the dir above. Here a name is checked before it touches a path: one
//! segment, not starting with `.`, no `/`, `\` or NUL, at most 255 bytes; a version is `latest`
//! or a canonical semver. An entry that is a symlink is removed as a link (its target is never
//! followed), and a nested `name/version` is only looked into when `name` is a real directory.
//!
//! Like Buntime, a configured dir whose own name starts with `.` (`/data/.apps`, the image's
//! apps in Buntime's Helm chart) holds **built-in** apps or plugins: listed with
//! `source: "built-in"`, `removable: false`, and never removed (403). Other dirs are
//! `uploaded`. Unlike Buntime, which stops at the first dir holding the name, every removable
//! dir loses its copy, so a removed app is not served from a later dir.

use std::path::{Path, PathBuf};

use http::StatusCode;
use marina_core::Error;
use serde_json::json;

use crate::registry::{folder_version, has_version_folders, is_app_dir, is_app_name, is_simple_app_dir};

/// The longest app or plugin name (or version) accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Where an app or plugin dir comes from (Buntime's `InstallSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    /// In a configured dir whose name starts with `.`: shipped with the installation.
    #[serde(rename = "built-in")]
    BuiltIn,
    /// In any other configured dir.
    #[serde(rename = "uploaded")]
    Uploaded,
}

impl Source {
    /// The source of what lives in the configured dir `dir`.
    pub fn of_dir(dir: &Path) -> Source {
        let hidden = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden { Source::BuiltIn } else { Source::Uploaded }
    }

    /// Whether the API may remove it.
    pub fn removable(self) -> bool {
        self == Source::Uploaded
    }
}

fn invalid(code: &'static str, field: &str, message: String) -> Error {
    Error::bad_request(code, message).with_data(json!({ "path": field }))
}

/// Checks one name segment (an app name, a plugin name or its scope's part).
fn check_segment(code: &'static str, field: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_NAME_LEN {
        return Err(invalid(code, field, format!("the {field} is longer than {MAX_NAME_LEN} bytes")));
    }
    if value.is_empty() || value.starts_with('.') || value.contains(['/', '\\', '\0']) {
        return Err(invalid(
            code,
            field,
            format!("the {field} '{}' is not a name: one path segment, not starting with '.'", value.escape_debug()),
        ));
    }
    Ok(())
}

/// Removes what `dirs` hold of app `name` — every version when `version` is `None` — from every
/// removable dir. Returns the paths removed.
///
/// # Errors
/// 400 `INVALID_APP_NAME` / `INVALID_VERSION` (with `data.path`); 403
/// `BUILT_IN_APP_REMOVE_FORBIDDEN` / `BUILT_IN_APP_VERSION_REMOVE_FORBIDDEN` when only built-in
/// dirs hold it; 404 `APP_NOT_FOUND` / `VERSION_NOT_FOUND`; 500 when a removal fails.
pub fn remove_app(dirs: &[PathBuf], name: &str, version: Option<&str>) -> Result<Vec<PathBuf>, Error> {
    check_segment("INVALID_APP_NAME", "name", name)?;
    if !is_app_name(name) && name != "api" {
        return Err(invalid("INVALID_APP_NAME", "name", format!("'{name}' is not an app name")));
    }
    if let Some(v) = version {
        check_segment("INVALID_VERSION", "version", v)?;
        if v != "latest" && folder_version(v).is_none() {
            return Err(invalid(
                "INVALID_VERSION",
                "version",
                format!("the version '{v}' is neither 'latest' nor a semver such as 1.2.3"),
            ));
        }
    }
    let what = match version {
        Some(v) => format!("{name}@{v}"),
        None => name.to_string(),
    };
    let (mut built_in, mut removed) = (false, Vec::new());
    for dir in dirs {
        let found = match version {
            None => app_entries(dir, name),
            Some(v) => version_entries(dir, name, v),
        };
        if found.is_empty() {
            continue;
        }
        if !Source::of_dir(dir).removable() {
            built_in = true;
            continue;
        }
        for path in found {
            remove_entry(&path)?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        return Ok(removed);
    }
    let data = json!({ "name": name, "version": version });
    Err(match (built_in, version) {
        (true, None) => Error::new(
            StatusCode::FORBIDDEN,
            "BUILT_IN_APP_REMOVE_FORBIDDEN",
            format!("built-in app cannot be removed: {what}"),
        ),
        (true, Some(_)) => Error::new(
            StatusCode::FORBIDDEN,
            "BUILT_IN_APP_VERSION_REMOVE_FORBIDDEN",
            format!("built-in app version cannot be removed: {what}"),
        ),
        (false, None) => Error::new(StatusCode::NOT_FOUND, "APP_NOT_FOUND", format!("app not found: {what}")),
        (false, Some(_)) => {
            Error::new(StatusCode::NOT_FOUND, "VERSION_NOT_FOUND", format!("app version not found: {what}"))
        }
    }
    .with_data(data))
}

/// Removes plugin `name` (`plugin-x` or `@scope/plugin-x`) from every removable plugin dir.
///
/// # Errors
/// 400 `INVALID_PLUGIN_NAME`; 403 `BUILT_IN_PLUGIN_REMOVE_FORBIDDEN`; 404 `PLUGIN_NOT_FOUND`;
/// 500 when a removal fails.
pub fn remove_plugin(dirs: &[PathBuf], name: &str) -> Result<Vec<PathBuf>, Error> {
    let code = "INVALID_PLUGIN_NAME";
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(code, "name", format!("the name is longer than {MAX_NAME_LEN} bytes")));
    }
    let parts: Vec<&str> = match name.strip_prefix('@') {
        Some(scoped) => {
            let (scope, inner) = scoped.split_once('/').ok_or_else(|| {
                invalid(code, "name", format!("the scoped name '{name}' has no '/': write @scope/name"))
            })?;
            check_segment(code, "name", scope)?;
            check_segment(code, "name", inner)?;
            vec![&name[..=scope.len()], inner]
        }
        None => {
            check_segment(code, "name", name)?;
            vec![name]
        }
    };
    let (mut built_in, mut removed) = (false, Vec::new());
    for dir in dirs {
        // A scope dir that is a symlink is not followed.
        if parts.len() == 2 && !is_real_dir(&dir.join(parts[0])) {
            continue;
        }
        let path = parts.iter().fold(dir.clone(), |p, part| p.join(part));
        // A plugin is a folder (or a link to one); a file of that name is not one.
        if !path.is_dir() {
            continue;
        }
        if !Source::of_dir(dir).removable() {
            built_in = true;
            continue;
        }
        remove_entry(&path)?;
        removed.push(path);
    }
    if !removed.is_empty() {
        return Ok(removed);
    }
    Err(if built_in {
        Error::new(
            StatusCode::FORBIDDEN,
            "BUILT_IN_PLUGIN_REMOVE_FORBIDDEN",
            format!("built-in plugin cannot be removed: {name}"),
        )
    } else {
        Error::new(StatusCode::NOT_FOUND, "PLUGIN_NOT_FOUND", format!("plugin files not found: {name}"))
    }
    .with_data(json!({ "name": name })))
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Every folder of app `name` in `dir`: `name/` (nested or simple) and each `name@version/`,
/// each only when discovery would serve it as one (a plain file, or a folder with no app in it,
/// is not an app and is left alone).
fn app_entries(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let plain = dir.join(name);
    if is_app_dir(&plain) {
        out.push(plain);
    }
    let prefix = format!("{name}@");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(v) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
            if (v == "latest" || folder_version(v).is_some()) && e.path().is_dir() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The folders of version `v` of app `name` in `dir`: `name@v/`, `name/v/`, and for `latest`
/// a simple `name/` (one with no version folders).
fn version_entries(dir: &Path, name: &str, v: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let flat = dir.join(format!("{name}@{v}"));
    if flat.is_dir() {
        out.push(flat);
    }
    let plain = dir.join(name);
    if is_real_dir(&plain) {
        let nested = plain.join(v);
        if nested.is_dir() {
            out.push(nested);
        } else if v == "latest" && !has_version_folders(&plain) && is_simple_app_dir(&plain) {
            out.push(plain);
        }
    }
    out
}

/// Removes a dir tree, or only the link when `path` is a symlink (std's `remove_dir_all` never
/// follows symlinks, at the top or below).
/// Gone already (a concurrent removal) counts as removed.
fn remove_entry(path: &Path) -> Result<(), Error> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::internal(format!("cannot remove {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(dir: &Path, rel: &str) {
        std::fs::create_dir_all(dir.join(rel)).unwrap();
        std::fs::write(dir.join(rel).join("index.ts"), "export default {}").unwrap();
    }

    #[test]
    fn what_no_listing_shows_is_not_removed() {
        let root = tempfile::tempdir().unwrap();
        let apps = root.path().join("apps");
        app(&apps, "real");
        std::fs::write(apps.join("README.md"), "notes").unwrap();
        std::fs::create_dir_all(apps.join("node_modules/left-pad")).unwrap();
        std::fs::write(apps.join("notes@1.0.0"), "a file, not a version folder").unwrap();
        let dirs = std::slice::from_ref(&apps);
        for (name, version) in [
            ("README.md", None),
            ("node_modules", None),
            ("node_modules", Some("latest")),
            ("notes", None),
            ("notes", Some("1.0.0")),
        ] {
            let e = remove_app(dirs, name, version).unwrap_err();
            assert_eq!(e.status().as_u16(), 404, "{name} {version:?}: {e}");
        }
        assert!(apps.join("README.md").is_file() && apps.join("node_modules/left-pad").is_dir());
        assert!(apps.join("notes@1.0.0").is_file());
        std::fs::write(root.path().join("plugin-file"), "x").unwrap();
        let e = remove_plugin(&[root.path().to_path_buf()], "plugin-file").unwrap_err();
        assert_eq!(e.status().as_u16(), 404);
        assert!(root.path().join("plugin-file").is_file());
    }

    #[cfg(unix)]
    #[test]
    fn latest_of_an_app_whose_versions_are_links_is_not_the_whole_app() {
        let root = tempfile::tempdir().unwrap();
        let (apps, outside) = (root.path().join("apps"), root.path().join("elsewhere"));
        app(&outside, "1.0.0");
        std::fs::create_dir_all(apps.join("foo")).unwrap();
        std::os::unix::fs::symlink(outside.join("1.0.0"), apps.join("foo/1.0.0")).unwrap();
        // Discovery sees foo@1.0.0 (links followed) and no `latest`.
        let e = remove_app(std::slice::from_ref(&apps), "foo", Some("latest")).unwrap_err();
        assert_eq!(e.code(), "VERSION_NOT_FOUND");
        assert!(apps.join("foo/1.0.0").exists(), "the app is still there");
        // Its version is removed as a link; the target stays.
        assert_eq!(remove_app(std::slice::from_ref(&apps), "foo", Some("1.0.0")).unwrap(), [apps.join("foo/1.0.0")]);
        assert!(outside.join("1.0.0/index.ts").exists());
    }

    #[test]
    fn hidden_dirs_are_built_in() {
        assert_eq!(Source::of_dir(Path::new("/data/.apps")), Source::BuiltIn);
        assert_eq!(Source::of_dir(Path::new("/data/apps")), Source::Uploaded);
        assert!(!Source::BuiltIn.removable());
    }

    #[test]
    fn every_layout_of_an_app_is_removed_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let apps = root.path().join("apps");
        app(&apps, "todo/1.0.0");
        app(&apps, "todo@2.0.0");
        app(&apps, "todo-other");
        app(&apps, "todoo@1.0.0");
        let removed = remove_app(std::slice::from_ref(&apps), "todo", Some("2.0.0")).unwrap();
        assert_eq!(removed, [apps.join("todo@2.0.0")]);
        let removed = remove_app(std::slice::from_ref(&apps), "todo", None).unwrap();
        assert_eq!(removed, [apps.join("todo")]);
        assert!(apps.join("todo-other").exists() && apps.join("todoo@1.0.0").exists());
        let e = remove_app(std::slice::from_ref(&apps), "todo", None).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (404, "APP_NOT_FOUND"));
        // A simple app is its own `latest`.
        let removed = remove_app(std::slice::from_ref(&apps), "todo-other", Some("latest")).unwrap();
        assert_eq!(removed, [apps.join("todo-other")]);
    }

    #[test]
    fn names_that_could_leave_the_dir_are_refused_before_any_path_is_built() {
        let root = tempfile::tempdir().unwrap();
        let apps = root.path().join("apps");
        app(&apps, "x/1.0.0");
        let long = "a".repeat(300);
        for bad in ["..", ".", "", "a/../..", "..\\x", "a\0b", ".hidden", long.as_str()] {
            let e = remove_app(std::slice::from_ref(&apps), bad, None).unwrap_err();
            assert_eq!((e.status().as_u16(), e.code()), (400, "INVALID_APP_NAME"), "{bad:?}");
            let e = remove_plugin(std::slice::from_ref(&apps), bad).unwrap_err();
            assert_eq!((e.status().as_u16(), e.code()), (400, "INVALID_PLUGIN_NAME"), "{bad:?}");
        }
        for bad in ["..", "../..", "1.0", "v1.0.0", "1.0.0/..", long.as_str()] {
            let e = remove_app(std::slice::from_ref(&apps), "x", Some(bad)).unwrap_err();
            assert_eq!((e.status().as_u16(), e.code()), (400, "INVALID_VERSION"), "{bad:?}");
        }
        for bad in ["@", "@/x", "@../x", "@a/..", "@a/b/c", "@a"] {
            let e = remove_plugin(std::slice::from_ref(&apps), bad).unwrap_err();
            assert_eq!(e.code(), "INVALID_PLUGIN_NAME", "{bad:?}");
        }
        assert!(apps.join("x/1.0.0/index.ts").exists());
    }

    #[test]
    fn symlinks_are_removed_as_links_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let apps = root.path().join("apps");
        let outside = root.path().join("outside");
        app(&outside, "1.0.0");
        std::fs::create_dir_all(&apps).unwrap();
        std::os::unix::fs::symlink(&outside, apps.join("linked")).unwrap();
        // `linked/1.0.0` would go through the link: not looked into.
        let e = remove_app(std::slice::from_ref(&apps), "linked", Some("1.0.0")).unwrap_err();
        assert_eq!(e.code(), "VERSION_NOT_FOUND");
        remove_app(std::slice::from_ref(&apps), "linked", None).unwrap();
        assert!(!apps.join("linked").exists());
        assert!(outside.join("1.0.0/index.ts").exists(), "the link's target was removed");
    }

    #[test]
    fn concurrent_removals_never_fail_halfway() {
        let root = tempfile::tempdir().unwrap();
        let apps = root.path().join("apps");
        for i in 0..40 {
            app(&apps, &format!("big/1.0.0/d{i}/e"));
        }
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| remove_app(std::slice::from_ref(&apps), "big", None))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert!(r.as_ref().map_or_else(|e| e.code() == "APP_NOT_FOUND", |_| true), "{r:?}");
        }
        assert!(results.iter().any(Result::is_ok) && !apps.join("big").exists());
    }

    #[test]
    fn an_entry_removed_meanwhile_counts_as_removed() {
        let root = tempfile::tempdir().unwrap();
        remove_entry(&root.path().join("gone")).unwrap();
    }

    #[test]
    fn built_in_dirs_are_never_touched() {
        let root = tempfile::tempdir().unwrap();
        let (builtin, uploaded) = (root.path().join(".apps"), root.path().join("apps"));
        app(&builtin, "core/1.0.0");
        app(&builtin, "both/1.0.0");
        app(&uploaded, "both/1.0.0");
        std::fs::create_dir_all(&uploaded).unwrap();
        let dirs = [builtin.clone(), uploaded.clone()];
        let e = remove_app(&dirs, "core", None).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (403, "BUILT_IN_APP_REMOVE_FORBIDDEN"));
        let e = remove_app(&dirs, "core", Some("1.0.0")).unwrap_err();
        assert_eq!(e.code(), "BUILT_IN_APP_VERSION_REMOVE_FORBIDDEN");
        assert_eq!(remove_app(&dirs, "both", None).unwrap(), [uploaded.join("both")]);
        assert!(builtin.join("both/1.0.0").exists() && builtin.join("core/1.0.0").exists());
        std::fs::create_dir_all(builtin.join("@acme/plugin-a")).unwrap();
        std::fs::create_dir_all(uploaded.join("@acme/plugin-b")).unwrap();
        let e = remove_plugin(&dirs, "@acme/plugin-a").unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (403, "BUILT_IN_PLUGIN_REMOVE_FORBIDDEN"));
        assert_eq!(remove_plugin(&dirs, "@acme/plugin-b").unwrap(), [uploaded.join("@acme/plugin-b")]);
        let e = remove_plugin(&dirs, "plugin-none").unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (404, "PLUGIN_NOT_FOUND"));
    }
}
