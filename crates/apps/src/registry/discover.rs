//! Discovery: which apps and versions the worker dirs hold, and which version a range picks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nodejs_semver::{Range, Version};

use super::DEFAULT_ENTRYPOINTS;
use crate::manifest::MANIFEST_FILES;

/// Every app found in the worker dirs.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) apps: BTreeMap<String, AppEntry>,
}

#[derive(Debug)]
pub(super) struct AppEntry {
    pub(super) path: PathBuf,
    pub(super) latest: Option<PathBuf>,
    /// Highest first.
    pub(super) versions: Vec<(Version, PathBuf)>,
}

/// Whether `name` may be an app name: not empty, not starting with `.`, not `api`, and a
/// single path segment.
pub fn is_app_name(name: &str) -> bool {
    is_name(name, false)
}

/// [`is_app_name`], with `api` allowed when `api_app` (the internal API is elsewhere).
pub(super) fn is_name(name: &str, api_app: bool) -> bool {
    !name.is_empty() && !name.starts_with('.') && (api_app || name != "api") && !name.contains(['/', '\\', '\0', '@'])
}

/// `Some(version)` when `s` is a canonical semver a folder may be named after.
pub fn folder_version(s: &str) -> Option<Version> {
    // nodejs-semver is loose (`v1.2.3`, `=1.2.3`, ` 1.2.3`); folders must be canonical so that a
    // version has exactly one folder name.
    let v = Version::parse(s).ok()?;
    (v.to_string() == s).then_some(v)
}

/// Whether discovery serves the folder `dir` (a `name/`) as an app: it holds version folders
/// (`latest/`, `1.2.3/`), or it is a simple app (a manifest, `package.json` or a default
/// entrypoint). Links are followed, as [`Index::scan`] follows them. What removal may delete
/// (`crate::removal`) is what this says is an app, so that `DELETE /api/apps/...` never takes a
/// file or a folder no listing shows.
pub(crate) fn is_app_dir(dir: &Path) -> bool {
    dir.is_dir() && (has_version_folders(dir) || is_simple_app_dir(dir))
}

/// Whether `dir` holds a version folder (links followed, as [`Index::scan`] does).
pub(crate) fn has_version_folders(dir: &Path) -> bool {
    sorted_dir_names(dir).iter().any(|sub| (sub == "latest" || folder_version(sub).is_some()) && dir.join(sub).is_dir())
}

pub(crate) fn is_simple_app_dir(dir: &Path) -> bool {
    // A manifest of any file type makes an app (a FIFO manifest is then refused, not ignored).
    MANIFEST_FILES.iter().any(|f| marina_core::app_file::has_entry(dir, f))
        || ["package.json"].iter().chain(DEFAULT_ENTRYPOINTS.iter()).any(|f| dir.join(f).is_file())
}

fn sorted_dir_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    names
}

impl Index {
    pub(super) fn scan(dirs: &[PathBuf], api_app: bool) -> Index {
        let mut index = Index::default();
        for wd in dirs {
            let names = sorted_dir_names(wd);
            let dirs_named = |flat: bool| {
                names
                    .iter()
                    .filter(move |e| !e.starts_with('.') && e.contains('@') == flat)
                    .map(|e| (e, wd.join(e)))
                    .filter(|(_, p)| p.is_dir())
            };
            // Flat folders first: within one dir `todo@1.0.0/` wins over `todo/1.0.0/`.
            for (entry, path) in dirs_named(true) {
                let Some((name, version)) = entry.split_once('@') else { continue };
                if !is_name(name, api_app) {
                    continue;
                }
                if version == "latest" {
                    index.add(name, path.clone(), None, path);
                } else if let Some(v) = folder_version(version) {
                    index.add(name, path.clone(), Some(v), path);
                }
            }
            for (entry, path) in dirs_named(false) {
                if !is_name(entry, api_app) {
                    continue;
                }
                let mut nested = false;
                for sub in sorted_dir_names(&path) {
                    let sub_path = path.join(&sub);
                    if !sub_path.is_dir() {
                        continue;
                    }
                    if sub == "latest" {
                        index.add(entry, path.clone(), None, sub_path);
                        nested = true;
                    } else if let Some(v) = folder_version(&sub) {
                        index.add(entry, path.clone(), Some(v), sub_path);
                        nested = true;
                    }
                }
                if !nested && is_simple_app_dir(&path) {
                    index.add(entry, path.clone(), None, path);
                }
            }
        }
        index
    }

    /// Record one version; the first one seen (first worker dir) wins.
    fn add(&mut self, name: &str, app_path: PathBuf, version: Option<Version>, dir: PathBuf) {
        let entry = self.apps.entry(name.to_string()).or_insert_with(|| AppEntry {
            path: app_path,
            latest: None,
            versions: Vec::new(),
        });
        match version {
            None => {
                entry.latest.get_or_insert(dir);
            }
            Some(v) => {
                if let Err(pos) = entry.versions.binary_search_by(|(x, _)| v.cmp(x)) {
                    entry.versions.insert(pos, (v, dir));
                }
            }
        }
    }
}

impl AppEntry {
    pub(super) fn pick(&self, range: Option<&str>) -> Option<(String, &PathBuf)> {
        let latest = || self.latest.as_ref().map(|d| ("latest".to_string(), d));
        let highest = || self.versions.first().map(|(v, d)| (v.to_string(), d));
        match range.map(str::trim) {
            None | Some("") => latest().or_else(highest),
            Some("latest") => latest(),
            Some(r) => {
                let range = Range::parse(r).ok()?;
                // `versions` is sorted highest first, so the first match is the max satisfying.
                self.versions
                    .iter()
                    .find(|(v, _)| range.satisfies_with_prerelease(v, true))
                    .map(|(v, d)| (v.to_string(), d))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_versions_must_be_canonical() {
        for ok in ["1.2.3", "0.0.0", "1.0.0-beta.1", "10.20.30-rc.1", "1.0.0+build.5", "1.0.0-alpha+sha.1"] {
            assert!(folder_version(ok).is_some(), "{ok} should be a version folder");
        }
        for bad in ["v1.2.3", "=1.2.3", "1.2", "1", "latest", "01.2.3", " 1.2.3", "1.2.3 ", "notes", ""] {
            assert!(folder_version(bad).is_none(), "{bad:?} should not be a version folder");
        }
    }

    #[test]
    fn app_names() {
        for ok in ["todo", "my-app", "a_b", "x1"] {
            assert!(is_app_name(ok), "{ok}");
        }
        for bad in ["", "api", ".well-known", ".env", "a/b", "a\\b", "@scope", "a@b"] {
            assert!(!is_app_name(bad), "{bad:?}");
        }
    }
}
