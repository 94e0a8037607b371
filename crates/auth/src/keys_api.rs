//! `/api/keys`, with Buntime's paths, bodies and status codes (buntime.md §4.2). Framework-free:
//! the server's router hands over the method, the path below `/keys` and the body; errors go
//! back to the server's one edge.

use bytes::Bytes;
use http::{Method, StatusCode};
use marina_core::Error;
use serde_json::{Value, json};

use crate::identity::Identity;
use crate::keys::{ALL_PERMISSIONS, ALL_ROLES, KeyStore, NewKey};

/// The largest body `POST /api/keys` reads.
pub const MAX_BODY: usize = 64 * 1024;

/// Answer `method` on `/keys{rest}` (`rest` is `""`, `/meta` or `/{id}`). `caller` is the
/// identity the gate established (its key id becomes `createdBy`). Permissions were checked by
/// the gate already.
///
/// # Errors
/// 400 for bad bodies and ids (with `data.path`), 404 `API_KEY_NOT_FOUND`, 405, storage errors.
pub async fn handle(
    keys: &KeyStore,
    method: &Method,
    rest: &str,
    body: Bytes,
    caller: Option<&Identity>,
) -> Result<(StatusCode, Value), Error> {
    let rest = rest.trim_end_matches('/');
    match (method, rest) {
        (&Method::GET | &Method::HEAD, "") => Ok((StatusCode::OK, json!({ "keys": keys.list().await? }))),
        (&Method::GET | &Method::HEAD, "/meta") => {
            Ok((StatusCode::OK, json!({ "roles": ALL_ROLES, "permissions": ALL_PERMISSIONS })))
        }
        (&Method::POST, "") => {
            let input = parse_new_key(&body)?;
            let created = keys.create(input, caller.and_then(|c| c.key_id)).await?;
            Ok((StatusCode::CREATED, json!({ "success": true, "data": created })))
        }
        (&Method::DELETE, id) if id.len() > 1 && !id[1..].contains('/') => {
            let raw = &id[1..];
            let id = raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::bad_request("INVALID_KEY_ID", format!("invalid API key id {raw:?}: expected a positive integer"))
                    .with_data(json!({ "path": "id" }))
            })?;
            keys.revoke(id).await?;
            Ok((StatusCode::OK, json!({ "success": true })))
        }
        (_, "" | "/meta") => Err(method_not_allowed(method, rest)),
        (_, r) if r.len() > 1 && !r[1..].contains('/') => Err(method_not_allowed(method, rest)),
        _ => Err(Error::not_found(format!("no API route {method} /keys{rest}"))),
    }
}

fn method_not_allowed(method: &Method, rest: &str) -> Error {
    Error::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", format!("{method} is not allowed on /keys{rest}"))
}

/// The body of `POST /api/keys`; a wrong type names the field.
fn parse_new_key(body: &[u8]) -> Result<NewKey, Error> {
    if body.len() > MAX_BODY {
        return Err(Error::payload_too_large(MAX_BODY as u64));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let input = serde_path_to_error::deserialize::<_, NewKey>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_data() { "INVALID_KEY_FIELD" } else { "INVALID_JSON" };
        let message = if path == "." {
            format!("the body must be a JSON object: {inner}")
        } else {
            format!("field {path}: {inner}")
        };
        Error::bad_request(code, message).with_data(json!({ "path": path }))
    })?;
    de.end().map_err(|e| Error::bad_request("INVALID_JSON", format!("trailing data after the JSON body: {e}")))?;
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_bad_field() {
        let e = parse_new_key(br#"{"name": 5}"#).unwrap_err();
        assert_eq!(e.code(), "INVALID_KEY_FIELD");
        assert_eq!(e.data().unwrap()["path"], "name");
        let e = parse_new_key(br#"{"name": "a", "permissions": ["x", 3]}"#).unwrap_err();
        assert_eq!(e.data().unwrap()["path"], "permissions[1]");
        assert_eq!(parse_new_key(b"{").unwrap_err().code(), "INVALID_JSON");
        assert_eq!(parse_new_key(b"[]").unwrap_err().code(), "INVALID_KEY_FIELD");
        assert_eq!(parse_new_key(br#"{"name":"a"} x"#).unwrap_err().code(), "INVALID_JSON");
        assert_eq!(parse_new_key(br#"{"name":"a","extra":1}"#).unwrap().name.as_deref(), Some("a"));
    }
}
