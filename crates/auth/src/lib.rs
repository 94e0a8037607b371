//! Authentication for marina (issue 9, build item 3): who is calling, and may they.
//!
//! - **Keys** ([`keys`]): the root key (`RUNTIME_ROOT_KEY`, or Buntime's `RUNTIME_MASTER_KEY`)
//!   and generated `btk_` keys with Buntime's roles and permissions, kept as SHA-256 digests in
//!   marina's own database (SQLite or PostgreSQL, through `marina_store`), compared in constant
//!   time, with expiry and revocation. The secret is shown once, at creation.
//! - **The internal API's gate** ([`Auth::authorize_api`], [`api_rules`]): a key is required once
//!   the root key is set or any key was ever created; generated keys need the route's
//!   permission; keyless state-changing calls need a same-host `Origin` (CSRF).
//! - **JWT bearer tokens for app routes** ([`jwt`]): HS256/384/512, RS*, PS*, ES256/384 and EdDSA
//!   via `jsonwebtoken`, from a secret, a PEM key or a JWKS URL (cached, refetched on rotation);
//!   `alg: none` and HS/RS confusion refused; issuer, audience, expiry, not-before, leeway.
//!   Routes in an app's `publicRoutes` ([`public_routes`]) are exempt.
//! - **Identity** ([`identity`]): the verified caller, set in the request context (so later
//!   plugins, such as a rate limit by identity, see it) and forwarded to workers as `x-identity`
//!   JSON; a client-sent `x-identity` is always removed.
//! - **The pipeline phase** lives in `marina_plugins::auth` (the plugins layer sits above this
//!   crate): built in, always loaded first, calling [`Auth::check_request`].
//!
//! A valid key never skips anything else: rate limits and other plugins still apply (Buntime's
//! master key skipped every hook; marina does not copy that).

#![warn(missing_docs)]

pub mod api_rules;
pub mod challenge;
pub mod config;
mod guard;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod keys_api;
pub mod public_routes;

pub use config::{AuthConfig, JwtConfig};
pub use guard::{AppCallerCheck, AppRoute, AppRouteFn, Auth, Connection, Destination, KeySource, Presented, presented};
pub use identity::{IDENTITY_HEADER, Identity, IdentityKind};
