//! JWT helpers shared by marina-auth's and marina-server's tests: signing with the test-only
//! keys in `crates/auth/tests/fixtures`, and a JWKS server on 127.0.0.1 whose key set a test can
//! rotate. Included with `#[path]`, so it names every crate it uses.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [here.join("tests/fixtures"), here.join("../auth/tests/fixtures")]
        .into_iter()
        .find(|d| d.is_dir())
        .expect("the auth test fixtures")
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
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
