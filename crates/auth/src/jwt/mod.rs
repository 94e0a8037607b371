//! JWT bearer verification for app routes, with the `jsonwebtoken` crate.
//!
//! Keys come from `RUNTIME_JWT_SECRET` (HMAC), `RUNTIME_JWT_PUBLIC_KEY` (one PEM key) and/or
//! `RUNTIME_JWT_JWKS_URL` ([`jwks`]). Which key may check a token is decided by the token's
//! algorithm *family* before any signature is checked:
//! - `alg: none` (any case) is refused outright, with its own message;
//! - an `HS*` token is only ever checked against the configured secret, never against a public
//!   key's bytes (the classic HS/RS confusion), and symmetric keys are never taken from a JWKS;
//! - an asymmetric token is checked against the PEM key and the JWKS keys of its family, the
//!   one whose `kid` matches when the token names one (an unknown kid triggers one rate-limited
//!   JWKS refetch: the provider may have rotated), and a JWK's own `alg` pins it.
//!
//! Claims: `exp` is required; `nbf` is checked when present; `iss`/`aud` are required and
//! checked when configured; the leeway applies to `exp` and `nbf`.
//!
//! A client sends the same token on every request until it expires, so tokens that verified
//! are remembered ([`cache`]): a repeat costs a map lookup instead of base64, JSON and a
//! signature check (an RSA verification is tens of microseconds).

mod cache;
pub mod jwks;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use marina_core::Error;
use serde_json::{Value, json};

use crate::config::JwtConfig;
use crate::identity::Identity;
use jwks::{Jwks, Need};

/// A public key that can check signatures, with what it is allowed to check.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The JWK `kid`, if any (PEM keys have none and match any kid).
    pub kid: Option<String>,
    /// The JWK `alg`: when present, the only algorithm this key checks.
    pub alg: Option<Algorithm>,
    /// The key's family (RSA, EC, Ed, HMAC).
    pub family: AlgorithmFamily,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish()
    }
}

impl VerifyingKey {
    fn can_check(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// 401 with a stable code and the reason.
fn unauthorized(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(StatusCode::UNAUTHORIZED, code, message)
}

/// Verifies bearer tokens against the configured keys and claims.
pub struct JwtVerifier {
    secret: Option<VerifyingKey>,
    pem: Option<VerifyingKey>,
    jwks: Option<Jwks>,
    algorithms: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: u64,
    verified: cache::Verified,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.algorithms)
            .field("jwks", &self.jwks)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish()
    }
}

/// Parse one PEM public key of whichever family it is; the error says what was expected.
pub(crate) fn pem_key(pem: &str) -> Result<VerifyingKey, String> {
    let bytes = pem.as_bytes();
    let key = DecodingKey::from_rsa_pem(bytes)
        .or_else(|_| DecodingKey::from_ec_pem(bytes))
        .or_else(|_| DecodingKey::from_ed_pem(bytes))
        .map_err(|e| format!("an RSA, EC (P-256/P-384) or Ed25519 public key in PEM form ({e})"))?;
    Ok(VerifyingKey { kid: None, alg: None, family: key.family(), key })
}

impl JwtVerifier {
    /// Build from validated settings. Nothing is fetched yet.
    ///
    /// # Errors
    /// 400 `CONFIG_INVALID` for an unusable PEM key; 500 when the JWKS client cannot be built.
    pub fn new(cfg: &JwtConfig) -> Result<Self, Error> {
        let secret = cfg.secret.as_ref().map(|s| VerifyingKey {
            kid: None,
            alg: None,
            family: AlgorithmFamily::Hmac,
            key: DecodingKey::from_secret(s),
        });
        let pem = cfg
            .public_key_pem
            .as_deref()
            .map(|p| {
                pem_key(p).map_err(|e| {
                    Error::bad_request("CONFIG_INVALID", format!("invalid RUNTIME_JWT_PUBLIC_KEY: expected {e}"))
                })
            })
            .transpose()?;
        let jwks =
            cfg.jwks_url.as_ref().map(|u| Jwks::new(u.clone(), cfg.jwks_cache_ttl, cfg.jwks_cooldown)).transpose()?;
        let algorithms = match &cfg.algorithms {
            Some(list) => list.clone(),
            None => {
                let mut families = Vec::new();
                if secret.is_some() {
                    families.push(AlgorithmFamily::Hmac);
                }
                if let Some(k) = &pem {
                    families.push(k.family);
                }
                if jwks.is_some() {
                    families.extend([AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed]);
                }
                let mut algs: Vec<Algorithm> = Vec::new();
                for f in families {
                    for a in f.algorithms() {
                        if !algs.contains(a) {
                            algs.push(*a);
                        }
                    }
                }
                algs
            }
        };
        Ok(Self {
            secret,
            pem,
            jwks,
            algorithms,
            issuers: cfg.issuers.clone(),
            audiences: cfg.audiences.clone(),
            leeway: cfg.leeway.as_secs(),
            // Never trusted past the JWKS keys' own cache time, so a refetch still happens then.
            verified: cache::Verified::new(if cfg.jwks_url.is_some() { cfg.jwks_cache_ttl } else { cache::MAX_AGE }),
        })
    }

