//! A JWKS (RFC 7517) key set fetched from a URL, cached, and refetched on expiry or when a token
//! names a key id the cache does not have (the identity provider rotated its keys). Unknown-kid
//! refetches are rate-limited by a cooldown, so a flood of tokens with made-up kids costs at most
//! one fetch per cooldown; concurrent misses share one fetch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use marina_core::Error;
use parking_lot::RwLock;

use super::VerifyingKey;

/// A JWKS document larger than this is refused: real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    keys: Arc<Vec<VerifyingKey>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    fetches: u64,
}

/// The cached key set of one JWKS URL.
pub struct Jwks {
    url: String,
    uri: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    ttl: Duration,
    cooldown: Duration,
    state: RwLock<State>,
    /// Serialises fetches: the second waiter finds the first one's result.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish()
    }
}

/// Why a refetch is wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Use what is cached unless it is older than the TTL.
    Cached,
    /// A token named a kid the cache lacks: refetch unless the cooldown forbids it.
    UnknownKid,
}

impl Jwks {
    /// A key set for `url`; nothing is fetched until the first token arrives.
    ///
    /// # Errors
    /// 500 when the HTTP client cannot be built (TLS set-up).
    pub fn new(url: String, ttl: Duration, cooldown: Duration) -> Result<Self, Error> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| Error::bad_request("CONFIG_INVALID", format!("invalid RUNTIME_JWT_JWKS_URL {url:?}: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if added == 0 && uri.scheme_str() == Some("https") {
            tracing::warn!(url = %url, "no system root certificates found; HTTPS JWKS fetches will fail");
        }
        // An explicit provider: the process may have more than one rustls provider compiled in.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .map_err(|e| Error::internal(format!("cannot set up TLS for the JWKS client: {e}")))?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { url, uri, client, ttl, cooldown, state: RwLock::default(), fetch_lock: tokio::sync::Mutex::new(()) })
    }

    /// How many fetches were attempted (for the stats API and tests).
    pub fn fetches(&self) -> u64 {
        self.state.read().fetches
    }

    /// The current keys, refetched first when `need` and the cache state call for it.
    ///
    /// # Errors
    /// 503 `JWKS_UNAVAILABLE` when there are no keys and the fetch failed.
    pub async fn keys(&self, need: Need) -> Result<Arc<Vec<VerifyingKey>>, Error> {
        let wants = |s: &State| -> bool {
            let now = Instant::now();
            let cooled = s.last_attempt.is_none_or(|t| now.duration_since(t) >= self.cooldown);
            match s.fetched_at {
                None => cooled,
                Some(t) if now.duration_since(t) >= self.ttl => cooled,
                Some(_) => need == Need::UnknownKid && cooled,
            }
        };
        if !wants(&self.state.read()) {
            return self.current();
        }
        let started = Instant::now();
        let _guard = self.fetch_lock.lock().await;
        // Someone else fetched while we waited: use theirs.
        if self.state.read().last_attempt.is_some_and(|t| t >= started) || !wants(&self.state.read()) {
            return self.current();
        }
        let result = self.fetch().await;
        let mut s = self.state.write();
        s.last_attempt = Some(Instant::now());
        s.fetches += 1;
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                s.keys = Arc::new(keys);
                s.fetched_at = s.last_attempt;
            }
            Err(e) => {
                // Stale keys keep working through an identity provider's outage.
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the keys fetched before");
                if s.fetched_at.is_none() {
                    return Err(e);
                }
            }
        }
        Ok(s.keys.clone())
    }

    fn current(&self) -> Result<Arc<Vec<VerifyingKey>>, Error> {
        let s = self.state.read();
        if s.fetched_at.is_none() {
            return Err(Error::unavailable(
                "JWKS_UNAVAILABLE",
                "the JWKS keys could not be fetched yet; try again shortly",
            ));
        }
        Ok(s.keys.clone())
    }

    async fn fetch(&self) -> Result<Vec<VerifyingKey>, Error> {
        let unavailable = |msg: String| {
            Error::unavailable("JWKS_UNAVAILABLE", "the identity provider's keys could not be fetched").with_source(msg)
        };
        let url = &self.url;
        let req = http::Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unavailable(format!("GET {url}: {e}")))?;
        // One deadline over connect, headers and body: a stalled provider costs at most this.
        let body = tokio::time::timeout(FETCH_TIMEOUT, async {
            let resp = self.client.request(req).await.map_err(|e| unavailable(format!("GET {url}: {e}")))?;
            if !resp.status().is_success() {
                return Err(unavailable(format!("GET {url} answered {}", resp.status())));
            }
            Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| unavailable(format!("reading {url} (at most {MAX_JWKS_BYTES} bytes): {e}")))
        })
        .await
        .map_err(|_| unavailable(format!("GET {url} took longer than {FETCH_TIMEOUT:?}")))??;
        parse_jwks(&body).map_err(|m| unavailable(format!("{url}: {m}")))
    }
}

/// The signing keys of a JWKS document. Keys that cannot verify signatures are skipped with a
/// debug line rather than failing the set: `use: enc` keys, symmetric (`oct`) keys — a shared
/// secret published in a key set would let anyone sign — and key types this build does not know.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("not a JWKS document: no \"keys\" array".into());
    };
    let mut out = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(raw.clone()) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(index = i, error = %e, "JWKS key skipped: not understood");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(index = i, error = %e, "JWKS key skipped: unusable");
                continue;
            }
        };
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            tracing::debug!(index = i, "JWKS key skipped: symmetric keys are never taken from a key set");
            continue;
        }
        // The JWK's own `alg`, when present, pins the key to that algorithm.
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_str().and_then(|s| s.parse::<Algorithm>().ok()));
        out.push(VerifyingKey { kid: jwk.common.key_id.clone(), alg, family: key.family(), key });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signing_keys_and_skips_the_rest() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed", "alg": "EdDSA"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "weird"}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].alg, Some(Algorithm::EdDSA));
        assert!(parse_jwks(b"[]").unwrap_err().contains("no \"keys\""));
        assert!(parse_jwks(b"<html>").unwrap_err().contains("not JSON"));
    }
}
