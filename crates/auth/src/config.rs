//! Authentication settings, read from environment-style variables (docs/auth.md lists them).
//!
//! Names follow Buntime's: `RUNTIME_ROOT_KEY` (Buntime D) and `RUNTIME_MASTER_KEY` (Buntime Z).
//! Buntime has no JWT verification, so the JWT variables are marina's, in the same `RUNTIME_`
//! style. Every variable is a row of `marina_core::settings::SETTINGS` (flags, `--help`, README). A bad value stops start-up with the
//! variable's name and what was expected; secrets are never quoted back.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use marina_core::Error;
use marina_core::settings::parse_seconds;
use serde_json::json;

/// The validated authentication configuration.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// The root key, if any.
    pub root_key: Option<String>,
    /// Which variable it came from (for the start-up log).
    pub root_key_var: Option<&'static str>,
    /// JWT verification for app routes; `None` when no key source is configured.
    pub jwt: Option<JwtConfig>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("root_key", &self.root_key.as_ref().map(|_| "<set>"))
            .field("root_key_var", &self.root_key_var)
            .field("jwt", &self.jwt)
            .finish()
    }
}

/// JWT settings: where keys come from and which claims are checked.
#[derive(Clone)]
pub struct JwtConfig {
    /// `RUNTIME_JWT_SECRET`.
    pub secret: Option<Vec<u8>>,
    /// `RUNTIME_JWT_PUBLIC_KEY`, as PEM text.
    pub public_key_pem: Option<String>,
    /// `RUNTIME_JWT_JWKS_URL`.
    pub jwks_url: Option<String>,
    /// `RUNTIME_JWT_ISSUER`.
    pub issuers: Vec<String>,
    /// `RUNTIME_JWT_AUDIENCE`.
    pub audiences: Vec<String>,
    /// `RUNTIME_JWT_ALGORITHMS`; `None` = every algorithm of the configured keys' families.
    pub algorithms: Option<Vec<Algorithm>>,
    /// `RUNTIME_JWT_LEEWAY`.
    pub leeway: Duration,
    /// `RUNTIME_JWT_JWKS_CACHE_TTL`.
    pub jwks_cache_ttl: Duration,
    /// `RUNTIME_JWT_JWKS_COOLDOWN`.
    pub jwks_cooldown: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("public_key_pem", &self.public_key_pem.as_ref().map(|_| "<set>"))
            .field("jwks_url", &self.jwks_url)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .field("jwks_cache_ttl", &self.jwks_cache_ttl)
            .field("jwks_cooldown", &self.jwks_cooldown)
            .finish()
    }
}