    /// How many JWKS fetches were attempted so far (0 without a JWKS URL).
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks.as_ref().map_or(0, Jwks::fetches)
    }

    /// Verify `token`; its claims (a JSON object) on success.
    ///
    /// # Errors
    /// 401 `TOKEN_INVALID` (malformed, `alg: none`, algorithm not accepted, unknown kid, bad
    /// signature, wrong issuer or audience, missing claim), `TOKEN_EXPIRED`,
    /// `TOKEN_NOT_YET_VALID`; 503 `JWKS_UNAVAILABLE` when the keys cannot be fetched at all.
    pub async fn verify(&self, token: &str) -> Result<Value, Error> {
        Ok(self.identify(token).await?.claims.clone().unwrap_or(Value::Null))
    }

    /// The identity a token's verified claims make ([`Identity::from_claims`]), shared by every
    /// request that presents the same token while it is remembered (see `cache`).
    ///
    /// # Errors
    /// As [`JwtVerifier::verify`].
    pub async fn identify(&self, token: &str) -> Result<Arc<Identity>, Error> {
        if let Some(identity) = self.remembered(token.as_bytes()) {
            return Ok(identity);
        }
        // Boxed: the full check may fetch a JWKS; a remembered token's future stays small.
        let identity = Arc::new(Identity::from_claims(Box::pin(self.verify_fully(token)).await?));
        // Keyed to the key set it was checked against: a JWKS fetch (a rotation) starts afresh.
        let generation = self.jwks.as_ref().map_or(0, Jwks::fetches);
        self.verified.put(token, &identity, generation, since_epoch());
        Ok(identity)
    }

    /// The identity of a token that verified recently and may still be trusted (see `cache`),
    /// without waiting: what [`JwtVerifier::identify`] answers first.
    pub fn remembered(&self, token: &[u8]) -> Option<Arc<Identity>> {
        let generation = self.jwks.as_ref().map_or(0, Jwks::fetches);
        self.verified.get(token, generation, since_epoch(), self.leeway)
    }

    async fn verify_fully(&self, token: &str) -> Result<Value, Error> {
        let (alg, kid) = read_header(token)?;
        if !self.algorithms.contains(&alg) {
            return Err(unauthorized(
                "TOKEN_INVALID",
                format!("token algorithm {alg:?} is not accepted here (accepted: {:?})", self.algorithms),
            ));
        }
        let candidates = self.candidates(alg, kid.as_deref()).await?;
        if candidates.is_empty() {
            return Err(match &kid {
                Some(k) => unauthorized("TOKEN_INVALID", format!("no {alg:?} key with id {k:?} is known")),
                None => unauthorized("TOKEN_INVALID", format!("no key for algorithm {alg:?} is configured")),
            });
        }
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            // Without a configured audience there is nothing to compare `aud` with.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let mut last = None;
        for key in &candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    if !data.claims.is_object() {
                        return Err(unauthorized("TOKEN_INVALID", "the token's claims are not a JSON object"));
                    }
                    return Ok(data.claims);
                }
                // Signature failures (or a key that cannot check this curve/size): try the next
                // candidate. Anything else means the signature held and a claim failed.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::InvalidSignature
                            | ErrorKind::InvalidEcdsaKey
                            | ErrorKind::InvalidRsaKey(_)
                            | ErrorKind::InvalidEddsaKey
                            | ErrorKind::InvalidKeyFormat
                            | ErrorKind::InvalidAlgorithm
                    ) =>
                {
                    last = Some(e)
                }
                Err(e) => return Err(map_error(&e)),
            }
        }
        Err(last
            .map_or_else(|| unauthorized("TOKEN_INVALID", "the token's signature does not verify"), |e| map_error(&e)))
    }

    async fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Result<Vec<VerifyingKey>, Error> {
        if alg.family() == AlgorithmFamily::Hmac {
            return Ok(self.secret.iter().cloned().collect());
        }
        let mut out: Vec<VerifyingKey> = self.pem.iter().filter(|k| k.can_check(alg)).cloned().collect();
        let Some(jwks) = &self.jwks else { return Ok(out) };
        let pick = |keys: &[VerifyingKey]| -> Vec<VerifyingKey> {
            keys.iter().filter(|k| k.can_check(alg) && (kid.is_none() || k.kid.as_deref() == kid)).cloned().collect()
        };
        let mut found = match jwks.keys(Need::Cached).await {
            Ok(keys) => pick(&keys),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => Vec::new(),
        };
        if found.is_empty() && kid.is_some() {
            // Possibly a rotation: the provider signs with a key published after our fetch.
            match jwks.keys(Need::UnknownKid).await {
                Ok(keys) => found = pick(&keys),
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => {}
            }
        }
        out.extend(found);
        Ok(out)
    }
}

