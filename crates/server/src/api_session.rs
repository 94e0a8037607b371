//! `GET /api/admin/session`: Buntime's check of an admin console's key. The console sends the
//! key it was given in `X-API-Key` and learns whose it is and what it may do, before it shows
//! any screen. Only `X-API-Key` counts here (as in Buntime: `Authorization: Bearer` is refused),
//! so the route is public at the gate and checks the key itself.
//!
//! `{authenticated: true, principal: {id, keyPrefix, name, role, permissions}}`; the root key is
//! `{id: 0, isMaster: true, isRoot: true, keyPrefix: "master", name: "master", role: "admin"}`
//! (Buntime's words for it), and the root key and admin keys list every permission.

use std::sync::Arc;

use axum::extract::State;
use http::{HeaderMap, StatusCode};
use marina_auth::IdentityKind;
use marina_auth::keys::ALL_PERMISSIONS;
use marina_core::Error;
use marina_plugins::api::{ApiError, reply};
use serde_json::json;

use crate::Runtime;

/// The handler.
pub(crate) async fn session(
    State(rt): State<Arc<Runtime>>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
    if key.is_empty() {
        return Err(Error::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_REQUIRED",
            "Unauthorized: the admin session needs the key in X-API-Key (Authorization: Bearer is not read here)",
        )
        .into());
    }
    let identity = rt.auth.identify_key(key).await?;
    let all: Vec<&str> = ALL_PERMISSIONS.to_vec();
    let principal = if identity.kind == IdentityKind::Root {
        json!({
            "id": 0, "isMaster": true, "isRoot": true, "keyPrefix": "master", "name": "master",
            "role": "admin", "permissions": all,
        })
    } else {
        let id = identity.key_id.ok_or_else(|| Error::internal("a key's identity has no key id"))?;
        let info = rt
            .auth
            .keys()
            .get(id)
            .await?
            .ok_or_else(|| Error::new(StatusCode::UNAUTHORIZED, "API_KEY_INVALID", "the API key is not valid"))?;
        let permissions = if identity.is_admin() { all } else { info.permissions.iter().map(String::as_str).collect() };
        json!({
            "id": info.id, "keyPrefix": info.key_prefix, "name": info.name,
            "role": info.role, "permissions": permissions,
        })
    };
    reply(&json!({ "authenticated": true, "principal": principal }))
}
