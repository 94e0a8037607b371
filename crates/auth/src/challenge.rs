//! `WWW-Authenticate` for marina's 401s and permission 403s (RFC 9110 §11.6.1 requires the
//! header on every 401; RFC 6750 §3 gives the Bearer scheme's parameters).
//!
//! - no credentials at all (`AUTH_REQUIRED`, or any other 401 marina cannot attribute to a
//!   presented credential): `Bearer realm="marina"` with no `error` (RFC 6750 §3.1: a request
//!   without authentication information gets no error code);
//! - a credential that is not accepted (`API_KEY_*`, `TOKEN_*`): `error="invalid_token"` with
//!   the reason as `error_description`;
//! - a valid credential lacking a permission (`PERMISSION_DENIED`, 403):
//!   `error="insufficient_scope"`.

use http::{HeaderValue, StatusCode};

/// The realm marina announces.
pub const REALM: &str = "marina";

/// The challenge for an error of this status and code, or `None` when the error is not about
/// credentials (a 403 for a cross-site request, say).
pub fn challenge(status: StatusCode, code: &str, message: &str) -> Option<HeaderValue> {
    let error = match (status, code) {
        (StatusCode::UNAUTHORIZED, c) if c.starts_with("API_KEY_") || c.starts_with("TOKEN_") => "invalid_token",
        (StatusCode::UNAUTHORIZED, _) => return Some(HeaderValue::from_static("Bearer realm=\"marina\"")),
        (StatusCode::FORBIDDEN, "PERMISSION_DENIED") => "insufficient_scope",
        _ => return None,
    };
    // A quoted-string may not hold `"` or `\`, and a header value only visible ASCII.
    let description: String =
        message.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { ' ' }).collect();
    HeaderValue::from_str(&format!(
        "Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{}\"",
        description.trim()
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6750_parameters() {
        let v = |s, c, m| challenge(s, c, m).map(|h| h.to_str().unwrap().to_string());
        assert_eq!(v(StatusCode::UNAUTHORIZED, "AUTH_REQUIRED", "x").as_deref(), Some("Bearer realm=\"marina\""));
        assert_eq!(
            v(StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED", "the token has expired").as_deref(),
            Some("Bearer realm=\"marina\", error=\"invalid_token\", error_description=\"the token has expired\"")
        );
        assert_eq!(
            v(StatusCode::UNAUTHORIZED, "API_KEY_INVALID", "no \"key\" \\ é").as_deref(),
            Some("Bearer realm=\"marina\", error=\"invalid_token\", error_description=\"no  key\"")
        );
        assert!(
            v(StatusCode::FORBIDDEN, "PERMISSION_DENIED", "missing permission: keys:create")
                .unwrap()
                .contains("insufficient_scope")
        );
        assert_eq!(v(StatusCode::FORBIDDEN, "ORIGIN_MISMATCH", "x"), None);
        assert_eq!(v(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "x"), None);
    }
}
