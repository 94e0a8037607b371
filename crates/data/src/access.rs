//! Who may use the data plugins (keyval, database), and on whose data.
//!
//! - A worker's token (`LIBSQL_AUTH_TOKEN`, see `marina_workers::tokens`) is an **app**
//!   caller: its own keyval namespace and its own database, nothing else.
//! - The root key or an admin API key (`marina_auth`) is an **admin** caller: any namespace
//!   or database, and the admin routes (tables, rows, query, tenants).
//! - Anything else is 401 (no usable credential) or 403 (a key without the admin role).

use http::{HeaderMap, StatusCode, header};
use marina_auth::{Auth, Presented, presented};
use marina_core::Error;
use marina_workers::WorkerTokens;
use std::sync::Arc;

/// A verified caller of a data plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The root key or an admin key.
    Admin,
    /// A worker of this app.
    App(String),
}

/// The credentials the data plugins accept.
#[derive(Clone)]
pub struct Access {
    /// Live worker tokens.
    pub tokens: WorkerTokens,
    /// API keys (none: only worker tokens are accepted).
    pub auth: Option<Arc<Auth>>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Access {
    /// Identify the caller.
    ///
    /// # Errors
    /// 401 `UNAUTHORIZED` without a usable credential; 403 `FORBIDDEN` for a non-admin key.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        if let Some(t) = bearer(headers).filter(|t| t.starts_with(marina_workers::tokens::TOKEN_PREFIX)) {
            return match self.tokens.verify(t) {
                Some(g) => Ok(Caller::App(g.app)),
                None => Err(Error::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "this worker token is not valid (its worker has stopped)",
                )),
            };
        }
        let Some(auth) = &self.auth else {
            return Err(Error::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send the worker's token as Authorization: Bearer",
            ));
        };
        match presented(headers) {
            Presented::Key(k, _) => {
                let id = auth.identify_key(k).await?;
                if id.is_admin() {
                    Ok(Caller::Admin)
                } else {
                    Err(Error::new(
                        StatusCode::FORBIDDEN,
                        "FORBIDDEN",
                        "this API key lacks the admin role that the data plugins need",
                    ))
                }
            }
            _ => Err(Error::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send a worker token or an admin API key (Authorization: Bearer or X-API-Key)",
            )),
        }
    }
}
