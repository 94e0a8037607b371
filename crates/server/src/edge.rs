//! The one edge where errors become responses. Every layer returns `marina_core::Error`; only
//! this module decides how it looks on the wire, so the JSON shape and the production policy
//! (no internal detail to clients) hold everywhere.

use http::{HeaderValue, Response, header};
use marina_core::{Body, Error, body};
use serde::Serialize;

/// A JSON error response.
pub fn error_response(err: &Error, hide_internal: bool) -> Response<Body> {
    let bytes = serde_json::to_vec(&err.to_json(hide_internal)).unwrap_or_default();
    let mut resp = Response::new(body::full(bytes));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A 200 JSON response.
pub fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(body::full(bytes));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => error_response(&Error::internal(format!("serialising a response failed: {e}")), false),
    }
}
