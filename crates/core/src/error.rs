//! The one error type of marina and the one JSON body it becomes.
//!
//! Every layer returns [`Error`]; only the server's edge turns it into a response, so the body
//! shape (`{"success": false, "code": "UPPER_SNAKE", "message": "...", "error": "...", "data": {...}}`) and the
//! status are decided in one place. The code is a stable machine-readable name; the message is
//! for people and quotes what was received and what was expected.
//!
//! Each error also says whose fault it is ([`Source`], as Pingora's `ErrorSource`): the client's
//! (its message is about the client's own input, safe to show), an upstream's (a worker or
//! remote server) or marina's own. The production policy at the edge shows only client messages.
//! The error is `Clone` (the cause is shared) so one failure can answer several waiters.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::{Value, json};

/// A result whose error is marina's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whose fault a failure is; decides what production clients may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request was wrong (4xx): the message talks about the client's own input.
    Client,
    /// A worker or a remote upstream failed: its text may carry the app's internals.
    Upstream,
    /// marina itself (or its configuration) failed: the text may carry paths or driver errors.
    Internal,
}

impl Source {
    /// The default for a status: 4xx → client, 502/504 → upstream, the rest → internal.
    pub fn for_status(status: StatusCode) -> Self {
        if status.is_client_error() {
            Source::Client
        } else if matches!(status, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT) {
            Source::Upstream
        } else {
            Source::Internal
        }
    }

    /// `client`, `upstream` or `internal` (as logged).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Internal => "internal",
        }
    }
}

/// A failure that knows the HTTP status and code it answers with.
#[derive(Clone)]
pub struct Error {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    data: Option<Value>,
    kind: Source,
    headers: Option<Box<HeaderMap>>,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// The body's `error` when it is not the message: Buntime's exact text, which its clients
    /// compare (`"Rule not found"`), while `message` keeps marina's detail. Boxed: a thin
    /// pointer keeps `Error` under clippy's large-`Err` bound (128 bytes).
    error_text: Option<Box<Cow<'static, str>>>,
}

