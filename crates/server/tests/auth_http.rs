//! Authentication through the whole server over real HTTP on 127.0.0.1: the internal API's keys
//! (lifecycle, roles, CSRF), JWT on app routes against a real JWKS server, `publicRoutes`,
//! `x-identity`, and a valid key skipping no other plugin.

mod common;
#[path = "../../auth/tests/support/jwt.rs"]
mod jwt;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, StatusCode};
use jwt::{JwksServer, claims, fixture, now, sign, sign_hs};
use marina_core::{Body, Error};
use marina_plugins::{Loaded, Outcome, Plugin, PluginSpec, RequestContext, async_trait};
use reqwest::Client;
use serde_json::{Value, json};

const ROOT: &str = "root-key-for-tests-0123456789";

/// One JS app that answers with the path and every header it received; `/health` and
/// `/public/**` are public.
fn apps() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("echo");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("index.js"),
        "export default { fetch(req) { const u = new URL(req.url); \
         return Response.json({ path: u.pathname, headers: Object.fromEntries(req.headers) }); } };\n",
    )
    .unwrap();
    std::fs::write(
        app.join("manifest.yaml"),
        "entrypoint: index.js\nttl: 60s\npublicRoutes:\n  ALL: [\"/health\", \"/public/**\"]\n  POST: [\"/hooks/*\"]\n",
    )
    .unwrap();
    dir
}

fn node(r: &mut marina_server::RawConfig) {
    r.set("RUNTIME_JS", "node");
}

