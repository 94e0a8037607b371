//! Helpers for plugins (and the internal API) that answer with an axum [`Router`]: handlers
//! return `Result<_, ApiError>`, and [`call`] turns the router's answer back into
//! `Result<Response, marina_core::Error>`, so every error is still rendered by the server's one
//! edge (JSON shape, production policy, logging) and never by axum or the plugin.

use axum::Router;
use axum::extract::{FromRequest, Request as AxumRequest};
use axum::response::{IntoResponse, Response as AxumResponse};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use marina_core::{Body, Error, body};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_service::Service;

/// A handler's error: carried to [`call`] inside the response's extensions.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

#[derive(Clone)]
struct Carried(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> AxumResponse {
        let mut resp = self.0.status().into_response();
        resp.extensions_mut().insert(Carried(self.0));
        resp
    }
}

/// A 200 JSON response.
pub fn json<T: Serialize>(value: &T) -> Result<Response<Body>, Error> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| Error::internal(format!("serialising a response failed: {e}")))?;
    let mut resp = Response::new(body::full(bytes));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// A JSON response for an axum handler.
pub fn reply<T: Serialize>(value: &T) -> Result<AxumResponse, ApiError> {
    Ok(json(value)?.map(axum::body::Body::new))
}

/// Call a router and hand back its answer, or the [`Error`] a handler returned. Rejections
/// axum renders itself (a bad path parameter, a missing content type) become errors too.
pub async fn call(router: &Router, req: Request<Body>) -> Result<Response<Body>, Error> {
    let mut router = router.clone();
    let mut resp = router.call(req.map(axum::body::Body::new)).await.unwrap_or_else(|never| match never {});
    if let Some(Carried(err)) = resp.extensions_mut().remove::<Carried>() {
        return Err(err);
    }
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    // axum's own rejections are plain text or empty (405); a handler's JSON answer is kept.
    let axum_rejection = content_type.is_empty() || content_type.starts_with("text/plain");
    if (status.is_client_error() || status.is_server_error()) && axum_rejection {
        let allow = resp.headers().get(header::ALLOW).cloned();
        let text = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let mut err = rejection(status, &text);
        if let Some(allow) = allow {
            err = err.with_header(header::ALLOW, allow);
        }
        return Err(err);
    }
    Ok(resp.map(body::boxed))
}

fn rejection(status: StatusCode, text: &Bytes) -> Error {
    let text = if text.is_empty() {
        Bytes::from(status.canonical_reason().unwrap_or("request refused").to_string())
    } else {
        text.clone()
    };
    let text = &text;
    let code = match status {
        StatusCode::BAD_REQUEST => "BAD_REQUEST",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::UNPROCESSABLE_ENTITY => "INVALID_BODY",
        s if s.is_client_error() => "BAD_REQUEST",
        _ => "INTERNAL_ERROR",
    };
    Error::new(status, code, String::from_utf8_lossy(text).into_owned())
}

/// A JSON body extractor whose rejection is a 400 `INVALID_JSON` naming the bad field's path
/// (`.rules[2].pattern`), rendered by the server's edge.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: AxumRequest, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Error::bad_request("BAD_BODY", format!("the request body could not be read: {e}")))?;
        parse_json(&bytes).map(Json).map_err(ApiError)
    }
}

/// Parse JSON with the path of the first bad field in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() {
            format!("invalid JSON body: {inner}")
        } else {
            format!("invalid JSON body at `{path}`: {inner}")
        };
        Error::bad_request("INVALID_JSON", message).with_data(serde_json::json!({ "path": path }))
    })
}

/// The guard of a plugin's own API (`/gateway/api`, `/redirects/api`): the internal API's rules
/// (buntime.md §4.1) applied to the full path — once the root key is set or any API key exists,
/// reading needs a valid key and changing needs an admin key or the root key; before that,
/// state-changing calls need a same-host `Origin` (CSRF). JWTs are for apps and never count.
///
/// # Errors
/// As [`marina_auth::Auth::authorize_api`]: 401 `AUTH_REQUIRED`/`API_KEY_*`, 403
/// `PERMISSION_DENIED`/`ORIGIN_*`.
pub async fn guard(
    auth: &marina_auth::Auth,
    method: &http::Method,
    headers: &http::HeaderMap,
    full_path: &str,
    conn: Option<marina_auth::Connection>,
) -> Result<Option<marina_auth::Identity>, Error> {
    let authority = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    auth.authorize_api(method, full_path, headers, authority, conn).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Rule {
        name: String,
        order: u32,
    }

    async fn create(Json(_rule): Json<Rule>) -> Result<AxumResponse, ApiError> {
        reply(&serde_json::json!({"ok": true}))
    }

    async fn boom() -> Result<AxumResponse, ApiError> {
        Err(Error::new(StatusCode::CONFLICT, "TAKEN", "name 'a' is taken").into())
    }

    fn router() -> Router {
        Router::new().route("/rules", post(create)).route("/boom", get(boom))
    }

    fn req(method: &str, uri: &str, body_text: &str) -> Request<Body> {
        Request::builder().method(method).uri(uri).body(body::full(body_text.to_string())).unwrap()
    }

    #[tokio::test]
    async fn handler_errors_come_back_as_errors() {
        let err = call(&router(), req("GET", "/boom", "")).await.unwrap_err();
        assert_eq!((err.status(), err.code()), (StatusCode::CONFLICT, "TAKEN"));
        let ok = call(&router(), req("POST", "/rules", r#"{"name":"a","order":1}"#)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn bad_json_names_the_field_and_axum_rejections_become_errors() {
        let err = call(&router(), req("POST", "/rules", r#"{"name":"a","order":"x"}"#)).await.unwrap_err();
        assert_eq!(err.code(), "INVALID_JSON");
        assert_eq!(err.data().unwrap()["path"], "order");
        let err = call(&router(), req("PUT", "/rules", "")).await.unwrap_err();
        assert_eq!((err.status(), err.code()), (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"));
        assert_eq!(err.headers().unwrap()["allow"], "POST");
    }
}
