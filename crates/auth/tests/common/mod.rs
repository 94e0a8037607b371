//! Shared test helpers: fresh databases (SQLite always, PostgreSQL when
//! `MARINA_TEST_DATABASE_URL` is set, required under `CI`), JWT signing with the test-only keys
//! in `tests/fixtures`, and a local JWKS server whose key set a test can rotate.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use marina_store::Store;
use parking_lot::Mutex;
use serde_json::{Value, json};

pub struct TestDb {
    pub url: Option<String>,
    pub state: tempfile::TempDir,
    pub label: &'static str,
}

impl TestDb {
    /// A new handle on this database, migrated.
    pub async fn store(&self) -> Store {
        let s = Store::open(self.url.as_deref(), self.state.path()).await.expect("open the test store");
        s.migrate_system().await.expect("marina's migrations apply");
        s
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One SQLite database and, when configured, one new PostgreSQL database.
pub async fn test_dbs() -> Vec<TestDb> {
    let mut out = vec![TestDb { url: None, state: tempfile::tempdir().unwrap(), label: "sqlite" }];
    match std::env::var("MARINA_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(conn);
            let name = format!(
                "auth_{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            );
            client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create a test database");
            let (url, query) = match base.split_once('?') {
                Some((u, q)) => (u.to_string(), format!("?{q}")),
                None => (base.clone(), String::new()),
            };
            let host_end =
                url[url.find("://").unwrap() + 3..].find('/').map_or(url.len(), |i| url.find("://").unwrap() + 3 + i);
            out.push(TestDb {
                url: Some(format!("{}/{name}{query}", &url[..host_end])),
                state: tempfile::tempdir().unwrap(),
                label: "postgres",
            });
        }
        _ => {
            assert!(
                std::env::var("CI").map_or(true, |v| v.is_empty()),
                "CI is set but MARINA_TEST_DATABASE_URL is not: CI must test PostgreSQL"
            );
            eprintln!("skip: MARINA_TEST_DATABASE_URL is unset; PostgreSQL cases skipped");
        }
    }
    out
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A signing key from the fixtures: `rsa1`, `rsa2`, `ec1`, `ed1`.
pub fn private_key(name: &str) -> (EncodingKey, Algorithm) {
    let pem = fixture(&format!("{name}.key.pem"));
    match name {
        n if n.starts_with("rsa") => (EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(), Algorithm::RS256),
        n if n.starts_with("ec") => (EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(), Algorithm::ES256),
        _ => (EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(), Algorithm::EdDSA),
    }
}

/// Sign `claims` with fixture key `name`, header `kid` = `name` unless `kid` says otherwise.
pub fn sign(name: &str, kid: Option<&str>, claims: &Value) -> String {
    let (key, alg) = private_key(name);
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub fn sign_hs(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Claims valid for an hour from now.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "iat": now(), "name": "Ada"})
}

/// The public JWK of fixture key `name`, with `kid` = `name`.
pub fn jwk(name: &str) -> Jwk {
    let (key, alg) = private_key(name);
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(name.to_string());
    jwk.common.key_algorithm = Some(match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        _ => KeyAlgorithm::EdDSA,
    });
    jwk
}

/// A JWKS server on 127.0.0.1 whose key set the test replaces at will.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub body: Arc<Mutex<String>>,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(String::new()));
        let hits = Arc::new(AtomicU64::new(0));
        let (b, h) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let text = b.lock().clone();
                        async move {
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        let server = Self { addr, body, hits, task };
        server.publish(keys);
        server
    }

    /// Replace the published key set.
    pub fn publish(&self, keys: &[&str]) {
        let set = JwkSet { keys: keys.iter().map(|k| jwk(k)).collect() };
        *self.body.lock() = serde_json::to_string(&set).unwrap();
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
