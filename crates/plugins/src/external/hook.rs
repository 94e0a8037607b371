//! An external plugin's `onRequest` hook, as forward-auth proxies do it (nginx `auth_request`,
//! Traefik `forwardAuth`).
//!
//! The question: `GET {hooks.onRequest}` to the plugin's worker (at the plugin's base, as any
//! request to it), never with a body, carrying the request's headers less the hop-by-hop ones
//! (RFC 9110 §7.6.1, and those `Connection` names) and the body's (`Content-Length`,
//! `Transfer-Encoding`, `Expect`), plus the original request described the way both proxies do:
//! `X-Forwarded-Method`, `X-Forwarded-Uri` (path and query), `X-Forwarded-Host`,
//! `X-Forwarded-Proto`, `X-Forwarded-For` (Traefik's names) and `X-Original-Method`,
//! `X-Original-URI` (nginx's). The forwarding headers are marina's, never the client's claim;
//! `x-identity` is there when authentication established who is calling.
//!
//! The answer: a 2xx lets the request go on; the headers named in `hooks.authResponseHeaders`
//! are copied from it to the request (replacing any), nothing else of it is used. Any other
//! status is the client's answer as the worker gave it: status, headers and body (a 401 with
//! `WWW-Authenticate`, a 302 to a login page).
//!
//! Trust: every header named in `authResponseHeaders` is removed from the incoming request
//! before anything else, so an app sees `x-user` only when the hook set it. marina's own headers
//! (`x-base`, `x-request-id`, the forwarding headers, `x-marina-*`), hop-by-hop and body headers
//! and `host` cannot be listed (the manifest is refused). `x-identity` can: it is how a hook
//! says who is calling — its value must be JSON `{"id": "...", "name"?: "...", "roles"?: [...]}`
//! and becomes marina's identity (`via: "forward-auth"`), which the app receives as `x-identity`
//! like any other.

use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use marina_core::{Body, Error, body};
use serde_json::{Map, Value, json};

use crate::app_request::{IDENTITY_HEADER, set_app_headers};
use crate::context::{Identity, RequestContext};
use crate::plugin::Outcome;

/// The `hooks` of an external plugin's manifest.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The path and query the worker is asked at (relative to the plugin's base).
    path: String,
    /// Headers copied from a 2xx answer to the request.
    copy: Vec<HeaderName>,
    /// `paths` / `excludePaths`: which requests it is asked about.
    pub paths: super::paths::PathFilter,
}

/// Names a hook may not set: marina's own, hop-by-hop and body headers.
fn reserved(name: &HeaderName) -> bool {
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "content-encoding",
        "content-type",
        "expect",
        "x-base",
        "x-request-id",
        "forwarded",
        "x-real-ip",
    ];
    let n = name.as_str();
    RESERVED.contains(&n)
        || marina_proxy::headers::is_hop_by_hop(name)
        || n.starts_with("x-forwarded-")
        || n.starts_with("x-original-")
        || n.starts_with("x-marina-")
}

fn bad(key: &str, message: String) -> Error {
    Error::internal(format!("`{key}`: {message}")).with_data(json!({ "path": key }))
}