impl Error {
    /// An error with an explicit status, code and message; its [`Source`] follows the status.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            data: None,
            kind: Source::for_status(status),
            headers: None,
            cause: None,
            error_text: None,
        }
    }

    /// 400: the client sent something malformed.
    pub fn bad_request(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 with the code `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 500: marina itself failed; the message should still say what was being done.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
    }

    /// 502: a worker or upstream failed to answer.
    pub fn bad_gateway(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, code, message)
    }

    /// 503: temporarily unable to serve (queue full, shutting down, storage down).
    pub fn unavailable(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 503 `SHUTTING_DOWN`: marina is stopping and will not answer this request; the client may
    /// retry (another instance, behind a load balancer), so it says when: `Retry-After: 1`.
    pub fn shutting_down(message: impl Into<String>) -> Self {
        Self::unavailable("SHUTTING_DOWN", message)
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// 504: a worker did not answer before its deadline.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "WORKER_TIMEOUT", message)
    }

    /// 413: the body is larger than the app accepts.
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .with_data(json!({ "limit": limit }))
    }

    /// Attach structured detail (`data` in the body).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Keep the underlying cause for logs; it never reaches the client.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.cause = Some(Arc::from(source.into()));
        self
    }

    /// Say whose fault this is when the status alone does not (a 404 because marina's own app
    /// dir vanished is [`Source::Internal`]).
    pub fn with_kind(mut self, kind: Source) -> Self {
        self.kind = kind;
        self
    }

    /// Answer `error: text` instead of repeating the message: for routes whose Buntime
    /// counterpart answered a fixed text its clients compare exactly.
    pub fn with_error_text(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        self.error_text = Some(Box::new(text.into()));
        self
    }

    /// A header the error response carries (`Retry-After`, `Allow`, `WWW-Authenticate`, ...).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.get_or_insert_with(Default::default).insert(name, value);
        self
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `UPPER_SNAKE` code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structured detail, if any.
    pub fn data(&self) -> Option<&Value> {
        self.data.as_ref()
    }

    /// Whose fault this is.
    pub fn kind(&self) -> Source {
        self.kind
    }

    /// Headers for the error response.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.headers.as_deref()
    }

    /// The full JSON body, message and data included (what development clients see).
    /// `error` is the message again, or Buntime's fixed text where one was set
    /// ([`Error::with_error_text`]): Buntime's plugins answer `{error}` and its key checks
    /// `{code, error}`, so clients written for Buntime read `error`; marina's own read `message`.
    pub fn to_json(&self) -> Value {
        let error = self.error_text.as_deref().map_or(self.message.as_str(), |t| t.as_ref());
        let mut body = json!({ "success": false, "code": self.code, "message": self.message, "error": error });
        if let Some(data) = &self.data {
            body["data"] = data.clone();
        }
        body
    }

    /// The body a production client sees: client errors in full; upstream and internal ones
    /// only by code and request id, because their text may carry paths, stderr or stack traces
    /// (the detail goes to the log under the same request id).
    pub fn to_public_json(&self, request_id: &str) -> Value {
        if self.kind == Source::Client {
            return self.to_json();
        }
        let what = match self.kind {
            Source::Upstream => "the app failed to answer",
            _ => "marina failed to answer",
        };
        let message = format!("{what} ({}); the server log has the detail under request id {request_id}", self.code);
        json!({
            "success": false,
            "code": self.code,
            "message": message,
            "error": message,
            "data": { "requestId": request_id },
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("status", &self.status.as_u16())
            .field("code", &self.code)
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("data", &self.data)
            .field("cause", &self.cause)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// `text` as an error message may quote it: at most `max_chars` characters, then `…`. Input a
/// client sent can be megabytes long, and an error quotes what it got without echoing it all back.
pub fn clipped(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_quotes_at_most_the_characters_asked() {
        assert_eq!(clipped("short", 8), "short");
        assert_eq!(clipped("exactly8", 8), "exactly8");
        assert_eq!(clipped("ninechars", 8), "ninechar…");
        assert_eq!(clipped("ééééé", 2), "éé…", "cut at a character, never inside one");
    }

    #[test]
    fn body_has_the_documented_shape() {
        let err = Error::not_found("no app named 'todo'").with_data(json!({"app": "todo"}));
        assert_eq!(
            err.to_json(),
            json!({"success": false, "code": "NOT_FOUND", "message": "no app named 'todo'",
                "error": "no app named 'todo'", "data": {"app": "todo"}})
        );
    }

    #[test]
    fn error_repeats_the_message_unless_a_fixed_text_is_given() {
        let err = Error::not_found("no proxy rule has the id 'x'");
        assert_eq!(err.to_json()["error"], "no proxy rule has the id 'x'");
        let err = err.with_error_text("Rule not found");
        assert_eq!(err.to_json()["error"], "Rule not found");
        assert_eq!(err.to_json()["message"], "no proxy rule has the id 'x'");
    }

    #[test]
    fn the_source_follows_the_status_unless_set() {
        assert_eq!(Error::not_found("x").kind(), Source::Client);
        assert_eq!(Error::bad_gateway("WORKER_CRASHED", "x").kind(), Source::Upstream);
        assert_eq!(Error::gateway_timeout("x").kind(), Source::Upstream);
        assert_eq!(Error::unavailable("QUEUE_FULL", "x").kind(), Source::Internal);
        assert_eq!(Error::internal("x").kind(), Source::Internal);
        assert_eq!(Error::not_found("app dir gone").with_kind(Source::Internal).kind(), Source::Internal);
    }

    #[test]
    fn production_shows_client_messages_only() {
        let err = Error::bad_request("BAD_JSON", "expected an object at `.name`").with_data(json!({"path": ".name"}));
        assert_eq!(err.to_public_json("r1"), err.to_json());
        let err = Error::internal("open /secret/path failed").with_data(json!({"file": "/secret/path"}));
        let body = err.to_public_json("r1");
        assert!(!body.to_string().contains("/secret"), "{body}");
        assert_eq!(body["code"], "INTERNAL_ERROR");
        assert_eq!(body["data"]["requestId"], "r1");
        let err = Error::bad_gateway("WORKER_CRASHED", "worker exited: TypeError at /app/index.ts:3");
        let body = err.to_public_json("r2");
        assert!(!body.to_string().contains("TypeError"), "{body}");
        assert!(body["message"].as_str().unwrap().contains("r2"));
    }

    #[test]
    fn clones_share_the_cause_and_keep_headers() {
        let err = Error::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "slow down")
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("3"))
            .with_source(std::io::Error::other("inner"));
        let copy = err.clone();
        assert_eq!(copy.headers().unwrap()["retry-after"], "3");
        assert_eq!(copy.to_string(), "slow down: inner");
    }
}
