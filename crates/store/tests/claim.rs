//! Claims on apps' SQLite databases: the first app whose name maps to a database owns it.

use marina_store::{app_sqlite_path, claim_app_database, release_app_database};

#[test]
fn the_first_name_owns_the_database_and_claims_again_read_only() {
    let state = tempfile::tempdir().unwrap();
    let path = claim_app_database(state.path(), "Foo-Bar").unwrap();
    assert_eq!(path, app_sqlite_path(state.path(), "foo_bar"));
    let owner = state.path().join("apps/foo_bar.owner");
    assert_eq!(std::fs::read_to_string(&owner).unwrap(), "Foo-Bar");
    // Claimed again: the same path, and nothing is written (no temporary files left either).
    let before = std::fs::metadata(&owner).unwrap().modified().unwrap();
    assert_eq!(claim_app_database(state.path(), "Foo-Bar").unwrap(), path);
    assert_eq!(std::fs::metadata(&owner).unwrap().modified().unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(state.path().join("apps")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["foo_bar.owner"]);
    // Another name mapping to the same database is refused, naming the owner.
    let err = claim_app_database(state.path(), "foo_bar").unwrap_err();
    assert_eq!(err.code(), "APP_DATABASE_CONFLICT");
    assert!(err.message().contains("'Foo-Bar'"), "{}", err.message());
    // Released (the database was deleted): the next app to ask owns it.
    release_app_database(state.path(), "foo_bar");
    assert!(claim_app_database(state.path(), "foo_bar").is_ok());
    assert_eq!(claim_app_database(state.path(), "Foo-Bar").unwrap_err().code(), "APP_DATABASE_CONFLICT");
}
