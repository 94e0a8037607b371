//! [`Auth`]: the decisions the request pipeline asks for — who is calling (root key, API key,
//! JWT), whether the internal API lets them through, and what an app route forwards.
//!
//! 401 means "no usable credentials" (missing, unknown, expired, revoked, bad token); 403 means
//! "credentials are fine, this is not allowed" (a missing permission, a cross-site call).

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode, header};
use marina_core::Error;
use marina_store::Store;
use serde_json::json;

use crate::api_rules::{self, Requirement};
use crate::config::AuthConfig;
use crate::identity::{self, Identity};
use crate::jwt::JwtVerifier;
use crate::keys::{KeyCheck, KeyStore, secret};
use crate::public_routes::{PublicRoutesCache, RouteMap};

/// Which header a key came in, so that it can be kept from the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `X-API-Key`.
    XApiKey,
    /// `Authorization: Bearer`.
    Bearer,
}

/// The credential a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// None.
    Nothing,
    /// A root or generated key.
    Key(&'a str, KeySource),
    /// A bearer token shaped like a JWT.
    Token(&'a str),
}

/// Read the credential: `X-API-Key` first (as Buntime), else `Authorization: Bearer`, which is
/// a JWT when it has the three-part shape and is not a `btk_` key.
///
/// Runs on every request that carries a credential, so the value is checked as UTF-8 (which
/// is vectorised) rather than byte by byte: a `HeaderValue` never holds a control character
/// other than tab (`http` and hyper's parser refuse them), so valid UTF-8 is text. Non-ASCII
/// text, which `HeaderValue::to_str` refuses, matches no key or token anyway.
pub fn presented(headers: &HeaderMap) -> Presented<'_> {
    if let Some(k) =
        headers.get(marina_core::headers::X_API_KEY).and_then(text).map(str::trim_ascii).filter(|k| !k.is_empty())
    {
        return Presented::Key(k, KeySource::XApiKey);
    }
    let Some(auth) = headers.get(header::AUTHORIZATION).and_then(text) else {
        return Presented::Nothing;
    };
    // HTTP's whitespace is ASCII (SP, HTAB): `trim_ascii` and a byte search for the space are
    // what the header can hold, without `str::trim`'s Unicode tables or a pattern searcher.
    let auth = auth.trim_ascii();
    let Some(space) = auth.bytes().position(|b| b == b' ') else { return Presented::Nothing };
    let (scheme, value) = (&auth[..space], &auth[space + 1..]);
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Nothing;
    }
    let value = value.trim_ascii();
    if value.is_empty() {
        return Presented::Nothing;
    }
    // memchr's vectorised search instead of a byte-by-byte count (callgrind, a ~150-byte token:
    // this function 1,445 → 1,060 instructions per call).
    if !value.starts_with(secret::KEY_PREFIX) && memchr::memchr_iter(b'.', value.as_bytes()).count() == 2 {
        Presented::Token(value)
    } else {
        Presented::Key(value, KeySource::Bearer)
    }
}

/// The value of an `Authorization: Bearer <value>` header as bytes, trimmed as [`presented`]
/// trims it; `None` for another scheme or an empty value.
fn bearer_value(header: &http::HeaderValue) -> Option<&[u8]> {
    let auth = header.as_bytes().trim_ascii();
    let space = memchr::memchr(b' ', auth)?;
    let (scheme, value) = (&auth[..space], auth[space + 1..].trim_ascii());
    (scheme.eq_ignore_ascii_case(b"bearer") && !value.is_empty()).then_some(value)
}

/// A header value as text (see [`presented`]).
fn text(value: &http::HeaderValue) -> Option<&str> {
    std::str::from_utf8(value.as_bytes()).ok()
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The two ends of the TCP connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// marina's side.
    pub local: std::net::SocketAddr,
}

/// Says whether a connection's client is, or may be, one of marina's workers: `Some(why)`
/// when it is. Blocking (it reads `/proc`); asked only while the internal API is open.
pub type AppCallerCheck = Arc<dyn Fn(Connection) -> Option<String> + Send + Sync>;

/// Authentication state shared by every request.
pub struct Auth {
    keys: KeyStore,
    app_callers: Option<AppCallerCheck>,
    root_key: Option<String>,
    jwt: Option<JwtVerifier>,
    public_routes: PublicRoutesCache,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("root_key", &self.root_key.is_some()).field("jwt", &self.jwt).finish()
    }
}

impl Auth {
    /// Authentication over marina's migrated `store`.
    ///
    /// # Errors
    /// As [`JwtVerifier::new`].
    pub fn new(config: &AuthConfig, store: Store) -> Result<Self, Error> {
        if let (Some(k), Some(var)) = (&config.root_key, config.root_key_var)
            && k.len() < 16
        {
            tracing::warn!(variable = var, "the root key is shorter than 16 characters; use a long random value");
        }
        Ok(Self {
            keys: KeyStore::new(store),
            app_callers: None,
            root_key: config.root_key.clone(),
            jwt: config.jwt.as_ref().map(JwtVerifier::new).transpose()?,
            public_routes: PublicRoutesCache::default(),
        })
    }

