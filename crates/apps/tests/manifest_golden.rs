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

/// A secret outside every app dir, which symlinked manifests and `.env` files point at.
const SECRET: &str = "ROOT_KEY=s3cr3t-do-not-leak\n";

/// The refused-file cases: built in code (symlinks, FIFOs and large files are not fixtures a
/// checkout can hold), each beside `manifests/refused/<case>.err`.
fn refused_case(name: &str, app: &Path, outside: &Path) {
    use std::os::unix::fs::symlink;
    let fifo = |p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let huge = vec![b'#'; 1024 * 1024 + 1];
    match name {
        "manifest_symlink_outside" => symlink(outside.join("secret.env"), app.join("manifest.yaml")).unwrap(),
        "manifest_relative_symlink_outside" => {
            symlink(Path::new("..").join(outside.file_name().unwrap()).join("secret.env"), app.join("manifest.yaml"))
                .unwrap()
        }
        "manifest_symlink_to_device" => symlink("/dev/zero", app.join("manifest.yaml")).unwrap(),
        "manifest_fifo" => fifo(&app.join("manifest.yaml")),
        "manifest_huge" => fs::write(app.join("manifest.yaml"), &huge).unwrap(),
        "manifest_directory" => fs::create_dir(app.join("manifest.yaml")).unwrap(),
        "json_manifest_symlink_outside" => symlink(outside.join("secret.env"), app.join("worker.config.json")).unwrap(),
        "env_symlink_outside" => {
            fs::write(app.join("manifest.yaml"), "ttl: 1m\n").unwrap();
            symlink(outside.join("secret.env"), app.join(".env")).unwrap()
        }
        "env_fifo" => fifo(&app.join(".env")),
        "env_huge" => fs::write(app.join(".env"), &huge).unwrap(),
        other => panic!("unknown case {other}"),
    }
}

const REFUSED: [&str; 10] = [
    "manifest_symlink_outside",
    "manifest_relative_symlink_outside",
    "manifest_symlink_to_device",
    "manifest_fifo",
    "manifest_huge",
    "manifest_directory",
    "json_manifest_symlink_outside",
    "env_symlink_outside",
    "env_fifo",
    "env_huge",
];

#[test]
fn refused_app_files_print_exact_errors_without_their_content() {
    let bless = std::env::var_os("BLESS").is_some();
    let expected_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/refused");
    let mut failures = Vec::new();
    for name in REFUSED {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        let app = root.path().join("app");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&app).unwrap();
        fs::write(outside.join("secret.env"), SECRET).unwrap();
        refused_case(name, &app, &outside);
        // A FIFO must not block the read: do it on a thread with a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = app.clone();
        std::thread::spawn(move || {
            let _ = tx.send(manifest::load(&dir));
        });
        let loaded = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap_or_else(|_| panic!("{name}: blocked"));
        let err = match loaded {
            Ok(m) => {
                failures.push(format!("{name}: loaded instead of refused: {m:?}"));
                continue;
            }
            Err(e) => e,
        };
        assert!(err.refused, "{name}: {err}");
        let public: marina_core::Error = err.clone().into();
        assert_eq!(public.code(), "APP_FILE_REFUSED", "{name}");
        let everything = format!("{err}{}{}", public.message(), public.to_json());
        assert!(!everything.contains("s3cr3t") && !everything.contains("ROOT_KEY"), "{name} leaks: {everything}");
        assert!(!everything.contains(&outside.display().to_string()), "{name} names the target: {everything}");
        let text = err.to_string().replace(&app.display().to_string(), "<dir>");
        let path = expected_dir.join(format!("{name}.err"));
        if bless {
            fs::create_dir_all(&expected_dir).unwrap();
            fs::write(&path, &text).unwrap();
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(want) if want == text => {}
            Ok(want) => failures.push(format!("{name}:\n--- want\n{want}--- got\n{text}")),
            Err(_) => failures.push(format!("{name}: missing {} (run with BLESS=1); got:\n{text}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A symlinked manifest or `.env` that stays inside the app dir is read as usual.
#[test]
fn symlinks_inside_the_app_dir_are_followed() {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    fs::create_dir_all(app.join("conf")).unwrap();
    fs::write(app.join("conf/manifest.yaml"), "ttl: 2m\n").unwrap();
    fs::write(app.join("conf/app.env"), "GREETING=hi\n").unwrap();
    std::os::unix::fs::symlink("conf/manifest.yaml", app.join("manifest.yaml")).unwrap();
    std::os::unix::fs::symlink("conf/app.env", app.join(".env")).unwrap();
    let m = manifest::load(&app).unwrap();
    assert_eq!(m.config.ttl, std::time::Duration::from_secs(120));
    assert_eq!(m.config.env.get("GREETING").map(String::as_str), Some("hi"));
}
