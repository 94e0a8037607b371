//! Header names marina reads or writes on every request, as constants.
//!
//! `headers.get("x-base")` or `insert("x-request-id", ..)` with a string parses and validates
//! the name on each call (~1,500 instructions for an insert, measured with callgrind); a
//! `const HeaderName` is built at compile time and compares by pointer for standard names and
//! by bytes otherwise.

use http::HeaderName;

/// `X-Request-Id`: the caller's id when sane, else one marina makes; echoed on every answer.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Base`: the path prefix an app is served under (`/todo`), for workers and static apps.
pub const X_BASE: HeaderName = HeaderName::from_static("x-base");
/// `X-API-Key`: an API key, as Buntime's clients send it.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Set by marina on a wasm app's outgoing requests to marina's own port (which come from
/// marina's process, so the connection cannot tell): the internal API, while open, refuses them.
pub const FROM_APP: HeaderName = HeaderName::from_static("x-marina-from-app");