    /// Refuse the keyless internal API to the connections `check` says are apps' (while no
    /// key exists the API is open, and workers can reach it).
    #[must_use]
    pub fn with_app_caller_check(mut self, check: AppCallerCheck) -> Self {
        self.app_callers = Some(check);
        self
    }

    /// The generated keys.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The JWT verifier, when JWT verification is configured.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// Whether a root key is configured.
    pub fn has_root_key(&self) -> bool {
        self.root_key.is_some()
    }

    /// Who a root or generated key belongs to.
    ///
    /// # Errors
    /// 401 `API_KEY_INVALID`, `API_KEY_EXPIRED`, `API_KEY_REVOKED`; storage errors.
    pub async fn identify_key(&self, key: &str) -> Result<Identity, Error> {
        if let Some(root) = &self.root_key
            && secret::secrets_equal(root, key)
        {
            return Ok(Identity::root());
        }
        match self.keys.verify(key).await? {
            KeyCheck::Valid(info) => Ok(Identity::from_key(&info)),
            KeyCheck::Unknown => Err(unauthorized("API_KEY_INVALID", "the API key is not valid")),
            KeyCheck::Expired(info) => Err(unauthorized("API_KEY_EXPIRED", format!("API key {} has expired", info.id))
                .with_data(json!({ "id": info.id, "expiresAt": info.expires_at }))),
            KeyCheck::Revoked(info) => Err(unauthorized("API_KEY_REVOKED", format!("API key {} was revoked", info.id))
                .with_data(json!({ "id": info.id }))),
        }
    }