impl Hook {
    /// The hook from the manifest's `hooks` option; `None` when it names no `onRequest`.
    ///
    /// # Errors
    /// A malformed `hooks`, naming the key: a path that is not absolute or not a valid URI, a
    /// header name that is invalid or reserved.
    pub fn from_options(options: &Map<String, Value>) -> Result<Option<Self>, Error> {
        let hooks = match options.get("hooks") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(bad("hooks", format!("expected a mapping such as {{onRequest: /check}}, found {other}")));
            }
        };
        const KEYS: [&str; 4] = ["onRequest", "authResponseHeaders", "paths", "excludePaths"];
        for key in hooks.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(bad(
                    &format!("hooks.{key}"),
                    "unknown key (external plugins have `onRequest`, `authResponseHeaders`, `paths` and `excludePaths`)"
                        .into(),
                ));
            }
        }
        let path = match hooks.get("onRequest") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(p)) if p.starts_with('/') && http::uri::PathAndQuery::try_from(p.as_str()).is_ok() => {
                p.clone()
            }
            Some(other) => {
                return Err(bad(
                    "hooks.onRequest",
                    format!("expected a path below the plugin's base such as \"/check\", found {other}"),
                ));
            }
        };
        let mut copy = Vec::new();
        match hooks.get("authResponseHeaders") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("hooks.authResponseHeaders[{i}]");
                    let name = item
                        .as_str()
                        .and_then(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
                        .ok_or_else(|| bad(&key, format!("expected a header name, found {item}")))?;
                    if reserved(&name) {
                        return Err(bad(
                            &key,
                            format!(
                                "`{name}` is set by marina or describes the connection or body; a hook cannot set it"
                            ),
                        ));
                    }
                    if !copy.contains(&name) {
                        copy.push(name);
                    }
                }
            }
            Some(other) => {
                return Err(bad(
                    "hooks.authResponseHeaders",
                    format!("expected a list of header names, found {other}"),
                ));
            }
        }
        let paths = super::paths::PathFilter::from_hooks(hooks)?;
        Ok(Some(Self { path, copy, paths }))
    }

    /// Removes the headers the hook may set from the incoming request (see the module docs) and
    /// returns them: the hook is still told what the client sent.
    pub fn strip_trusted(&self, headers: &mut HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut sent = Vec::new();
        for name in &self.copy {
            for value in headers.get_all(name) {
                sent.push((name.clone(), value.clone()));
            }
            headers.remove(name);
        }
        sent
    }

    /// The question for the plugin's worker about `req` (whose trusted headers `sent` were
    /// stripped), at the plugin's `base`.
    ///
    /// # Errors
    /// None in practice: the path was checked at load.
    pub fn request(
        &self,
        req: &Request<Body>,
        sent: &[(HeaderName, HeaderValue)],
        base: &str,
        ctx: &RequestContext,
    ) -> Result<Request<Body>, Error> {
        let mut headers = req.headers().clone();
        for (name, value) in sent {
            headers.append(name.clone(), value.clone());
        }
        marina_proxy::strip_hop_by_hop(&mut headers, false);
        for name in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::EXPECT] {
            headers.remove(name);
        }
        let uri = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |pq| pq.as_str().to_string());
        let method = req.method().as_str().to_string();
        set_app_headers(&mut headers, base, ctx);
        for (name, value) in [
            ("x-forwarded-method", &method),
            ("x-forwarded-uri", &uri),
            ("x-original-method", &method),
            ("x-original-uri", &uri),
        ] {
            match HeaderValue::from_str(value) {
                Ok(v) => {
                    headers.insert(HeaderName::from_static(name), v);
                }
                Err(_) => {
                    headers.remove(name);
                }
            }
        }
        let mut ask = Request::new(body::empty());
        *ask.method_mut() = Method::GET;
        *ask.uri_mut() =
            self.path.parse::<http::Uri>().map_err(|e| Error::internal(format!("hook path {:?}: {e}", self.path)))?;
        *ask.headers_mut() = headers;
        Ok(ask)
    }

    /// What the worker's answer means for the request (see the module docs).
    ///
    /// # Errors
    /// A failure of the hook when a 2xx carries an `x-identity` marina cannot read.
    pub fn apply(
        &self,
        answer: Response<Body>,
        req: &mut Request<Body>,
        ctx: &mut RequestContext,
        plugin: &str,
    ) -> Result<Outcome, Error> {
        if !answer.status().is_success() {
            return Ok(Outcome::Respond(answer));
        }
        for name in &self.copy {
            if name == IDENTITY_HEADER {
                if let Some(value) = answer.headers().get(name) {
                    ctx.identity =
                        Some(Arc::new(identity(value).map_err(|why| {
                            failed(plugin, "its answer's x-identity is unusable", Error::internal(why))
                        })?));
                }
                continue;
            }
            for value in answer.headers().get_all(name) {
                req.headers_mut().append(name.clone(), value.clone());
            }
        }
        Ok(Outcome::Continue)
    }
}

