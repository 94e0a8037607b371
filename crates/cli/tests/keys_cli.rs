//! `marina keys` against a real SQLite database in a temporary state dir.

use std::process::{Command, Output};

fn marina(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marina"))
        .arg("keys")
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUNTIME_STATE_DIR", state)
        .output()
        .expect("run marina")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn create_list_revoke() {
    let state = tempfile::tempdir().unwrap();
    let o = marina(
        state.path(),
        &[
            "create",
            "--name",
            "deploy",
            "--role",
            "custom",
            "--permissions",
            "apps:read,apps:install",
            "--expires-in",
            "30d",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let created: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("btk_"));
    assert_eq!(created["role"], "custom");

    let o = marina(state.path(), &["list", "--json"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(!text.contains(key), "the secret is never listed: {text}");
    let listed: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(listed["keys"][0]["permissions"], serde_json::json!(["apps:read", "apps:install"]));
    assert!(listed["keys"][0]["expiresAt"].as_i64().is_some());

    // Plain output prints the key alone on stdout, so `$(marina keys create ...)` captures it.
    let o = marina(state.path(), &["create", "--name", "ops"]);
    assert!(o.status.success());
    assert!(stdout(&o).trim().starts_with("btk_") && stdout(&o).lines().count() == 1);

    let o = marina(state.path(), &["revoke", "1"]);
    assert!(o.status.success());
    let o = marina(state.path(), &["list"]);
    assert!(!stdout(&o).contains("deploy") && stdout(&o).contains("ops"), "{}", stdout(&o));
}

#[test]
fn bad_input_exits_2_with_the_reason() {
    let state = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (&["create", "--name", "x", "--role", "god"][..], "Invalid role"),
        (&["create", "--name", "x", "--role", "custom"][..], "at least one permission"),
        (&["create", "--name", "x", "--expires-in", "tomorrow"][..], "Invalid expiration"),
        (&["create", "--name", " "][..], "non-empty"),
        (&["revoke", "42"][..], "no active API key with id 42"),
    ] {
        let o = marina(state.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let o = marina(state.path(), &["meta"]);
    assert!(stdout(&o).contains("workers:restart"));
}