    /// The internal API's gate (buntime.md §4.1): `path` is relative to the API base. A key is
    /// required once the root key is set or any key was ever created; a generated key needs the
    /// route's permission; without a key, state-changing calls need a same-host `Origin`, and
    /// no call is answered for a worker (`conn` is the request's connection; see
    /// [`Auth::with_app_caller_check`]).
    ///
    /// # Errors
    /// 401 `AUTH_REQUIRED` and the key errors of [`Auth::identify_key`]; 403
    /// `PERMISSION_DENIED`, `ORIGIN_REQUIRED`, `ORIGIN_MISMATCH`, `API_NOT_OPEN_TO_APPS`.
    pub async fn authorize_api(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        authority: Option<&str>,
        conn: Option<Connection>,
    ) -> Result<Option<Identity>, Error> {
        let requirement = api_rules::requirement(method, path);
        if requirement == Requirement::Public {
            return Ok(None);
        }
        let identity = match presented(headers) {
            Presented::Nothing => None,
            // Tokens are for apps; on the internal API only keys count.
            Presented::Key(k, _) | Presented::Token(k) => Some(self.identify_key(k).await?),
        };
        let Some(identity) = identity else {
            if self.root_key.is_some() || self.keys.any_exist().await? {
                return Err(unauthorized(
                    "AUTH_REQUIRED",
                    "this API needs a key: send X-API-Key or Authorization: Bearer <key>",
                ));
            }
            self.refuse_apps(conn, headers).await?;
            if api_rules::is_state_changing(method) {
                api_rules::check_origin(headers, authority)?;
            }
            return Ok(None);
        };
        let allowed = match requirement {
            Requirement::Public | Requirement::AnyKey => true,
            Requirement::Permission(p) => identity.has_permission(p),
            Requirement::Admin => identity.is_admin(),
        };
        if !allowed {
            let needed = match requirement {
                Requirement::Permission(p) => p,
                _ => "admin",
            };
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                format!("missing permission: {needed}"),
            )
            .with_data(json!({ "permission": needed, "role": identity.roles.first() })));
        }
        Ok(Some(identity))
    }

    /// While the API is open (no key exists), a worker's call is refused, reads included: an
    /// app could otherwise create the first admin key, or read what other apps run and what
    /// their clients ask (`/api/workers`, `/gateway/api` logs). The operator opens the API to an
    /// app by giving it a key.
    async fn refuse_apps(&self, conn: Option<Connection>, headers: &HeaderMap) -> Result<(), Error> {
        let verdict = if headers.contains_key(marina_core::headers::FROM_APP) {
            Some("a wasm app's outgoing request".to_string())
        } else if let (Some(check), Some(conn)) = (&self.app_callers, conn) {
            let check = Arc::clone(check);
            tokio::task::spawn_blocking(move || check(conn))
                .await
                .unwrap_or_else(|_| Some("the check of the caller failed".into()))
        } else {
            None
        };
        let peer = conn.map(|c| c.peer.to_string());
        match verdict {
            None => Ok(()),
            Some(why) => Err(Error::new(
                StatusCode::FORBIDDEN,
                "API_NOT_OPEN_TO_APPS",
                format!(
                    "the internal API is not open to apps: this request comes from a worker ({why}). It is open without a key only until a key exists; to let an app use it, set RUNTIME_ROOT_KEY or create a key (marina keys create) and give the app that key"
                ),
            )
            .with_data(json!({ "peer": peer }))),
        }
    }

    /// The gate of a path that may be an app route ([`Auth::check_request`] has removed
    /// `x-identity` from the request already). Without JWT configuration nothing else happens on an app route: apps keep
    /// their own `Authorization` schemes. With it, every route not in the app's `publicRoutes`
    /// needs a valid JWT (or a marina key); on a public route valid credentials still yield an
    /// identity and bad ones are ignored. On success a marina key is removed from the request
    /// so that the worker never sees it (a JWT stays: apps may want the raw token); the server
    /// sends the identity as `x-identity`. A path that is no app is [`Destination::Other`].
    ///
    /// `route` says which: it is asked only when the answer changes the outcome (no valid
    /// credential, a key to remove, no JWT configuration), because finding the app and its
    /// `publicRoutes` is a registry lookup, and a request with a valid token needs neither.
    ///
    /// # Errors
    /// 401 `AUTH_REQUIRED`, `TOKEN_*`, `API_KEY_*`; 400 `PUBLIC_ROUTE_INVALID` for a manifest
    /// pattern that does not compile; 503 `JWKS_UNAVAILABLE`.
    async fn authorize_app(
        &self,
        route: &AppRouteFn<'_>,
        method: &Method,
        headers: &mut HeaderMap,
    ) -> Result<Option<Arc<Identity>>, Error> {
        let Some(jwt) = &self.jwt else {
            // Only a marina key can identify anyone then, and only off app routes.
            return Ok(match presented(headers) {
                Presented::Key(..) if matches!(route()?, AppRoute::NotAnApp) => {
                    Box::pin(self.identify_any(headers)).await
                }
                _ => None,
            });
        };
        // A CORS preflight never carries credentials (Fetch standard); the gateway answers it.
        if method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return Ok(None);
        }
        let (result, source) = match presented(headers) {
            Presented::Nothing => (
                Err(unauthorized("AUTH_REQUIRED", "this route needs a bearer token: Authorization: Bearer <JWT>")),
                None,
            ),
            Presented::Key(k, source) => (Box::pin(self.identify_key(k)).await.map(Arc::new), Some(source)),
            Presented::Token(t) => (jwt.identify(t).await, None),
        };
        match result {
            Ok(identity) => {
                if let Some(source) = source
                    && matches!(route()?, AppRoute::App { .. })
                {
                    headers.remove(match source {
                        KeySource::XApiKey => marina_core::headers::X_API_KEY,
                        KeySource::Bearer => header::AUTHORIZATION,
                    });
                }
                Ok(Some(identity))
            }
            Err(e) => match route()? {
                AppRoute::NotAnApp => Ok(None),
                AppRoute::App { key, public_routes, path }
                    if e.status() == StatusCode::UNAUTHORIZED
                        && self.public_routes.get(key, public_routes)?.is_public(method, path) =>
                {
                    Ok(None)
                }
                AppRoute::App { .. } => Err(e),
            },
        }
    }

    /// Valid credentials' identity, if any; bad ones are ignored (routes where credentials are
    /// optional).
    async fn identify_any(&self, headers: &HeaderMap) -> Option<Arc<Identity>> {
        match presented(headers) {
            Presented::Nothing => None,
            Presented::Key(k, _) => self.identify_key(k).await.ok().map(Arc::new),
            Presented::Token(t) => match &self.jwt {
                Some(jwt) => jwt.identify(t).await.ok(),
                None => None,
            },
        }
    }

    /// The identity of a remembered, still valid JWT on a route that is not the internal API —
    /// [`Auth::check_request`]'s answer for such a request, found without waiting: with JWT
    /// verification on, a valid token is accepted on every app route and identifies its caller
    /// elsewhere, and nothing is removed from the request (apps may want the raw token). `None`
    /// means "ask [`Auth::check_request`]" (no JWT configuration, no token, a preflight, a token
    /// not remembered). The caller removes a client-sent `x-identity` either way.
    ///
    /// Most requests of a signed-in client are this case, and answering it outside the async
    /// path (no route look-up closure, no nested futures) was ~200 instructions per request
    /// under callgrind (`bench/gateway.sh` set-up).
    ///
    /// The bearer value is looked up as it came, without telling a token from a key first
    /// ([`presented`]'s text check and dot count were ~430 instructions per request): only
    /// verified tokens are remembered, so a key or anything else is simply not found and goes
    /// the full way. An `X-API-Key` header, which [`presented`] puts before a bearer value,
    /// goes the full way too.
    pub fn remembered_token(&self, method: &Method, headers: &HeaderMap) -> Option<Arc<Identity>> {
        let jwt = self.jwt.as_ref()?;
        if method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        if headers.contains_key(marina_core::headers::X_API_KEY) {
            return None;
        }
        jwt.remembered(bearer_value(headers.get(header::AUTHORIZATION)?)?)
    }

    /// Everything authentication does for one request, whatever its destination: remove a
    /// client-sent `x-identity`, then gate the internal API ([`Auth::authorize_api`]) or an app
    /// ([`Auth::authorize_app`]). Elsewhere (plugin routes, the shell) credentials are optional:
    /// valid ones yield an identity (for rate limits by identity), bad ones are left to whatever
    /// answers there. `authority` is the request's `Host` (for the Origin check).
    ///
    /// # Errors
    /// As [`Auth::authorize_api`] and [`Auth::authorize_app`].
    pub async fn check_request(
        &self,
        destination: Destination<'_>,
        method: &Method,
        headers: &mut HeaderMap,
        authority: Option<&str>,
        conn: Option<Connection>,
    ) -> Result<Option<Arc<Identity>>, Error> {
        identity::strip_incoming(headers);
        match destination {
            // The internal API's gate and key look-ups wait on the store: boxed, so the future of
            // every request (a remembered token's is ready at once) stays small to create.
            Destination::Api { path } => {
                Ok(Box::pin(self.authorize_api(method, path, headers, authority, conn)).await?.map(Arc::new))
            }
            Destination::App { route } => self.authorize_app(route, method, headers).await,
            Destination::Other => Ok(Box::pin(self.identify_any(headers)).await),
        }
    }
}

