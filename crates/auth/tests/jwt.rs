//! JWT verification with real signatures (test-only keys in tests/fixtures) and a real JWKS
//! server on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{JwksServer, claims, fixture, now, sign, sign_hs};
use marina_auth::AuthConfig;
use marina_auth::jwt::JwtVerifier;
use serde_json::json;

const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

fn verifier(pairs: &[(&str, &str)]) -> JwtVerifier {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let cfg = AuthConfig::from_lookup(|k| map.get(k).cloned()).unwrap();
    JwtVerifier::new(cfg.jwt.as_ref().expect("JWT configured")).unwrap()
}

async fn code(v: &JwtVerifier, token: &str) -> (u16, String, String) {
    let e = v.verify(token).await.expect_err("the token must be refused");
    (e.status().as_u16(), e.code().to_string(), e.message().to_string())
}

#[tokio::test]
async fn hs256_claims() {
    let v = verifier(&[("RUNTIME_JWT_SECRET", SECRET)]);
    let ok = v.verify(&sign_hs(SECRET.as_bytes(), &claims("u1"))).await.unwrap();
    assert_eq!(ok["sub"], "u1");

    let expired = json!({"sub": "u1", "exp": now() - 3600});
    assert_eq!(code(&v, &sign_hs(SECRET.as_bytes(), &expired)).await.1, "TOKEN_EXPIRED");
    let early = json!({"sub": "u1", "exp": now() + 7200, "nbf": now() + 3600});
    assert_eq!(code(&v, &sign_hs(SECRET.as_bytes(), &early)).await.1, "TOKEN_NOT_YET_VALID");
    let no_exp = json!({"sub": "u1"});
    let (status, c, msg) = code(&v, &sign_hs(SECRET.as_bytes(), &no_exp)).await;
    assert_eq!((status, c.as_str()), (401, "TOKEN_INVALID"));
    assert!(msg.contains("exp"), "{msg}");
    let (_, c, msg) = code(&v, &sign_hs(b"another-secret-that-is-32-bytes-long", &claims("u1"))).await;
    assert_eq!(c, "TOKEN_INVALID");
    assert!(msg.contains("signature"), "{msg}");

    // Within the leeway (default 60 s) an expired token still passes; with none it does not.
    let just = json!({"sub": "u1", "exp": now() - 10});
    assert!(v.verify(&sign_hs(SECRET.as_bytes(), &just)).await.is_ok());
    let strict = verifier(&[("RUNTIME_JWT_SECRET", SECRET), ("RUNTIME_JWT_LEEWAY", "0s")]);
    assert_eq!(code(&strict, &sign_hs(SECRET.as_bytes(), &just)).await.1, "TOKEN_EXPIRED");

    // Garbage never panics.
    for junk in ["", "a", "a.b", "a.b.c", "....", "eyJ.eyJ.sig", &"A".repeat(10_000)] {
        assert_eq!(code(&v, junk).await.1, "TOKEN_INVALID", "{junk:.20}");
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let v = verifier(&[("RUNTIME_JWT_SECRET", SECRET)]);
    for alg in ["none", "None", "NONE"] {
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let p = URL_SAFE_NO_PAD.encode(claims("admin").to_string());
        for token in [format!("{h}.{p}."), format!("{h}.{p}.c2ln")] {
            let (status, c, msg) = code(&v, &token).await;
            assert_eq!((status, c.as_str()), (401, "TOKEN_INVALID"));
            assert!(msg.contains("\"none\""), "{msg}");
        }
    }
}

#[tokio::test]
async fn issuer_and_audience() {
    let v = verifier(&[
        ("RUNTIME_JWT_SECRET", SECRET),
        ("RUNTIME_JWT_ISSUER", "https://idp.example"),
        ("RUNTIME_JWT_AUDIENCE", "marina,other"),
    ]);
    let mut c = claims("u1");
    c["iss"] = json!("https://idp.example");
    c["aud"] = json!("marina");
    assert!(v.verify(&sign_hs(SECRET.as_bytes(), &c)).await.is_ok());
    c["aud"] = json!(["x", "other"]);
    assert!(v.verify(&sign_hs(SECRET.as_bytes(), &c)).await.is_ok());

    let mut wrong_iss = c.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert!(code(&v, &sign_hs(SECRET.as_bytes(), &wrong_iss)).await.2.contains("issuer"));
    let mut wrong_aud = c.clone();
    wrong_aud["aud"] = json!("someone-else");
    assert!(code(&v, &sign_hs(SECRET.as_bytes(), &wrong_aud)).await.2.contains("audience"));
    let mut no_aud = c.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert!(code(&v, &sign_hs(SECRET.as_bytes(), &no_aud)).await.2.contains("aud"));
    let mut no_iss = c.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    assert!(code(&v, &sign_hs(SECRET.as_bytes(), &no_iss)).await.2.contains("iss"));
}

#[tokio::test]
async fn pem_keys_of_each_family() {
    for (name, other) in [("rsa1", "rsa2"), ("ec1", "rsa1"), ("ed1", "ec1")] {
        let v = verifier(&[("RUNTIME_JWT_PUBLIC_KEY", &fixture(&format!("{name}.pub.pem")))]);
        let claims = v.verify(&sign(name, None, &claims("u1"))).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(claims["sub"], "u1");
        // Another key (same family for RSA, another family otherwise) does not verify.
        assert_eq!(code(&v, &sign(other, None, &common::claims("u1"))).await.1, "TOKEN_INVALID", "{name}");
    }
    // A path works as well as inline PEM.
    let path = format!("{}/tests/fixtures/ed1.pub.pem", env!("CARGO_MANIFEST_DIR"));
    let v = verifier(&[("RUNTIME_JWT_PUBLIC_KEY", &path)]);
    assert!(v.verify(&sign("ed1", None, &claims("u1"))).await.is_ok());
}

#[tokio::test]
async fn hs_rs_key_confusion_is_refused() {
    let public_pem = fixture("rsa1.pub.pem");
    // The classic attack: an HS256 token whose HMAC key is the server's RSA public key.
    let forged = sign_hs(public_pem.as_bytes(), &claims("admin"));

    let rsa_only = verifier(&[("RUNTIME_JWT_PUBLIC_KEY", &public_pem)]);
    let (status, c, msg) = code(&rsa_only, &forged).await;
    assert_eq!((status, c.as_str()), (401, "TOKEN_INVALID"));
    assert!(msg.contains("HS256") && msg.contains("not accepted"), "{msg}");

    // Even with HS256 allowed (a secret is configured too), HS tokens are checked against the
    // secret only, never against the public key.
    let both = verifier(&[
        ("RUNTIME_JWT_PUBLIC_KEY", &public_pem),
        ("RUNTIME_JWT_SECRET", SECRET),
        ("RUNTIME_JWT_ALGORITHMS", "HS256,RS256"),
    ]);
    assert!(code(&both, &forged).await.2.contains("signature"));
    assert!(both.verify(&sign("rsa1", None, &claims("u1"))).await.is_ok());
    assert!(both.verify(&sign_hs(SECRET.as_bytes(), &claims("u1"))).await.is_ok());

    // And the reverse: an RS256 token when only a secret is configured.
    let hs_only = verifier(&[("RUNTIME_JWT_SECRET", SECRET)]);
    assert!(code(&hs_only, &sign("rsa1", None, &claims("u1"))).await.2.contains("not accepted"));
    // RUNTIME_JWT_ALGORITHMS narrows what the keys would allow.
    let narrow = verifier(&[("RUNTIME_JWT_PUBLIC_KEY", &public_pem), ("RUNTIME_JWT_ALGORITHMS", "PS256")]);
    assert!(code(&narrow, &sign("rsa1", None, &claims("u1"))).await.2.contains("not accepted"));
}

#[tokio::test]
async fn jwks_caching_unknown_kid_and_cooldown() {
    let idp = JwksServer::start(&["rsa1", "ec1", "ed1"]).await;
    let v = verifier(&[("RUNTIME_JWT_JWKS_URL", &idp.url()), ("RUNTIME_JWT_JWKS_COOLDOWN", "1h")]);
    for name in ["rsa1", "ec1", "ed1"] {
        let c = v.verify(&sign(name, Some(name), &claims(name))).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(c["sub"], name);
    }
    // A token without a kid is checked against the keys of its family.
    assert!(v.verify(&sign("rsa1", None, &claims("u"))).await.is_ok());
    assert_eq!(idp.hits(), 1, "the key set is fetched once and cached");

    // A kid the set does not have: refused. The refetch it may trigger is rate-limited: the
    // first fetch just happened, so within the cooldown nothing is fetched again.
    let (status, c, msg) = code(&v, &sign("rsa2", Some("rsa2"), &claims("u"))).await;
    assert_eq!((status, c.as_str()), (401, "TOKEN_INVALID"));
    assert!(msg.contains("rsa2"), "{msg}");
    for i in 0..20 {
        let _ = v.verify(&sign("rsa2", Some(&format!("made-up-{i}")), &claims("u"))).await;
    }
    assert_eq!(idp.hits(), 1, "unknown kids within the cooldown cause no fetch");
    assert_eq!(v.jwks_fetches(), 1);
    // A known kid with the wrong key's signature is a bad signature, not an unknown kid.
    assert!(code(&v, &sign("rsa2", Some("rsa1"), &claims("u"))).await.2.contains("signature"));
    // The RSA public key as an HMAC secret under an RSA kid: refused.
    let forged = sign_hs(fixture("rsa1.pub.pem").as_bytes(), &claims("admin"));
    assert!(code(&v, &forged).await.2.contains("not accepted"));
}

#[tokio::test]
async fn jwks_rotation() {
    let idp = JwksServer::start(&["rsa1"]).await;
    let v = verifier(&[("RUNTIME_JWT_JWKS_URL", &idp.url()), ("RUNTIME_JWT_JWKS_COOLDOWN", "0s")]);
    let old = sign("rsa1", Some("rsa1"), &claims("u"));
    assert!(v.verify(&old).await.is_ok());
    assert_eq!(idp.hits(), 1);

    // The provider rotates: rsa2 replaces rsa1. A token signed with the new key names a kid the
    // cache lacks, which triggers one refetch, after which it verifies.
    idp.publish(&["rsa2"]);
    let new = sign("rsa2", Some("rsa2"), &claims("u"));
    assert_eq!(v.verify(&new).await.unwrap()["sub"], "u");
    assert_eq!(idp.hits(), 2);
    assert!(v.verify(&new).await.is_ok());
    assert_eq!(idp.hits(), 2, "the new key is cached");

    // The retired key is gone: its tokens now fail (after one more refetch looking for it).
    assert_eq!(code(&v, &old).await.1, "TOKEN_INVALID");
    assert_eq!(idp.hits(), 3);
}

#[tokio::test]
async fn jwks_expiry_refetches_and_outages_keep_old_keys() {
    let idp = JwksServer::start(&["ed1"]).await;
    let v = verifier(&[
        ("RUNTIME_JWT_JWKS_URL", &idp.url()),
        ("RUNTIME_JWT_JWKS_CACHE_TTL", "200ms"),
        ("RUNTIME_JWT_JWKS_COOLDOWN", "0s"),
    ]);
    let t = sign("ed1", Some("ed1"), &claims("u"));
    assert!(v.verify(&t).await.is_ok());
    // Poll until the TTL has passed and a verification refetched.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while idp.hits() < 2 {
        assert!(std::time::Instant::now() < deadline, "the expired cache was never refetched");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(v.verify(&t).await.is_ok());
    }
    // The provider answers garbage: the keys fetched before keep working.
    *idp.body.lock() = "<html>down</html>".into();
    let before = idp.hits();
    while idp.hits() == before {
        assert!(std::time::Instant::now() < deadline, "no refetch attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(v.verify(&t).await.is_ok(), "stale keys keep verifying through an outage");
    }
}

#[tokio::test]
async fn jwks_unreachable_is_503() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let v = verifier(&[("RUNTIME_JWT_JWKS_URL", &format!("http://127.0.0.1:{port}/jwks"))]);
    let (status, c, _) = code(&v, &sign("rsa1", Some("rsa1"), &claims("u"))).await;
    assert_eq!((status, c.as_str()), (503, "JWKS_UNAVAILABLE"));
}
