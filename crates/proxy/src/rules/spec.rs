//! A proxy rule as written: in an app manifest, in a plugin's configuration, or in an API body.
//!
//! The field names and defaults are Buntime's (§6.3 of the reference), so rule JSON written for
//! Buntime's `/redirects/api/rules` works unchanged. Unknown fields are refused: a misspelt
//! `changeorigin` silently ignored is a rule that does something else than its author thinks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every field of a rule. `None` means "not given" and keeps Buntime's default; the JSON the
/// API returns leaves such fields out, as Buntime does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// Manifest rules may name themselves; the API assigns a UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// API rules only: lower comes first. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<i64>,
    /// A regular expression matched against the request path (unanchored unless it anchors itself).
    #[serde(default)]
    pub pattern: String,
    /// `http(s)://host[:port][/path]` (`ws(s)://` is accepted as the same).
    #[serde(default)]
    pub target: String,
    /// The upstream path, with `$1…$n`, `${n}`, `$name`, `${name}`; absent = the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Send the target's host as `Host` (and `Origin`, when the client sent one). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_origin: Option<bool>,
    /// Verify the target's TLS certificate. Default true; false accepts any certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Headers set on the upstream request (replacing the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Proxy WebSocket upgrades too. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<bool>,
    /// Inject `<base href="…">` into HTML responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Rewrite root-relative `src="/`, `href="/` in HTML responses to `./`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_paths: Option<bool>,
    /// Paths auth plugins skip (globs; an array for every method or a map method → array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_routes: Option<PublicRoutesSpec>,
    /// Accepted (GET returns it, clients send rules back) and ignored: marina decides.
    #[serde(default, skip_serializing)]
    pub readonly: Option<bool>,
}

/// `publicRoutes`: `["/a/*"]` or `{"ALL": [...], "GET": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PublicRoutesSpec {
    /// Every method.
    All(Vec<String>),
    /// Per method (`ALL` for every method).
    ByMethod(BTreeMap<String, Vec<String>>),
}

impl RuleSpec {
    /// `enabled`, defaulted.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// `order`, defaulted.
    pub fn order(&self) -> i64 {
        self.order.unwrap_or(0)
    }
}
