//! Per-app PostgreSQL login roles (`marina_store::app_role`) on a real server: two marina
//! instances provisioning the same app at once agree on one role, an app's sessions run as its
//! role and reach its schema (including tables marina's migrations create there later), marina
//! still reaches what the app created, and another app reaches neither it nor marina's tables.

mod common;

use marina_store::{Store, app_role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_runs_as_its_own_role_and_reaches_only_its_schema() {
    let Some(base) = common::pg_base_url() else { return };
    let url = common::fresh_pg_database(&base).await;
    let state = tempfile::tempdir().unwrap();
    let system = Store::open(Some(&url), state.path()).await.unwrap();
    system.migrate_system().await.unwrap();
    let other_instance = Store::open(Some(&url), state.path()).await.unwrap();

    let (a, b) = tokio::join!(app_role::ensure(&system, "shop"), app_role::ensure(&other_instance, "shop"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.role, b.role);
    let again = app_role::ensure(&system, "shop").await.unwrap();
    assert_eq!(again.role, a.role);

    let shop = Store::open_app_as_app(&system, Some(&url), state.path(), "shop").await.unwrap();
    let who: String = shop.query_opt("SELECT current_user::text AS u", &[]).await.unwrap().unwrap().get("u").unwrap();
    assert_eq!(who, a.role);
    shop.execute("CREATE TABLE items (id BIGINT PRIMARY KEY)", &[]).await.unwrap();
    shop.execute("INSERT INTO items VALUES (1)", &[]).await.unwrap();
    // marina (admin routes, dropping the tenant) reaches what the app created.
    let n: i64 =
        system.query_opt("SELECT COUNT(*) AS n FROM app_shop.items", &[]).await.unwrap().unwrap().get("n").unwrap();
    assert_eq!(n, 1);
    // A table an app migration (marina's role) creates later is the app's to use.
    let migrations = Store::open_app(Some(&url), state.path(), "shop").await.unwrap();
    migrations.execute("CREATE TABLE from_migration (x INT)", &[]).await.unwrap();
    shop.execute("INSERT INTO from_migration VALUES (1)", &[]).await.unwrap();

    let other = Store::open_app_as_app(&system, Some(&url), state.path(), "other").await.unwrap();
    for sql in [
        "SELECT * FROM app_shop.items",
        "SELECT * FROM marina.marina_meta",
        "SELECT * FROM marina.marina_app_roles",
        "CREATE TABLE app_shop.planted (x INT)",
        "CREATE SCHEMA planted",
    ] {
        let e = other.query(sql, &[]).await.unwrap_err();
        assert!(e.message().contains("permission denied"), "{sql}: {}", e.message());
    }
    let e = other.execute("SET ROLE marina", &[]).await.unwrap_err();
    assert!(e.message().contains("permission denied to set role"), "{}", e.message());
}
