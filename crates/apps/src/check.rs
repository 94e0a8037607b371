//! `marina check DIR`: validate one app dir, or every app version in a worker dir, without
//! starting anything. The text printed is [`CheckReport`]'s `Display`; a manifest's problems
//! are printed exactly as [`ManifestError`]'s `Display`, the same text an app with that manifest
//! answers with (as JSON) while serving.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::app::WorkerKind;
use crate::manifest::{self, MANIFEST_FILES, ManifestError};
use crate::registry::{self, DEFAULT_ENTRYPOINTS, Registry};

/// What `marina check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The dir that was checked.
    pub root: PathBuf,
    /// One entry per app version, in name then version order.
    pub entries: Vec<CheckEntry>,
    /// Findings about the dir itself (not a dir, folders that look like versions but are not).
    pub notes: Vec<Note>,
}

/// A finding that is not tied to one app version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Makes the check fail.
    Error(String),
    /// Reported only.
    Warning(String),
}

/// The result for one app version.
#[derive(Debug, Clone)]
pub struct CheckEntry {
    /// `name@version`.
    pub app: String,
    /// The app version's dir.
    pub dir: PathBuf,
    /// The manifest file read, if any.
    pub manifest: Option<PathBuf>,
    /// The manifest's problems, if it is invalid.
    pub manifest_error: Option<ManifestError>,
    /// Other errors (entrypoint missing, outside the dir, or of an unsupported kind).
    pub errors: Vec<String>,
    /// Warnings (unknown keys, clamped values, `.env` lines skipped).
    pub warnings: Vec<String>,
    /// The worker kind and entrypoint, when the app version is valid.
    pub runs_as: Option<(WorkerKind, PathBuf)>,
    /// `enabled: false` in the manifest.
    pub disabled: bool,
}

impl CheckEntry {
    /// Whether this app version has any error.
    pub fn is_ok(&self) -> bool {
        self.manifest_error.is_none() && self.errors.is_empty()
    }

    fn error_count(&self) -> usize {
        self.manifest_error.as_ref().map_or(0, |e| e.problems.len()) + self.errors.len()
    }

    fn warning_count(&self) -> usize {
        self.warnings.len() + self.manifest_error.as_ref().map_or(0, |e| e.warnings.len())
    }
}

impl CheckReport {
    /// True when nothing failed (warnings allowed): `marina check` exits 0.
    pub fn is_ok(&self) -> bool {
        self.entries.iter().all(CheckEntry::is_ok) && !self.notes.iter().any(|n| matches!(n, Note::Error(_)))
    }
}

/// Check `dir`: an app dir (it has a manifest, `package.json` or `index.*`) or a worker dir
/// holding apps in any layout (every version is checked).
pub fn check_dir(dir: &Path) -> CheckReport {
    let root = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut report = CheckReport { root: root.clone(), entries: Vec::new(), notes: Vec::new() };
    if !root.is_dir() {
        report.notes.push(Note::Error(format!("{} is not a directory", root.display())));
        return report;
    }
    let is_app_dir = MANIFEST_FILES
        .iter()
        .chain(["package.json"].iter())
        .chain(DEFAULT_ENTRYPOINTS.iter())
        .any(|f| root.join(f).is_file());
    if is_app_dir {
        report.entries.push(check_app(&app_label(&root), &root));
        return report;
    }
    let reg = Registry::new(vec![root.clone()]);
    for r in reg.all_versions() {
        report.entries.push(check_app(&format!("{}@{}", r.name, r.version), &r.dir));
    }
    report.notes.extend(odd_folders(&root));
    if report.entries.is_empty() {
        report.notes.push(Note::Warning(format!(
            "no apps found in {}: expected app folders such as `todo/`, `todo@1.2.3/` or `todo/1.2.3/`",
            root.display()
        )));
    }
    report
}

/// `name@version` for an app dir checked on its own, from the folder layout.
fn app_label(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let folder = name(dir);
    if folder.contains('@') {
        folder
    } else if folder == "latest" || registry::folder_version(&folder).is_some() {
        format!("{}@{folder}", dir.parent().map(name).unwrap_or_default())
    } else {
        format!("{folder}@latest")
    }
}

/// Folders in a worker dir named like flat versions whose version is not one.
fn odd_folders(root: &Path) -> Vec<Note> {
    let Ok(rd) = std::fs::read_dir(root) else { return Vec::new() };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| {
            let (app, v) = n.split_once('@')?;
            if app.is_empty() || v == "latest" || registry::folder_version(v).is_some() {
                return None;
            }
            Some(Note::Warning(format!(
                "{} is skipped: {v:?} is neither `latest` nor a version such as 1.2.3",
                root.join(&n).display()
            )))
        })
        .collect()
}

