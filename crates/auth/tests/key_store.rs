//! The key store on real databases: SQLite, and PostgreSQL when `MARINA_TEST_DATABASE_URL` is set.

mod common;

use std::time::{Duration, Instant};

use marina_auth::keys::{KeyCheck, KeyStore, NewKey};
use marina_store::Value;

fn new_key(name: &str, role: Option<&str>) -> NewKey {
    NewKey { name: Some(name.into()), role: role.map(str::to_owned), ..Default::default() }
}

#[tokio::test]
async fn lifecycle_on_every_backend() {
    for db in common::test_dbs().await {
        let label = db.label;
        let store = db.store().await;
        let keys = KeyStore::new(store.clone());
        assert!(!keys.any_exist().await.unwrap(), "{label}");
        assert!(keys.list().await.unwrap().is_empty());

        let created = keys.create(new_key("ci", None), None).await.unwrap();
        assert_eq!(created.id, 1, "{label}: Buntime's ids start at 1");
        assert!(created.key.starts_with("btk_") && created.key.len() == 47, "{label}");
        assert_eq!(created.key_prefix, &created.key[..12]);
        assert_eq!(created.role.as_str(), "editor", "{label}: editor is the default role");
        assert!(keys.any_exist().await.unwrap());

        // At rest: the SHA-256 of the key, never the key.
        let rows = store.query("SELECT * FROM marina_api_keys", &[]).await.unwrap();
        let cells: Vec<String> = rows[0]
            .values()
            .iter()
            .filter_map(|v| if let Value::Text(t) = v { Some(t.clone()) } else { None })
            .collect();
        assert!(!cells.iter().any(|c| c.contains(&created.key[12..])), "{label}: secret stored: {cells:?}");
        let hash = rows[0].get::<String>("key_hash").unwrap();
        assert_eq!(hash, marina_auth::keys::secret::hash_hex(&created.key));

        // Listing shows no secret and no hash.
        let listed = serde_json::to_value(keys.list().await.unwrap()).unwrap();
        let text = listed.to_string();
        assert!(!text.contains(&created.key) && !text.contains(&hash), "{label}: {text}");
        assert_eq!(listed[0]["keyPrefix"], created.key_prefix.as_str());
        assert_eq!(listed[0]["role"], "editor");
        assert!(listed[0].get("expiresAt").is_none() && listed[0].get("revokedAt").is_none());

        // Verify: the right key, a wrong one, a near miss with the same prefix.
        let KeyCheck::Valid(info) = keys.verify(&created.key).await.unwrap() else { panic!("{label}: valid key") };
        assert!(info.has_permission("apps:install") && !info.has_permission("keys:create"));
        assert_eq!(keys.verify("btk_nope").await.unwrap(), KeyCheck::Unknown);
        let mut near = created.key.clone();
        near.pop();
        near.push(if created.key.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(keys.verify(&near).await.unwrap(), KeyCheck::Unknown, "{label}");
        assert_eq!(keys.verify("not-a-btk-key").await.unwrap(), KeyCheck::Unknown);

        // lastUsedAt is written in the background after a successful check.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if keys.get(1).await.unwrap().unwrap().last_used_at.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "{label}: lastUsedAt never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Expiry: a key whose expiresAt has passed stops working.
        let short = keys
            .create(NewKey { expires_in: Some("1d".into()), ..new_key("short", Some("viewer")) }, Some(1))
            .await
            .unwrap();
        assert_eq!(short.id, 2);
        let info = keys.get(2).await.unwrap().unwrap();
        assert_eq!(info.created_by, Some(1));
        assert!((info.expires_at.unwrap() - info.created_at - 86_400).abs() <= 1, "{label}");
        assert!(matches!(keys.verify(&short.key).await.unwrap(), KeyCheck::Valid(_)));
        store
            .execute("UPDATE marina_api_keys SET expires_at = $1 WHERE id = 2", &[Value::from(info.created_at - 1)])
            .await
            .unwrap();
        assert!(matches!(keys.verify(&short.key).await.unwrap(), KeyCheck::Expired(_)), "{label}");
        assert_eq!(keys.list().await.unwrap().len(), 2, "{label}: expired keys are still listed, as in Buntime");

        // Revocation: at once, not listed, a second revoke is 404.
        keys.revoke(1).await.unwrap();
        assert!(matches!(keys.verify(&created.key).await.unwrap(), KeyCheck::Revoked(_)), "{label}");
        assert_eq!(keys.list().await.unwrap().iter().map(|k| k.id).collect::<Vec<_>>(), vec![2]);
        let e = keys.revoke(1).await.unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (404, "API_KEY_NOT_FOUND"), "{label}");
        assert_eq!(keys.revoke(99).await.unwrap_err().code(), "API_KEY_NOT_FOUND");

        // A second handle (another instance) sees the same keys and revocations.
        let other = KeyStore::new(db.store().await);
        assert!(other.any_exist().await.unwrap());
        assert!(matches!(other.verify(&created.key).await.unwrap(), KeyCheck::Revoked(_)), "{label}");

        // Custom keys carry exactly their permissions.
        let custom = keys
            .create(
                NewKey {
                    permissions: Some(vec!["apps:read".into(), "keys:read".into()]),
                    ..new_key("c", Some("custom"))
                },
                None,
            )
            .await
            .unwrap();
        let KeyCheck::Valid(info) = keys.verify(&custom.key).await.unwrap() else { panic!() };
        assert_eq!(info.permissions, vec!["apps:read", "keys:read"]);
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field() {
    for db in common::test_dbs().await {
        let keys = KeyStore::new(db.store().await);
        let cases: Vec<(NewKey, &str, &str)> = vec![
            (NewKey::default(), "MISSING_KEY_NAME", "name"),
            (new_key("   ", None), "MISSING_KEY_NAME", "name"),
            (new_key(&"x".repeat(201), None), "INVALID_KEY_NAME", "name"),
            (new_key("a", Some("owner")), "INVALID_KEY_ROLE", "role"),
            (new_key("a", Some("custom")), "MISSING_PERMISSIONS", "permissions"),
            (
                NewKey { permissions: Some(vec!["apps:fly".into()]), ..new_key("a", Some("custom")) },
                "INVALID_PERMISSION",
                "permissions[0]",
            ),
            (
                NewKey { permissions: Some(vec!["apps:read".into()]), ..new_key("a", Some("viewer")) },
                "INVALID_PERMISSION",
                "permissions",
            ),
            (NewKey { expires_in: Some("soon".into()), ..new_key("a", None) }, "INVALID_EXPIRATION", "expiresIn"),
        ];
        for (input, code, path) in cases {
            let e = keys.create(input, None).await.unwrap_err();
            assert_eq!((e.status().as_u16(), e.code()), (400, code), "{}", db.label);
            assert_eq!(e.data().unwrap()["path"], path, "{}: {code}", db.label);
        }
        assert!(!keys.any_exist().await.unwrap(), "{}: nothing was created", db.label);
    }
}

#[tokio::test]
async fn concurrent_creates_get_distinct_ids() {
    for db in common::test_dbs().await {
        let a = KeyStore::new(db.store().await);
        let b = KeyStore::new(db.store().await);
        let mut tasks = Vec::new();
        for i in 0..12 {
            let ks = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { ks.create(new_key(&format!("k{i}"), None), None).await }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap_or_else(|e| panic!("{}: {e:?}", db.label)).id);
        }
        ids.sort();
        assert_eq!(ids, (1..=12).collect::<Vec<_>>(), "{}", db.label);
    }
}
