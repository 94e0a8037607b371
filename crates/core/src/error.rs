//! The one error type of marina and the one JSON body it becomes.
//!
//! Every layer returns [`Error`]; only the server's edge turns it into a response, so the body
//! shape (`{"success": false, "code": "UPPER_SNAKE", "message": "...", "data": {...}}`) and the
//! status are decided in one place. The code is a stable machine-readable name; the message is
//! for people and quotes what was received and what was expected.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;
use serde_json::{Value, json};

/// A result whose error is marina's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure that knows the HTTP status and code it answers with.
pub struct Error {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    data: Option<Value>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error with an explicit status, code and message.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), data: None, source: None }
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
        self.source = Some(source.into());
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

    /// The JSON body this error becomes. With `hide_internal`, an `INTERNAL_ERROR` (marina's own
    /// failure, whose message may carry paths or driver text) gets a generic message, so
    /// production servers do not leak internals; errors with a specific code (a bad manifest, a
    /// crashed worker) keep their message because the app's owner needs it.
    pub fn to_json(&self, hide_internal: bool) -> Value {
        let message = if hide_internal && self.code == "INTERNAL_ERROR" {
            "internal server error".to_string()
        } else {
            self.message.clone()
        };
        let mut body = json!({ "success": false, "code": self.code, "message": message });
        if let Some(data) = &self.data {
            body["data"] = data.clone();
        }
        body
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("status", &self.status.as_u16())
            .field("code", &self.code)
            .field("message", &self.message)
            .field("data", &self.data)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_documented_shape() {
        let err = Error::not_found("no app named 'todo'").with_data(json!({"app": "todo"}));
        assert_eq!(
            err.to_json(false),
            json!({"success": false, "code": "NOT_FOUND", "message": "no app named 'todo'", "data": {"app": "todo"}})
        );
    }

    #[test]
    fn production_hides_internal_messages_only() {
        let err = Error::internal("open /secret/path failed");
        assert_eq!(err.to_json(true)["message"], "internal server error");
        let err = Error::unavailable("QUEUE_FULL", "queue is full");
        assert_eq!(err.to_json(true)["message"], "queue is full");
    }
}