/// An identity from a hook's `x-identity`: JSON `{"id", "name"?, "roles"?}`.
fn identity(value: &HeaderValue) -> Result<Identity, String> {
    let parsed: Value = serde_json::from_slice(value.as_bytes()).map_err(|e| format!("not JSON: {e}"))?;
    let id = parsed.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or("no string `id`")?;
    let name = parsed.get("name").and_then(Value::as_str).map(str::to_string);
    let roles = match parsed.get("roles") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| r.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("`roles` holds a non-string")?,
        Some(_) => return Err("`roles` is not a list".into()),
    };
    Ok(Identity {
        id: id.to_string(),
        name,
        roles,
        kind: marina_auth::IdentityKind::ForwardAuth,
        permissions: Vec::new(),
        claims: Some(parsed),
        key_id: None,
    })
}

/// A failure of the hook (not an answer): the pipeline's policy applies (503
/// `PLUGIN_ONREQUEST_FAILED`, or going on when the plugin is fail-open). Its kind is internal
/// whatever the cause's, so a worker's 502 is not mistaken for a deliberate answer.
pub fn failed(plugin: &str, what: &str, cause: Error) -> Error {
    let message = format!("{what}: {} ({})", cause.message(), cause.code());
    Error::internal(message).with_data(json!({ "plugin": plugin, "code": cause.code() })).with_source(cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: Value) -> Result<Option<Hook>, Error> {
        Hook::from_options(v.as_object().unwrap())
    }

    #[test]
    fn manifests() {
        assert!(hook(json!({})).unwrap().is_none());
        let h = hook(
            json!({"hooks": {"onRequest": "/check?x=1", "authResponseHeaders": ["X-User", "x-user", "x-identity"]}}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.path, "/check?x=1");
        assert_eq!(h.copy, ["x-user", "x-identity"]);
        for (v, needle) in [
            (json!({"hooks": "x"}), "`hooks`: expected a mapping"),
            (json!({"hooks": {"onRequest": "check"}}), "`hooks.onRequest`"),
            (json!({"hooks": {"onRequest": 3}}), "`hooks.onRequest`"),
            (json!({"hooks": {"onResponse": "/x"}}), "`hooks.onResponse`: unknown key"),
            (json!({"hooks": {"onRequest": "/c", "authResponseHeaders": "x"}}), "a list of header names"),
            (
                json!({"hooks": {"onRequest": "/c", "authResponseHeaders": ["bad name"]}}),
                "[0]`: expected a header name",
            ),
            (
                json!({"hooks": {"onRequest": "/c", "authResponseHeaders": ["a", "X-Forwarded-For"]}}),
                "[1]`: `x-forwarded-for`",
            ),
            (json!({"hooks": {"onRequest": "/c", "authResponseHeaders": ["x-base"]}}), "cannot set it"),
            (json!({"hooks": {"onRequest": "/c", "authResponseHeaders": ["content-length"]}}), "cannot set it"),
            (json!({"hooks": {"onRequest": "/c", "authResponseHeaders": ["Transfer-Encoding"]}}), "cannot set it"),
            (json!({"hooks": {"onRequest": "/c", "authResponseHeaders": ["upgrade"]}}), "cannot set it"),
            (json!({"hooks": {"onRequest": "/c", "authResponseHeaders": ["keep-alive"]}}), "cannot set it"),
        ] {
            let err = hook(v.clone()).unwrap_err();
            assert!(err.message().contains(needle), "{v}: {}", err.message());
        }
    }

    #[test]
    fn identities() {
        let ok =
            identity(&HeaderValue::from_static(r#"{"id":"u1","name":"Ann","roles":["admin"],"tenant":"t"}"#)).unwrap();
        assert_eq!(
            (ok.id.as_str(), ok.name.as_deref(), ok.roles.clone(), ok.kind.as_str()),
            ("u1", Some("Ann"), vec!["admin".to_string()], "forward-auth")
        );
        assert_eq!(ok.claims.as_ref().unwrap()["tenant"], "t");
        for bad in
            [r#"nope"#, r#"{"name":"x"}"#, r#"{"id":""}"#, r#"{"id":"a","roles":"x"}"#, r#"{"id":"a","roles":[1]}"#]
        {
            assert!(identity(&HeaderValue::from_str(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