/// `expected` says what would be accepted; it never quotes a secret.
fn invalid(var: &str, expected: String) -> Error {
    Error::bad_request("CONFIG_INVALID", format!("invalid {var}: expected {expected}"))
        .with_data(json!({ "variable": var, "expected": expected }))
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

impl AuthConfig {
    /// Read the variables through `lookup` (usually `std::env::var(..).ok()`); blank values
    /// count as unset.
    ///
    /// # Errors
    /// 400 `CONFIG_INVALID` naming the variable (the CLI exits 2 on it).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut out = AuthConfig::default();
        for var in ["RUNTIME_ROOT_KEY", "RUNTIME_MASTER_KEY"] {
            if let Some(v) = get(var) {
                out.root_key = Some(v.trim().to_string());
                out.root_key_var = Some(var);
                break;
            }
        }
        let secret = get("RUNTIME_JWT_SECRET").map(String::into_bytes);
        if let Some(s) = &secret
            && s.len() < 32
        {
            return Err(invalid(
                "RUNTIME_JWT_SECRET",
                format!("a secret of at least 32 bytes (RFC 7518 §3.2), not {}", s.len()),
            ));
        }
        let public_key_pem = match get("RUNTIME_JWT_PUBLIC_KEY") {
            None => None,
            Some(v) if v.contains("-----BEGIN") => Some(v),
            Some(path) => Some(std::fs::read_to_string(path.trim()).map_err(|e| {
                invalid("RUNTIME_JWT_PUBLIC_KEY", format!("PEM text or the path of a readable file ({path:?}: {e})"))
            })?),
        };
        if let Some(pem) = &public_key_pem {
            crate::jwt::pem_key(pem).map_err(|e| invalid("RUNTIME_JWT_PUBLIC_KEY", e))?;
        }
        let jwks_url = match get("RUNTIME_JWT_JWKS_URL") {
            None => None,
            Some(u) => {
                let u = u.trim().to_string();
                let parsed = u
                    .parse::<http::Uri>()
                    .map_err(|e| invalid("RUNTIME_JWT_JWKS_URL", format!("a URL ({u:?}: {e})")))?;
                if !matches!(parsed.scheme_str(), Some("http" | "https"))
                    || parsed.host().is_none_or(str::is_empty)
                    || parsed.authority().is_some_and(|a| a.as_str().contains('@'))
                {
                    return Err(invalid(
                        "RUNTIME_JWT_JWKS_URL",
                        format!("{u:?}: expected an http:// or https:// URL with a host and no credentials"),
                    ));
                }
                Some(u)
            }
        };
        let algorithms = match get("RUNTIME_JWT_ALGORITHMS") {
            None => None,
            Some(v) => {
                let mut algs = Vec::new();
                for name in list(&v) {
                    let alg = name.parse::<Algorithm>().map_err(|_| {
                        invalid(
                            "RUNTIME_JWT_ALGORITHMS",
                            format!("a comma-separated list of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (\"none\" is never accepted), not {name:?}"),
                        )
                    })?;
                    algs.push(alg);
                }
                if algs.is_empty() {
                    return Err(invalid("RUNTIME_JWT_ALGORITHMS", "at least one algorithm".into()));
                }
                Some(algs)
            }
        };
        let duration = |var: &str, default: Duration| -> Result<Duration, Error> {
            match get(var) {
                None => Ok(default),
                Some(v) => parse_seconds(v.trim()).ok_or_else(|| {
                    invalid(var, format!("a duration such as 30 (seconds), \"10s\" or \"2m\", not {:?}", v.trim()))
                }),
            }
        };
        let leeway = duration("RUNTIME_JWT_LEEWAY", Duration::from_secs(60))?;
        let jwks_cache_ttl = duration("RUNTIME_JWT_JWKS_CACHE_TTL", Duration::from_secs(600))?;
        let jwks_cooldown = duration("RUNTIME_JWT_JWKS_COOLDOWN", Duration::from_secs(30))?;
        let issuers = get("RUNTIME_JWT_ISSUER").map(|v| list(&v)).unwrap_or_default();
        let audiences = get("RUNTIME_JWT_AUDIENCE").map(|v| list(&v)).unwrap_or_default();
        if secret.is_some() || public_key_pem.is_some() || jwks_url.is_some() {
            out.jwt = Some(JwtConfig {
                secret,
                public_key_pem,
                jwks_url,
                issuers,
                audiences,
                algorithms,
                leeway,
                jwks_cache_ttl,
                jwks_cooldown,
            });
        } else if let Some(var) = ["RUNTIME_JWT_ISSUER", "RUNTIME_JWT_AUDIENCE", "RUNTIME_JWT_ALGORITHMS"]
            .into_iter()
            .find(|v| get(v).is_some())
        {
            return Err(invalid(
                var,
                "a key as well: RUNTIME_JWT_SECRET, RUNTIME_JWT_PUBLIC_KEY or RUNTIME_JWT_JWKS_URL (no key is configured)"
                    .into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<AuthConfig, Error> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AuthConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn root_key_names_in_order() {
        let c = cfg(&[("RUNTIME_MASTER_KEY", "m"), ("RUNTIME_ROOT_KEY", "r")]).unwrap();
        assert_eq!((c.root_key.as_deref(), c.root_key_var), (Some("r"), Some("RUNTIME_ROOT_KEY")));
        let c = cfg(&[("RUNTIME_MASTER_KEY", "b"), ("RUNTIME_ROOT_KEY", " ")]).unwrap();
        assert_eq!(c.root_key.as_deref(), Some("b"));
        assert!(cfg(&[]).unwrap().root_key.is_none());
        assert!(!format!("{:?}", cfg(&[("RUNTIME_ROOT_KEY", "hunter2")]).unwrap()).contains("hunter2"));
    }

    #[test]
    fn jwt_settings() {
        assert!(cfg(&[]).unwrap().jwt.is_none());
        let c = cfg(&[
            ("RUNTIME_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("RUNTIME_JWT_ISSUER", "https://a, https://b"),
            ("RUNTIME_JWT_ALGORITHMS", "HS256,HS512"),
            ("RUNTIME_JWT_LEEWAY", "5s"),
        ])
        .unwrap();
        let j = c.jwt.unwrap();
        assert_eq!(j.issuers, vec!["https://a", "https://b"]);
        assert_eq!(j.algorithms, Some(vec![Algorithm::HS256, Algorithm::HS512]));
        assert_eq!(j.leeway, Duration::from_secs(5));
        assert_eq!(j.jwks_cooldown, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_the_variable_and_hide_secrets() {
        let e = cfg(&[("RUNTIME_JWT_SECRET", "short-secret")]).unwrap_err();
        assert!(e.message().contains("RUNTIME_JWT_SECRET") && !e.message().contains("short-secret"), "{}", e.message());
        let e = cfg(&[("RUNTIME_JWT_JWKS_URL", "ftp://x/jwks")]).unwrap_err();
        assert!(e.message().contains("RUNTIME_JWT_JWKS_URL"), "{}", e.message());
        let e = cfg(&[("RUNTIME_JWT_JWKS_URL", "https://x/jwks"), ("RUNTIME_JWT_ALGORITHMS", "none")]).unwrap_err();
        assert!(e.message().contains("\"none\" is never accepted"), "{}", e.message());
        let e = cfg(&[("RUNTIME_JWT_JWKS_URL", "https://x/jwks"), ("RUNTIME_JWT_LEEWAY", "soon")]).unwrap_err();
        assert!(e.message().contains("RUNTIME_JWT_LEEWAY"), "{}", e.message());
        let e = cfg(&[("RUNTIME_JWT_PUBLIC_KEY", "/nonexistent/key.pem")]).unwrap_err();
        assert!(e.message().contains("/nonexistent/key.pem"), "{}", e.message());
        let e = cfg(&[("RUNTIME_JWT_AUDIENCE", "marina")]).unwrap_err();
        assert!(e.message().contains("RUNTIME_JWT_AUDIENCE") && e.message().contains("no key is"), "{}", e.message());
        let e = cfg(&[("RUNTIME_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")])
            .unwrap_err();
        assert!(e.message().contains("RUNTIME_JWT_PUBLIC_KEY"), "{}", e.message());
        assert_eq!(e.data().unwrap()["variable"], "RUNTIME_JWT_PUBLIC_KEY");
    }
}
