//! [`Identity`]: who made a request, as verified by marina. The request context carries it
//! ([`Identity::to_context`]) and the server hands it to workers as `x-identity` JSON.
//!
//! The header is marina's word, so it is removed from every incoming request before anything
//! else looks at it ([`strip_incoming`]); a client can never choose its own identity.

use http::{HeaderMap, HeaderName};
use serde::Serialize;
use serde_json::Value;

use crate::keys::KeyInfo;

/// The header workers read the verified identity from (JSON).
pub const IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-identity");

/// How the caller proved who it is; serialized as `x-identity`'s `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IdentityKind {
    /// The root key (`RUNTIME_ROOT_KEY`).
    #[serde(rename = "root-key")]
    Root,
    /// A generated API key.
    #[serde(rename = "api-key")]
    Apikey,
    /// A verified JWT.
    #[serde(rename = "jwt")]
    Jwt,
    /// An external plugin's forward-auth hook vouched for it.
    #[serde(rename = "forward-auth")]
    ForwardAuth,
}

impl IdentityKind {
    /// The `via` text: `root-key`, `api-key`, `jwt`, `forward-auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root-key",
            Self::Apikey => "api-key",
            Self::Jwt => "jwt",
            Self::ForwardAuth => "forward-auth",
        }
    }
}

/// A verified caller, in the shape Buntime's authn plugin used (`id`, `name`, `roles`) plus how
/// it was established (`via`), a key's permissions and a token's claims. This is also what the
/// request context carries and what workers get as `x-identity` (JSON of this struct), so one
/// verified token's identity is built once and shared (`Arc`) by every request that presents it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    /// `root`, `apikey:<id>`, or the token's `sub`.
    pub id: String,
    /// A display name: the key's name, or the token's `name` / `preferred_username`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key's role, or the token's `roles` claim (or Keycloak's `realm_access.roles`).
    pub roles: Vec<String>,
    /// How it was proven.
    #[serde(rename = "via")]
    pub kind: IdentityKind,
    /// A key's permissions (empty for tokens).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// The token's verified claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Value>,
    /// The id of the API key, for `createdBy` and permission checks.
    #[serde(skip)]
    pub key_id: Option<i64>,
}

impl Identity {
    /// The root key's identity.
    pub fn root() -> Self {
        Identity {
            id: "root".into(),
            kind: IdentityKind::Root,
            name: Some("root".into()),
            roles: vec!["admin".into()],
            permissions: Vec::new(),
            claims: None,
            key_id: None,
        }
    }

    /// A generated key's identity.
    pub fn from_key(info: &KeyInfo) -> Self {
        Identity {
            id: format!("apikey:{}", info.id),
            kind: IdentityKind::Apikey,
            name: Some(info.name.clone()),
            roles: vec![info.role.as_str().to_string()],
            permissions: info.permissions.clone(),
            claims: None,
            key_id: Some(info.id),
        }
    }

    /// A verified token's identity.
    pub fn from_claims(claims: Value) -> Self {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let strings = |v: Option<&Value>| -> Option<Vec<String>> {
            match v? {
                Value::Array(a) => Some(a.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
                Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
                _ => None,
            }
        };
        let roles = strings(claims.get("roles"))
            .or_else(|| strings(claims.get("realm_access").and_then(|r| r.get("roles"))))
            .unwrap_or_default();
        Identity {
            id: text("sub").unwrap_or_default(),
            kind: IdentityKind::Jwt,
            name: text("name").or_else(|| text("preferred_username")),
            roles,
            permissions: Vec::new(),
            claims: Some(claims),
            key_id: None,
        }
    }

    /// A stable key for limits per caller: `via:id`, with a token's issuer (`jwt:iss:sub`) so
    /// two providers' subjects never share a bucket.
    pub fn key(&self) -> String {
        let via = self.kind.as_str();
        match self.claims.as_ref().and_then(|c| c.get("iss")).and_then(Value::as_str) {
            Some(iss) => format!("{via}:{iss}:{}", self.id),
            None => format!("{via}:{}", self.id),
        }
    }

    /// Whether this identity may do what `permission` names on the internal API. The root key
    /// and admin keys may do everything; tokens never reach the internal API.
    pub fn has_permission(&self, permission: &str) -> bool {
        match self.kind {
            IdentityKind::Apikey => self.is_admin() || self.permissions.iter().any(|p| p == permission),
            IdentityKind::Root | IdentityKind::Jwt | IdentityKind::ForwardAuth => self.is_admin(),
        }
    }

    /// The root key, or a generated key with the admin role.
    pub fn is_admin(&self) -> bool {
        match self.kind {
            IdentityKind::Root => true,
            IdentityKind::Apikey => self.roles.iter().any(|r| r == "admin"),
            IdentityKind::Jwt | IdentityKind::ForwardAuth => false,
        }
    }
}

/// Remove any `x-identity` a client sent (every copy).
pub fn strip_incoming(headers: &mut HeaderMap) {
    headers.remove(IDENTITY_HEADER);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_become_an_identity() {
        let id = Identity::from_claims(
            json!({"sub": "u1", "iss": "https://idp", "preferred_username": "ada", "realm_access": {"roles": ["a", "b"]}}),
        );
        assert_eq!(id.id, "u1");
        assert_eq!(id.name.as_deref(), Some("ada"));
        assert_eq!(id.roles, vec!["a", "b"]);
        let id = Identity::from_claims(json!({"sub": "u2", "roles": "x y"}));
        assert_eq!(id.roles, vec!["x", "y"]);
        assert!(!id.has_permission("apps:read"));
        assert!(Identity::root().has_permission("keys:create"));
    }

    #[test]
    fn x_identity_has_the_documented_shape() {
        // What workers parse: `via`, never `kind`; no `key_id`; claims only for tokens.
        let token = Identity::from_claims(json!({"sub": "u1", "iss": "https://idp", "exp": 9}));
        assert_eq!(
            serde_json::to_value(&token).unwrap(),
            json!({"id": "u1", "roles": [], "via": "jwt", "claims": {"sub": "u1", "iss": "https://idp", "exp": 9}})
        );
        assert_eq!(token.key(), "jwt:https://idp:u1");
        let root = Identity::root();
        assert_eq!(
            serde_json::to_value(&root).unwrap(),
            json!({"id": "root", "name": "root", "roles": ["admin"], "via": "root-key"})
        );
        assert_eq!(root.key(), "root-key:root");
        let forwarded = Identity { kind: IdentityKind::ForwardAuth, ..Identity::from_claims(json!({"sub": "x"})) };
        assert_eq!(serde_json::to_value(&forwarded).unwrap()["via"], "forward-auth");
        assert!(!forwarded.has_permission("apps:read") && !forwarded.is_admin());
    }

    #[test]
    fn spoofed_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.append("x-identity", http::HeaderValue::from_static("{\"id\":\"root\"}"));
        h.append("x-identity", http::HeaderValue::from_static("spoof"));
        strip_incoming(&mut h);
        assert!(h.get("x-identity").is_none());
    }
}