/// Finds the app a path is for, asked only when it matters ([`Auth::authorize_app`]).
pub type AppRouteFn<'a> = dyn Fn() -> Result<AppRoute<'a>, Error> + Send + Sync + 'a;

/// What [`AppRouteFn`] found.
#[derive(Debug, Clone, Copy)]
pub enum AppRoute<'a> {
    /// The path is no app's (a plugin route, the shell, a 404): credentials are optional.
    NotAnApp,
    /// An app version's route.
    App {
        /// `name@version`, for the compiled-routes cache.
        key: &'a str,
        /// The manifest's `publicRoutes`.
        public_routes: &'a RouteMap,
        /// The app-relative path as on the wire.
        path: &'a str,
    },
}

/// Where a request is going, as far as authentication cares.
#[derive(Clone, Copy)]
pub enum Destination<'a> {
    /// The internal API; `path` is relative to its base (`/keys/3`).
    Api {
        /// The path below the API base.
        path: &'a str,
    },
    /// A path that may be an app's: `route` finds out, when asked ([`Auth::authorize_app`]).
    App {
        /// Which app route, if any.
        route: &'a AppRouteFn<'a>,
    },
    /// Plugin routes, the shell, marina's own pages.
    Other,
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn h(name: &'static str, v: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_static(v));
        m
    }

    #[test]
    fn credentials_are_read_like_buntime() {
        assert_eq!(presented(&HeaderMap::new()), Presented::Nothing);
        assert_eq!(presented(&h("x-api-key", "btk_x")), Presented::Key("btk_x", KeySource::XApiKey));
        assert_eq!(presented(&h("authorization", "Bearer btk_a.b.c")), Presented::Key("btk_a.b.c", KeySource::Bearer));
        assert_eq!(presented(&h("authorization", "bearer a.b.c")), Presented::Token("a.b.c"));
        assert_eq!(
            presented(&h("authorization", "Bearer root-secret")),
            Presented::Key("root-secret", KeySource::Bearer)
        );
        assert_eq!(presented(&h("authorization", "Basic dXNlcg==")), Presented::Nothing);
        assert_eq!(presented(&h("authorization", "Bearer ")), Presented::Nothing);
    }

    #[test]
    fn a_bearer_value_is_read_as_presented_reads_it() {
        let value = |v: &'static str| bearer_value(&HeaderValue::from_static(v)).map(<[u8]>::to_vec);
        assert_eq!(value("Bearer a.b.c").as_deref(), Some(&b"a.b.c"[..]));
        assert_eq!(value("  bearer   a.b.c  ").as_deref(), Some(&b"a.b.c"[..]));
        assert_eq!(value("BEARER btk_x").as_deref(), Some(&b"btk_x"[..]), "a key is not found among tokens later");
        for other in ["Basic dXNlcg==", "Bearer ", "Bearer", "Bearera.b.c", ""] {
            assert_eq!(value(other), None, "{other:?}");
        }
    }
}