/// The token's `alg` and `kid`, read before anything else so that `none` and unknown algorithms
/// get a precise answer.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), Error> {
    let malformed = |why: &str| unauthorized("TOKEN_INVALID", format!("malformed token: {why}"));
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let raw = URL_SAFE_NO_PAD.decode(h).map_err(|_| malformed("the header is not base64url"))?;
    let header: Value = serde_json::from_slice(&raw).map_err(|_| malformed("the header is not JSON"))?;
    let Some(alg) = header.get("alg").and_then(Value::as_str) else {
        return Err(malformed("the header has no \"alg\""));
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(unauthorized("TOKEN_INVALID", "unsigned tokens (alg \"none\") are never accepted"));
    }
    let alg = alg
        .parse::<Algorithm>()
        .map_err(|_| unauthorized("TOKEN_INVALID", format!("unsupported token algorithm {alg:?}")))?;
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok((alg, kid))
}

fn map_error(e: &jsonwebtoken::errors::Error) -> Error {
    match e.kind() {
        ErrorKind::ExpiredSignature => unauthorized("TOKEN_EXPIRED", "the token has expired"),
        ErrorKind::ImmatureSignature => unauthorized("TOKEN_NOT_YET_VALID", "the token is not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => unauthorized("TOKEN_INVALID", "the token's issuer (iss) is not accepted"),
        ErrorKind::InvalidAudience => unauthorized("TOKEN_INVALID", "the token's audience (aud) is not accepted"),
        ErrorKind::MissingRequiredClaim(c) => {
            unauthorized("TOKEN_INVALID", format!("the token has no \"{c}\" claim")).with_data(json!({ "claim": c }))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            unauthorized("TOKEN_INVALID", format!("the token's \"{c}\" claim is malformed"))
                .with_data(json!({ "claim": c }))
        }
        ErrorKind::InvalidSignature => unauthorized("TOKEN_INVALID", "the token's signature does not verify"),
        ErrorKind::InvalidAlgorithm => unauthorized("TOKEN_INVALID", "the token's algorithm does not match its key"),
        _ => unauthorized("TOKEN_INVALID", format!("the token is not valid: {e}")),
    }
}

/// Now, since the epoch (the clock `exp` and `nbf` are read against).
fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn header_checks() {
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&json!({"sub": "x"})));
        let e = read_header(&none).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (401, "TOKEN_INVALID"));
        assert!(e.message().contains("none"), "{}", e.message());
        let e = read_header(&format!("{}.e30.", b64(&json!({"alg": "NoNe"})))).unwrap_err();
        assert!(e.message().contains("none"));
        assert!(read_header("abc").unwrap_err().message().contains("three"));
        assert!(read_header("!!.a.b").unwrap_err().message().contains("base64url"));
        let e = read_header(&format!("{}.e30.x", b64(&json!({"alg": "HS1"})))).unwrap_err();
        assert!(e.message().contains("unsupported"));
        let (alg, kid) = read_header(&format!("{}.e30.x", b64(&json!({"alg": "RS256", "kid": "k1"})))).unwrap();
        assert_eq!((alg, kid.as_deref()), (Algorithm::RS256, Some("k1")));
    }
}