async fn body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `(status, code)` of an error answer; the body must be marina's error shape.
async fn err(resp: reqwest::Response) -> (u16, String) {
    let (status, v) = body(resp).await;
    assert_eq!(v["success"], false, "{v}");
    (status, v["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_lifecycle_roles_and_csrf() {
    let apps = apps();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().display().to_string();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_STATE_DIR", state_dir.clone());
    })
    .await;
    let c = Client::new();
    let api = |p: &str| format!("{}/api{p}", srv.base);
    let origin = srv.base.clone();

    // No key exists and no root key: the API is open, but state changes need a same-host Origin.
    let (s, v) = body(c.get(api("/keys")).send().await.unwrap()).await;
    assert_eq!((s, v), (200, json!({"keys": []})));
    let (s, v) = body(c.get(api("/keys/meta")).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"permissions":["apps:read","apps:install","apps:remove","plugins:read","plugins:install","plugins:remove","plugins:config","keys:read","keys:create","keys:revoke","workers:read","workers:restart"],"roles":["admin","editor","viewer","custom"]}),
        "Buntime's body"
    );
    let new_admin = json!({"name": "admin", "role": "admin"});
    assert_eq!(err(c.post(api("/keys")).json(&new_admin).send().await.unwrap()).await, (403, "ORIGIN_REQUIRED".into()));
    let evil = c.post(api("/keys")).header("origin", "http://evil.example").json(&new_admin).send().await.unwrap();
    assert_eq!(err(evil).await, (403, "ORIGIN_MISMATCH".into()));
    let (s, v) = body(c.post(api("/keys")).header("origin", &origin).json(&new_admin).send().await.unwrap()).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["success"], true);
    let admin = v["data"]["key"].as_str().unwrap().to_string();
    assert!(admin.starts_with("btk_") && v["data"]["id"] == 1 && v["data"]["keyPrefix"] == admin[..12]);

    // Now a key exists: everything but the public routes needs one.
    assert_eq!(err(c.get(api("/apps")).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    assert_eq!(err(c.get(api("/keys")).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    assert_eq!(c.get(api("/health")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(api("/health/ready")).send().await.unwrap().status(), 200);
    assert_eq!(
        err(c.get(api("/apps")).header("x-api-key", "btk_wrong").send().await.unwrap()).await,
        (401, "API_KEY_INVALID".into())
    );
    assert_eq!(c.get(api("/apps")).header("x-api-key", &admin).send().await.unwrap().status(), 200);
    assert_eq!(c.get(api("/apps")).bearer_auth(&admin).send().await.unwrap().status(), 200);

    // The admin creates a viewer and an editor; a key's own request needs no Origin.
    let mk = |name: &str, role: &str| json!({"name": name, "role": role, "description": "test"});
    let (s, v) =
        body(c.post(api("/keys")).header("x-api-key", &admin).json(&mk("ro", "viewer")).send().await.unwrap()).await;
    assert_eq!(s, 201, "{v}");
    let viewer = v["data"]["key"].as_str().unwrap().to_string();
    let viewer_id = v["data"]["id"].as_i64().unwrap();
    let (_, v) =
        body(c.post(api("/keys")).header("x-api-key", &admin).json(&mk("ed", "editor")).send().await.unwrap()).await;
    let editor = v["data"]["key"].as_str().unwrap().to_string();

    // Listing: no secrets, createdBy is the admin key.
    let (s, v) = body(c.get(api("/keys")).header("x-api-key", &viewer).send().await.unwrap()).await;
    assert_eq!(s, 200);
    let text = v.to_string();
    for secret in [&admin, &viewer, &editor] {
        assert!(!text.contains(secret.as_str()), "a secret was listed: {text}");
    }
    let ro = v["keys"].as_array().unwrap().iter().find(|k| k["name"] == "ro").unwrap().clone();
    assert_eq!(ro["createdBy"], 1);
    assert_eq!(ro["role"], "viewer");
    assert_eq!(ro["description"], "test");

    // Roles: a viewer reads, but cannot create or revoke; an editor cannot touch keys.
    assert_eq!(c.get(api("/apps")).header("x-api-key", &viewer).send().await.unwrap().status(), 200);
    assert_eq!(c.get(api("/workers")).header("x-api-key", &viewer).send().await.unwrap().status(), 200);
    let (s, v) =
        body(c.post(api("/keys")).header("x-api-key", &viewer).json(&mk("x", "admin")).send().await.unwrap()).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("PERMISSION_DENIED")));
    assert_eq!(v["data"]["permission"], "keys:create");
    let del = c.delete(api("/keys/1")).header("x-api-key", &viewer).send().await.unwrap();
    assert_eq!(err(del).await, (403, "PERMISSION_DENIED".into()));
    assert_eq!(
        err(c.get(api("/keys")).header("x-api-key", &editor).send().await.unwrap()).await,
        (403, "PERMISSION_DENIED".into())
    );
    assert_eq!(c.get(api("/apps")).header("x-api-key", &editor).send().await.unwrap().status(), 200);

    // Bad bodies and ids name what is wrong.
    let post_raw = |b: &'static str| {
        c.post(api("/keys")).header("x-api-key", &admin).header("content-type", "application/json").body(b)
    };
    let (s, v) = body(post_raw(r#"{"name": 5}"#).send().await.unwrap()).await;
    assert_eq!((s, v["code"].as_str(), v["data"]["path"].as_str()), (400, Some("INVALID_KEY_FIELD"), Some("name")));
    assert_eq!(err(post_raw("{").send().await.unwrap()).await, (400, "INVALID_JSON".into()));
    assert_eq!(
        err(post_raw(r#"{"name":"x","role":"god"}"#).send().await.unwrap()).await,
        (400, "INVALID_KEY_ROLE".into())
    );
    assert_eq!(
        err(post_raw(r#"{"name":"x","expiresIn":"soon"}"#).send().await.unwrap()).await,
        (400, "INVALID_EXPIRATION".into())
    );
    assert_eq!(
        err(c.delete(api("/keys/abc")).header("x-api-key", &admin).send().await.unwrap()).await,
        (400, "INVALID_KEY_ID".into())
    );
    assert_eq!(
        err(c.delete(api("/keys/99")).header("x-api-key", &admin).send().await.unwrap()).await,
        (404, "API_KEY_NOT_FOUND".into())
    );
    assert_eq!(
        err(c.put(api("/keys")).header("x-api-key", &admin).send().await.unwrap()).await,
        (405, "METHOD_NOT_ALLOWED".into())
    );

    // Expiry: a key past its expiresAt stops working (the clock is moved in the database).
    let (_, v) = body(
        c.post(api("/keys"))
            .header("x-api-key", &admin)
            .json(&json!({"name": "tmp", "role": "viewer", "expiresIn": "1d"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let tmp = v["data"]["key"].as_str().unwrap().to_string();
    let tmp_id = v["data"]["id"].as_i64().unwrap();
    assert_eq!(c.get(api("/apps")).header("x-api-key", &tmp).send().await.unwrap().status(), 200);
    let store = marina_store::Store::open(None, state.path()).await.unwrap();
    store
        .execute("UPDATE marina_api_keys SET expires_at = $1 WHERE id = $2", &[(now() - 1).into(), tmp_id.into()])
        .await
        .unwrap();
    assert_eq!(
        err(c.get(api("/apps")).header("x-api-key", &tmp).send().await.unwrap()).await,
        (401, "API_KEY_EXPIRED".into())
    );

    // Revocation: at once; the key is no longer listed; a second revoke is 404.
    let (s, v) =
        body(c.delete(api(&format!("/keys/{viewer_id}"))).header("x-api-key", &admin).send().await.unwrap()).await;
    assert_eq!((s, v), (200, json!({"success": true})));
    assert_eq!(
        err(c.get(api("/apps")).header("x-api-key", &viewer).send().await.unwrap()).await,
        (401, "API_KEY_REVOKED".into())
    );
    let (_, v) = body(c.get(api("/keys")).header("x-api-key", &admin).send().await.unwrap()).await;
    assert!(v["keys"].as_array().unwrap().iter().all(|k| k["id"] != viewer_id));
    let again = c.delete(api(&format!("/keys/{viewer_id}"))).header("x-api-key", &admin).send().await.unwrap();
    assert_eq!(err(again).await, (404, "API_KEY_NOT_FOUND".into()));

    // Revoking every key does not reopen the API.
    for id in 1..=4 {
        let _ = c.delete(api(&format!("/keys/{id}"))).header("x-api-key", &admin).send().await.unwrap();
    }
    assert_eq!(err(c.get(api("/apps")).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_key() {
    let apps = apps();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_MASTER_KEY", ROOT);
    })
    .await;
    let c = Client::new();
    let api = |p: &str| format!("{}/api{p}", srv.base);
    assert_eq!(err(c.get(api("/apps")).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    assert_eq!(
        err(c.get(api("/apps")).header("x-api-key", "root-key").send().await.unwrap()).await,
        (401, "API_KEY_INVALID".into())
    );
    assert_eq!(c.get(api("/apps")).header("x-api-key", ROOT).send().await.unwrap().status(), 200);
    // The root key may do anything, with no Origin; the keys it creates have no createdBy.
    let (s, v) = body(c.post(api("/keys")).bearer_auth(ROOT).json(&json!({"name": "k"})).send().await.unwrap()).await;
    assert_eq!(s, 201, "{v}");
    let (_, v) = body(c.get(api("/keys")).bearer_auth(ROOT).send().await.unwrap()).await;
    assert!(v["keys"][0].get("createdBy").is_none(), "{v}");
    assert_eq!(v["keys"][0]["role"], "editor", "Buntime's default role");
    // Without JWT configuration app routes are left alone: the app's own bearer passes through.
    let (s, v) =
        body(c.get(format!("{}/echo/x", srv.base)).bearer_auth("the-apps-own-token").send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["headers"]["authorization"], "Bearer the-apps-own-token");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_on_app_routes() {
    let apps = apps();
    let idp = JwksServer::start(&["rsa1", "ed1"]).await;
    let url = idp.url();
    let srv = common::start(apps.path(), |r| {
        node(r);
        r.set("RUNTIME_JWT_JWKS_URL", url.clone())
            .set("RUNTIME_JWT_JWKS_COOLDOWN", "0")
            .set("RUNTIME_JWT_ISSUER", "https://idp.test")
            .set("RUNTIME_ROOT_KEY", ROOT);
    })
    .await;
    let c = Client::new();
    let app = |p: &str| format!("{}/echo{p}", srv.base);
    let good = |sub: &str| {
        let mut cl = claims(sub);
        cl["iss"] = json!("https://idp.test");
        cl["roles"] = json!(["editor"]);
        cl
    };

    // No token: 401. A valid one: the worker gets the verified identity, not the client's.
    assert_eq!(err(c.get(app("/private")).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    let token = sign("rsa1", Some("rsa1"), &good("user-1"));
    let resp = c
        .get(app("/private"))
        .bearer_auth(&token)
        .header("x-identity", r#"{"id":"root","roles":["admin"]}"#)
        .send()
        .await
        .unwrap();
    let (s, v) = body(resp).await;
    assert_eq!(s, 200, "{v}");
    let identity: Value = serde_json::from_str(v["headers"]["x-identity"].as_str().unwrap()).unwrap();
    assert_eq!(identity["id"], "user-1");
    assert_eq!(identity["via"], "jwt");
    assert_eq!(identity["name"], "Ada");
    assert_eq!(identity["roles"], json!(["editor"]));
    assert_eq!(identity["claims"]["iss"], "https://idp.test");
    assert_eq!(v["headers"]["authorization"], format!("Bearer {token}"), "the app gets the token too");
    // EdDSA from the same key set.
    assert_eq!(c.get(app("/x")).bearer_auth(sign("ed1", Some("ed1"), &good("u2"))).send().await.unwrap().status(), 200);

    // Every way a token can be wrong is a 401 with its own code.
    let mut expired = good("u");
    expired["exp"] = json!(now() - 3600);
    let mut early = good("u");
    early["nbf"] = json!(now() + 3600);
    let mut wrong_iss = good("u");
    wrong_iss["iss"] = json!("https://evil.test");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(good("admin").to_string())
    );
    let cases = [
        (sign("rsa1", Some("rsa1"), &expired), "TOKEN_EXPIRED"),
        (sign("rsa1", Some("rsa1"), &early), "TOKEN_NOT_YET_VALID"),
        (sign("rsa2", Some("rsa1"), &good("u")), "TOKEN_INVALID"),
        (sign("rsa1", Some("rsa1"), &wrong_iss), "TOKEN_INVALID"),
        (none, "TOKEN_INVALID"),
        (sign_hs(fixture("rsa1.pub.pem").as_bytes(), &good("admin")), "TOKEN_INVALID"),
        (sign("ec1", Some("not-published"), &good("u")), "TOKEN_INVALID"),
        ("not.a.jwt".to_string(), "TOKEN_INVALID"),
    ];
    for (t, code) in cases {
        let resp = c.get(app("/private")).bearer_auth(&t).send().await.unwrap();
        assert_eq!(err(resp).await, (401, code.to_string()), "{t:.40}");
    }

    // Rotation: the provider publishes a new key; tokens signed with it work at once.
    idp.publish(&["rsa2"]);
    let rotated = sign("rsa2", Some("rsa2"), &good("user-3"));
    assert_eq!(c.get(app("/x")).bearer_auth(&rotated).send().await.unwrap().status(), 200);
    let old = c.get(app("/x")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(err(old).await, (401, "TOKEN_INVALID".into()), "the retired key no longer verifies");

    // publicRoutes: no token needed; a spoofed x-identity never reaches the worker; a bad token
    // is ignored there; dot segments never make a path public.
    let resp = c.get(app("/health")).header("x-identity", r#"{"id":"root"}"#).send().await.unwrap();
    let (s, v) = body(resp).await;
    assert_eq!(s, 200);
    assert!(v["headers"].get("x-identity").is_none(), "{v}");
    assert_eq!(c.get(app("/public/a/b.css")).bearer_auth("bad.to.ken").send().await.unwrap().status(), 200);
    let (s, v) = body(c.get(app("/public/x")).bearer_auth(&rotated).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert!(v["headers"]["x-identity"].as_str().unwrap().contains("user-3"), "a valid token still identifies");
    assert_eq!(c.post(app("/hooks/github")).send().await.unwrap().status(), 200);
    assert_eq!(err(c.get(app("/hooks/github")).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    assert_eq!(err(c.get(app("/public/..%2Fprivate")).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    // A CORS preflight carries no credentials and is not asked for any.
    let pre = c
        .request(reqwest::Method::OPTIONS, app("/private"))
        .header("origin", "http://a.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_ne!(pre.status(), 401);

    // A marina key works on app routes too, and the worker never sees it.
    let (s, v) = body(c.get(app("/x")).header("x-api-key", ROOT).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert!(v["headers"].get("x-api-key").is_none(), "{v}");
    let identity: Value = serde_json::from_str(v["headers"]["x-identity"].as_str().unwrap()).unwrap();
    assert_eq!((identity["id"].as_str(), identity["via"].as_str()), (Some("root"), Some("root-key")));
    // A key header comes before a bearer token, also one verified a moment ago: a wrong key
    // beside the remembered token is refused, the root key beside it identifies as root.
    assert_eq!(c.get(app("/x")).bearer_auth(&rotated).send().await.unwrap().status(), 200);
    let resp = c.get(app("/x")).bearer_auth(&rotated).header("x-api-key", "btk_wrong").send().await.unwrap();
    assert_eq!(err(resp).await.0, 401, "the wrong key was not passed over for the token");
    let (s, v) = body(c.get(app("/x")).bearer_auth(&rotated).header("x-api-key", ROOT).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert!(v["headers"]["x-identity"].as_str().unwrap().contains("root-key"), "{v}");
    // Tokens are for apps: the internal API takes keys only.
    let resp = c.get(format!("{}/api/apps", srv.base)).bearer_auth(&rotated).send().await.unwrap();
    assert_eq!(err(resp).await, (401, "API_KEY_INVALID".into()));
    srv.stop().await;
}

/// A plugin after auth: counts the calls it sees, records the identity, and answers 429 after
/// `limit` calls, as a rate limit would.
struct Limiter {
    seen: AtomicU32,
    limit: u32,
    last_identity: parking_lot::Mutex<Option<String>>,
}

#[async_trait]
impl Plugin for Limiter {
    async fn on_request(&self, _req: &mut Request<Body>, ctx: &mut RequestContext) -> Result<Outcome, Error> {
        *self.last_identity.lock() = ctx.identity.as_ref().map(|i| i.key());
        if self.seen.fetch_add(1, Ordering::SeqCst) >= self.limit {
            return Err(Error::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "slow down"));
        }
        Ok(Outcome::Continue)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_skips_no_other_plugin() {
    let apps = apps();
    let limiter = Arc::new(Limiter { seen: AtomicU32::new(0), limit: 2, last_identity: Default::default() });
    let loaded = Loaded::new(PluginSpec::new("limiter", ""), limiter.clone());
    let srv = common::start_with(
        apps.path(),
        |r| {
            r.set("RUNTIME_ROOT_KEY", ROOT);
        },
        vec![loaded],
    )
    .await;
    let c = Client::new();
    let api = format!("{}/api/apps", srv.base);
    for _ in 0..2 {
        assert_eq!(c.get(&api).header("x-api-key", ROOT).send().await.unwrap().status(), 200);
    }
    // The root key is still limited, and the limiter saw who was calling.
    assert_eq!(err(c.get(&api).header("x-api-key", ROOT).send().await.unwrap()).await, (429, "RATE_LIMITED".into()));
    assert_eq!(limiter.seen.load(Ordering::SeqCst), 3);
    assert_eq!(limiter.last_identity.lock().as_deref(), Some("root-key:root"));
    // Auth runs first: a request it refuses never reaches the limiter.
    assert_eq!(err(c.get(&api).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    assert_eq!(limiter.seen.load(Ordering::SeqCst), 3);
    srv.stop().await;
}

/// Buntime's `GET /api/admin/session` (routes/admin.test.ts): 401 `AUTH_REQUIRED` without
/// `X-API-Key` (a bearer key is not read there), the root key as Buntime's master principal
/// with every permission, a generated key with its own prefix, name, role and permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_session_says_whose_key_it_is() {
    let apps = apps();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_ROOT_KEY", ROOT);
    })
    .await;
    let c = Client::new();
    let session = format!("{}/api/admin/session", srv.base);
    let (s, v) = body(c.get(&session).send().await.unwrap()).await;
    assert_eq!((s, v["code"].as_str(), v["success"].as_bool()), (401, Some("AUTH_REQUIRED"), Some(false)), "{v}");
    assert!(v["error"].as_str().is_some(), "{v}");
    assert_eq!(err(c.get(&session).bearer_auth(ROOT).send().await.unwrap()).await, (401, "AUTH_REQUIRED".into()));
    assert_eq!(
        err(c.get(&session).header("x-api-key", "btk_wrong").send().await.unwrap()).await,
        (401, "API_KEY_INVALID".into())
    );

    let (s, v) = body(c.get(&session).header("x-api-key", ROOT).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["authenticated"], true);
    let p = &v["principal"];
    assert_eq!(
        (&p["isMaster"], &p["keyPrefix"], &p["name"], &p["role"], &p["id"]),
        (&json!(true), &json!("master"), &json!("master"), &json!("admin"), &json!(0)),
        "{v}"
    );
    let perms: Vec<&str> = p["permissions"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(perms.contains(&"keys:create") && perms.contains(&"plugins:install") && perms.len() == 12, "{v}");

    let (s, created) = body(
        c.post(format!("{}/api/keys", srv.base))
            .header("x-api-key", ROOT)
            .json(&json!({"name": "Viewer", "role": "viewer"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["data"]["key"].as_str().unwrap();
    let (s, v) = body(c.get(&session).header("x-api-key", key).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    let p = &v["principal"];
    assert_eq!(
        (&p["keyPrefix"], &p["name"], &p["role"]),
        (&created["data"]["keyPrefix"], &json!("Viewer"), &json!("viewer"))
    );
    assert!(p.get("isMaster").is_none(), "{v}");
    let perms: Vec<&str> = p["permissions"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(perms.contains(&"apps:read") && !perms.contains(&"keys:create"), "{v}");
    srv.stop().await;
}

/// Bad `POST /api/keys` bodies: Buntime's codes, and its words in `message` and `error`
/// (libs/api-keys.test.ts looks for /Invalid permission/), with the field in `data.path`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_bodies_keep_buntimes_words() {
    let apps = apps();
    let srv = common::start(apps.path(), |r| {
        r.set("RUNTIME_ROOT_KEY", ROOT);
    })
    .await;
    let c = Client::new();
    let keys = format!("{}/api/keys", srv.base);
    for (input, code, words, path) in [
        (
            json!({"name": "Bad", "role": "custom", "permissions": ["bad:permission"]}),
            "INVALID_PERMISSION",
            "Invalid permission",
            "permissions[0]",
        ),
        (
            json!({"name": "Bad", "role": "custom"}),
            "MISSING_PERMISSIONS",
            "require at least one permission",
            "permissions",
        ),
        (json!({"name": "Bad", "role": "god"}), "INVALID_KEY_ROLE", "Invalid role", "role"),
        (json!({"name": "Bad", "expiresIn": "tomorrow"}), "INVALID_EXPIRATION", "Invalid expiration", "expiresIn"),
        (json!({"name": "  "}), "MISSING_KEY_NAME", "Key name is required", "name"),
    ] {
        let (s, v) = body(c.post(&keys).header("x-api-key", ROOT).json(&input).send().await.unwrap()).await;
        assert_eq!((s, v["code"].as_str(), v["data"]["path"].as_str()), (400, Some(code), Some(path)), "{input}: {v}");
        assert!(v["message"].as_str().unwrap().contains(words), "{v}");
        assert_eq!(v["error"], v["message"], "{v}");
    }
    let (s, v) = body(c.delete(format!("{keys}/42")).header("x-api-key", ROOT).send().await.unwrap()).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("API_KEY_NOT_FOUND")), "{v}");
    assert!(v["error"].as_str().unwrap().contains("API key not found"), "{v}");
    srv.stop().await;
}