fn check_app(label: &str, dir: &Path) -> CheckEntry {
    let mut entry = CheckEntry {
        app: label.to_string(),
        dir: dir.to_path_buf(),
        manifest: manifest::find_manifest(dir),
        manifest_error: None,
        errors: Vec::new(),
        warnings: Vec::new(),
        runs_as: None,
        disabled: false,
    };
    match manifest::load(dir) {
        Err(e) => entry.manifest_error = Some(e),
        Ok(loaded) => {
            entry.warnings = loaded.warnings;
            entry.disabled = !loaded.config.enabled;
            match registry::resolve_entrypoint(dir, &loaded.config) {
                Ok((entrypoint, kind)) => entry.runs_as = Some((kind, entrypoint)),
                Err(e) => entry.errors.push(e.message().to_string()),
            }
        }
    }
    entry
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for CheckEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.app, self.dir.display())?;
        if let Some(e) = &self.manifest_error {
            write!(f, "{e}")?;
        }
        let file = self.manifest.as_deref().unwrap_or(&self.dir);
        for w in &self.warnings {
            writeln!(f, "warning: {}: {w}", file.display())?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        if let Some((kind, entrypoint)) = &self.runs_as {
            let rel = entrypoint.strip_prefix(&self.dir).unwrap_or(entrypoint);
            let rel = if rel.as_os_str().is_empty() { "(none)".to_string() } else { rel.display().to_string() };
            let manifest = if self.manifest.is_some() { "" } else { ", no manifest (defaults)" };
            let disabled = if self.disabled { ", disabled (`enabled: false`)" } else { "" };
            writeln!(f, "ok: {} worker, entrypoint {rel}{manifest}{disabled}", kind.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for note in &self.notes {
            match note {
                Note::Error(m) => writeln!(f, "error: {m}")?,
                Note::Warning(m) => writeln!(f, "warning: {m}")?,
            }
        }
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 || !self.notes.is_empty() {
                writeln!(f)?;
            }
            write!(f, "{entry}")?;
        }
        let failed: Vec<&CheckEntry> = self.entries.iter().filter(|e| !e.is_ok()).collect();
        let errors: usize = failed.iter().map(|e| e.error_count()).sum::<usize>()
            + self.notes.iter().filter(|n| matches!(n, Note::Error(_))).count();
        let warnings: usize = self.entries.iter().map(CheckEntry::warning_count).sum::<usize>()
            + self.notes.iter().filter(|n| matches!(n, Note::Warning(_))).count();
        if !self.entries.is_empty() || !self.notes.is_empty() {
            writeln!(f)?;
        }
        let checked = plural(self.entries.len(), "app version", "app versions");
        let outcome = if self.is_ok() {
            "ok".to_string()
        } else {
            format!("{} in {}", plural(errors, "error", "errors"), plural(failed.len(), "app version", "app versions"))
        };
        writeln!(
            f,
            "checked {checked} in {}: {outcome}, {}",
            self.root.display(),
            plural(warnings, "warning", "warnings")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn worker_dir_report_text() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(r, "hello/index.html", "hi");
        write(r, "todo@1.0.0/manifest.yaml", "ttl: 5x\ntll: 3\nvisibility: secret\n");
        write(r, "todo@1.0.0/index.ts", "");
        write(r, "todo/2.0.0/manifest.yaml", "entrypoint: main.ts\nidleTimeout: 1h\nttl: 1m\n");
        write(r, "todo/2.0.0/main.ts", "");
        write(r, "py@latest/manifest.yaml", "enabled: false\n");
        write(r, "py@latest/app.py", "");
        write(r, "todo@v3/index.html", "");
        let report = check_dir(r);
        assert!(!report.is_ok());
        let text = report.to_string().replace(&r.display().to_string(), "<dir>");
        let want = r#"warning: <dir>/todo@v3 is skipped: "v3" is neither `latest` nor a version such as 1.2.3

hello@latest (<dir>/hello)
ok: static worker, entrypoint index.html, no manifest (defaults)

py@latest (<dir>/py@latest)
error: app dir <dir>/py@latest has no entrypoint: none of `index.html`, `index.ts`, `index.js`, `index.mjs` exists

todo@2.0.0 (<dir>/todo/2.0.0)
warning: <dir>/todo/2.0.0/manifest.yaml: `idleTimeout` (3600s) is longer than `ttl` (60s) and is clamped to it
ok: js worker, entrypoint main.ts

todo@1.0.0 (<dir>/todo@1.0.0)
error: invalid app manifest <dir>/todo@1.0.0/manifest.yaml (2 problems)
  - `ttl`: invalid duration "5x": expected a number of seconds or a string such as "500ms", "30s", "5m", "1h", "2d"
  - `visibility`: expected one of "public", "protected", "internal", found the string "secret"
warning: <dir>/todo@1.0.0/manifest.yaml: unknown key `tll` is ignored: did you mean `ttl`?

checked 4 app versions in <dir>: 3 errors in 2 app versions, 3 warnings
"#;
        assert_eq!(text, want, "got:\n{text}");
    }

    #[test]
    fn single_app_dir_and_not_a_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("blog/1.2.0");
        write(&app, "index.js", "");
        let report = check_dir(&app);
        assert!(report.is_ok());
        assert_eq!(report.entries[0].app, "blog@1.2.0");
        assert!(report.to_string().ends_with(": ok, 0 warnings\n"), "{report}");

        let report = check_dir(&tmp.path().join("nope"));
        assert!(!report.is_ok());
        assert!(report.to_string().starts_with("error: "), "{report}");

        let empty = tempfile::tempdir().unwrap();
        let report = check_dir(empty.path());
        assert!(report.is_ok());
        assert!(report.to_string().contains("warning: no apps found"), "{report}");
    }
}
