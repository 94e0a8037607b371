//! Golden files for manifests (style guide §7): `manifests/invalid/<case>.{yaml,json}` beside
//! `<case>.err`, the exact text `marina check` prints for it (the `ManifestError` display);
//! `manifests/valid/<case>.{yaml,json}` beside `<case>.out`, its warnings and typed config.
//! Each case is copied into a fresh app dir as `manifest.yaml` (or `worker.config.json`) and read
//! with `manifest::load`; that dir's path is written `<dir>`. `BLESS=1` rewrites the expected
//! files instead of comparing.

use std::fs;
use std::path::{Path, PathBuf};

use marina_apps::manifest;

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests").join(kind);
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "json")))
        .collect();
    cases.sort();
    cases
}

/// Load one fixture as the manifest of a fresh app dir; the text it produces, normalised.
fn run(case: &Path) -> (bool, String) {
    let app = tempfile::tempdir().unwrap();
    let file = if case.extension().is_some_and(|e| e == "json") { "worker.config.json" } else { "manifest.yaml" };
    fs::copy(case, app.path().join(file)).unwrap();
    let (ok, text) = match manifest::load(app.path()) {
        Ok(m) => {
            let mut out = String::new();
            for w in &m.warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
            out.push_str(&format!("{:#?}\n", m.config));
            (true, out)
        }
        Err(e) => (false, e.to_string()),
    };
    (ok, text.replace(&app.path().display().to_string(), "<dir>"))
}

fn golden(kind: &str, expected_ext: &str, want_ok: bool) {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    let cases = cases(kind);
    assert!(!cases.is_empty(), "no {kind} fixtures");
    for case in &cases {
        let (ok, text) = run(case);
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        if ok != want_ok {
            failures.push(format!("{name}: expected {}, got:\n{text}", if want_ok { "success" } else { "an error" }));
            continue;
        }
        let expected_path = case.with_extension(expected_ext);
        if bless {
            fs::write(&expected_path, &text).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(want) if want == text => {}
            Ok(want) => failures.push(format!("{name}:\n--- want\n{want}--- got\n{text}")),
            Err(_) => {
                failures.push(format!("{name}: missing {} (run with BLESS=1); got:\n{text}", expected_path.display()))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {kind} cases differ:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_manifests_print_exact_errors() {
    golden("invalid", "err", false);
}

#[test]
fn valid_manifests_give_exact_warnings_and_config() {
    golden("valid", "out", true);
}
