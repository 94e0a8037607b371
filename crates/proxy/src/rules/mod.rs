//! Proxy rules: validation, the compiled rule, and the rule set that matches a path.
//!
//! A rule's `pattern` is compiled by the `regex` crate, whose engines run in time linear in the
//! pattern and the path (no backtracking): a pattern like `(a+)+$` cannot stall a request, so
//! "catastrophic backtracking" is impossible by construction. What the crate does not bound is
//! the size of the compiled program (`a{1000}{1000}`), so patterns over [`MAX_PATTERN_LEN`]
//! characters or [`REGEX_SIZE_LIMIT`] compiled bytes are refused. JavaScript-only syntax
//! (look-around, backreferences) is refused with the reason, never silently reinterpreted.
//!
//! All enabled rules of a [`RuleSet`] are compiled into one [`RegexSet`], so a request runs one
//! automaton over its path whatever the number of rules; only the winning rule's own regex runs
//! again, and only when its rewrite needs the capture groups.

mod public;
mod rewrite;
mod spec;

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use marina_core::Error;
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde_json::json;

pub use public::PublicRoutes;
pub use rewrite::Template;
pub use spec::{PublicRoutesSpec, RuleSpec};

use crate::html::HtmlRewrite;
use crate::policy::TargetPolicy;

/// Longest `pattern` accepted, in characters.
pub const MAX_PATTERN_LEN: usize = 2048;
/// Largest compiled program of one `pattern`, in bytes (the `regex` crate's `size_limit`).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest `target`, `rewrite`, `base` or `name`.
const MAX_TEXT_LEN: usize = 2048;
/// Headers a rule may not set: they describe the connection, not the request.
const FORBIDDEN_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// A validation failure, naming the field (`pattern`, `headers.x-a`, `publicRoutes.GET[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The field path.
    pub field: String,
    /// What is wrong, quoting what was given.
    pub message: String,
}

impl RuleError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error under a prefix: `proxy[2]` + `pattern` → `proxy[2].pattern`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() { prefix.to_string() } else { format!("{prefix}.{}", self.field) };
        self
    }
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl From<RuleError> for Error {
    fn from(e: RuleError) -> Self {
        Error::bad_request("INVALID_PROXY_RULE", e.to_string()).with_data(json!({ "field": e.field }))
    }
}

/// Where a rule sends requests.
#[derive(Debug, Clone)]
pub struct RuleTarget {
    /// `http` or `https` (`ws`/`wss` in the rule are read as these).
    pub scheme: Scheme,
    /// `host[:port]` as written.
    pub authority: Authority,
    /// The port, explicit or the scheme's default.
    pub port: u16,
    /// The target's path without its trailing `/` ("" for none); rewritten paths go under it.
    pub path: String,
    /// `Host` under `changeOrigin`.
    pub host_header: HeaderValue,
    /// `Origin` under `changeOrigin`.
    pub origin_header: HeaderValue,
}

impl RuleTarget {
    /// Parses and checks `target` against the SSRF policy.
    pub fn parse(target: &str, policy: &TargetPolicy) -> Result<Self, RuleError> {
        let bad = |m: String| RuleError::new("target", m);
        if target.is_empty() {
            return Err(bad("is required (an http:// or https:// URL)".into()));
        }
        if target.len() > MAX_TEXT_LEN {
            return Err(bad(format!("is longer than {MAX_TEXT_LEN} characters")));
        }
        if target.contains('#') {
            return Err(bad(format!("'{target}' has a fragment; a target is scheme://host[:port][/path]")));
        }
        let uri = Uri::try_from(target).map_err(|e| bad(format!("'{target}' is not a URL: {e}")))?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http" | "ws") => Scheme::HTTP,
            Some("https" | "wss") => Scheme::HTTPS,
            Some(other) => return Err(bad(format!("scheme '{other}' is not http, https, ws or wss"))),
            None => return Err(bad(format!("'{target}' has no scheme; write http://{target}"))),
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad(format!("'{target}' has no host")))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the target URL are not supported; set an Authorization header".into()));
        }
        if authority.host().is_empty() {
            return Err(bad(format!("'{target}' has no host")));
        }
        if uri.query().is_some() {
            return Err(bad(format!("'{target}' has a query string; the request's query is forwarded")));
        }
        let port = authority.port_u16().unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
        if let Some(why) = policy.refuse_host(authority.host(), port) {
            return Err(bad(format!("'{target}' is refused: {why}")));
        }
        let path = uri.path().trim_end_matches('/').to_string();
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|e| bad(e.to_string()))?;
        let origin_header =
            HeaderValue::from_str(&format!("{scheme}://{authority}")).map_err(|e| bad(e.to_string()))?;
        Ok(Self { scheme, authority, port, path, host_header, origin_header })
    }
}

/// A validated, compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `static-<i>` (or the manifest's own id) for manifest rules, a UUID for API rules.
    pub id: String,
    /// Manifest rules cannot be changed through the API.
    pub readonly: bool,
    /// The rule as written (the API returns it).
    pub spec: RuleSpec,
    /// Where it sends requests.
    pub target: RuleTarget,
    regex: Regex,
    rewrite: Option<Template>,
    headers: Vec<(HeaderName, HeaderValue)>,
    public: Option<PublicRoutes>,
    html: Option<HtmlRewrite>,
}

impl Rule {
    /// Validates `spec` and compiles it. Every error names its field.
    pub fn compile(id: String, spec: RuleSpec, readonly: bool, policy: &TargetPolicy) -> Result<Self, RuleError> {
        if let Some(name) = &spec.name
            && name.len() > MAX_TEXT_LEN
        {
            return Err(RuleError::new("name", format!("is longer than {MAX_TEXT_LEN} characters")));
        }
        let regex = compile_pattern(&spec.pattern)?;
        let target = RuleTarget::parse(&spec.target, policy)?;
        let rewrite = match &spec.rewrite {
            None => None,
            Some(r) if r.len() > MAX_TEXT_LEN => {
                return Err(RuleError::new("rewrite", format!("is longer than {MAX_TEXT_LEN} characters")));
            }
            Some(r) => Some(Template::parse(r, &regex).map_err(|m| RuleError::new("rewrite", m))?),
        };
        let mut headers = Vec::new();
        for (name, value) in spec.headers.iter().flatten() {
            let field = format!("headers.{name}");
            let hname = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| RuleError::new(&field, format!("'{name}' is not a valid header name")))?;
            if FORBIDDEN_HEADERS.contains(&hname.as_str()) {
                let hint = if hname == http::header::HOST { " (use changeOrigin)" } else { "" };
                return Err(RuleError::new(
                    &field,
                    format!("'{name}' is managed by the proxy and cannot be set{hint}"),
                ));
            }
            let hvalue = HeaderValue::from_str(value)
                .map_err(|_| RuleError::new(&field, "is not a valid header value (control characters?)"))?;
            headers.push((hname, hvalue));
        }
        if let Some(base) = &spec.base
            && (base.len() > MAX_TEXT_LEN
                || base.chars().any(|c| matches!(c, '"' | '<' | '>' | '\'') || c.is_control()))
        {
            return Err(RuleError::new("base", format!("'{base}' cannot go into an HTML attribute")));
        }
        let public = match &spec.public_routes {
            Some(p) => Some(PublicRoutes::compile(p).map_err(|(f, m)| RuleError::new(f, m))?),
            None => None,
        };
        let html = HtmlRewrite::new(spec.base.as_deref(), spec.relative_paths.unwrap_or(false));
        Ok(Self { id, readonly, spec, target, regex, rewrite, headers, public, html })
    }

    /// Whether the rule takes requests (`enabled`, default true).
    pub fn enabled(&self) -> bool {
        self.spec.is_enabled()
    }

    /// `ws`, default true.
    pub fn ws(&self) -> bool {
        self.spec.ws.unwrap_or(true)
    }

    /// `secure`, default true.
    pub fn secure(&self) -> bool {
        self.spec.secure.unwrap_or(true)
    }

    /// `changeOrigin`, default false.
    pub fn change_origin(&self) -> bool {
        self.spec.change_origin.unwrap_or(false)
    }

    /// The headers the rule sets.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// What `base` and `relativePaths` do to HTML answers (`None`: neither is set).
    pub fn html(&self) -> Option<&HtmlRewrite> {
        self.html.as_ref()
    }

    /// Whether auth plugins should let `path` through without credentials.
    pub fn is_public(&self, path: &str, method: &str) -> bool {
        self.public.as_ref().is_some_and(|p| p.is_public(path, method))
    }

    /// Whether the pattern matches `path` (the set decides in the hot path; this is for tools).
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }

    /// The path to request upstream, without the target's path: the rewrite expanded, or the
    /// request path as it came.
    pub fn rewritten_path(&self, path: &str) -> String {
        let mut out = String::new();
        self.push_rewritten_path(path, &mut out);
        out
    }

    /// [`Rule::rewritten_path`], appended to `out`.
    fn push_rewritten_path(&self, path: &str, out: &mut String) {
        match &self.rewrite {
            None => out.push_str(path),
            Some(t) if !t.uses_groups() => t.constant_into(out),
            Some(t) => match self.regex.captures(path) {
                Some(caps) => t.expand_into(&caps, out),
                // The set said it matched; the same automaton cannot disagree.
                None => t.constant_into(out),
            },
        }
    }

    /// The absolute upstream URI: target + its path + the rewritten path + the query.
    ///
    /// The path part always starts with `/`: a rewrite such as `$1` fills it from the request,
    /// and `http://backend` followed by `@evil.example/x` would otherwise parse as userinfo
    /// and another host, sending the request wherever the client chose. (The URI is put
    /// together from the target's parsed scheme and authority and one path-and-query string,
    /// so the request cannot move the host in any case; formatting the whole URI and parsing
    /// it back cost ~3,900 instructions a request, callgrind on `bench/proxy.sh`.)
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, Error> {
        let mut pq = String::with_capacity(self.target.path.len() + path.len() + query.map_or(0, str::len) + 16);
        pq.push_str(&self.target.path);
        let at = pq.len();
        self.push_rewritten_path(path, &mut pq);
        if !(self.target.path.starts_with('/') || pq[at..].starts_with('/')) {
            pq.insert(0, '/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.target.scheme.clone());
        parts.authority = Some(self.target.authority.clone());
        parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|e| self.bad_rewrite(path, query, &e))?);
        Uri::from_parts(parts).map_err(|e| self.bad_rewrite(path, query, &e))
    }

    #[cold]
    fn bad_rewrite(&self, path: &str, query: Option<&str>, e: &dyn std::fmt::Display) -> Error {
        let rewritten = self.rewritten_path(path);
        let slash = if self.target.path.starts_with('/') || rewritten.starts_with('/') { "" } else { "/" };
        let mut s =
            format!("{}://{}{slash}{}{}", self.target.scheme, self.target.authority, self.target.path, rewritten);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        Error::bad_gateway(
            "PROXY_BAD_REWRITE",
            format!("rule '{}' rewrote the path into '{s}', which is not a URI: {e}", self.id),
        )
    }
}

fn compile_pattern(pattern: &str) -> Result<Regex, RuleError> {
    let bad = |m: String| RuleError::new("pattern", m);
    if pattern.is_empty() {
        return Err(bad("is required (a regular expression matched against the path)".into()));
    }
    if pattern.chars().count() > MAX_PATTERN_LEN {
        return Err(bad(format!("is longer than {MAX_PATTERN_LEN} characters")));
    }
    RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build().map_err(|e| match e {
        regex::Error::CompiledTooBig(limit) => bad(format!(
            "compiles to more than {limit} bytes; use fewer or smaller repetitions (e.g. a{{1000}}{{1000}})"
        )),
        e => {
            // The crate's message draws a caret under the pattern over several lines; keep the
            // one line that says what is wrong.
            let text = e.to_string();
            let why = text.lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or(&text).trim();
            bad(format!(
                "'{pattern}' is not a valid regular expression: {why} (marina's regex engine runs in linear time and has no look-around or backreferences)"
            ))
        }
    })
}

/// What a request path matched.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The winning rule.
    pub rule: Arc<Rule>,
}

/// Rules in match order with one compiled set over the enabled ones.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    set: RegexSet,
    /// Index in `set` → index in `rules`.
    enabled: Vec<usize>,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self { rules: Vec::new(), set: RegexSet::empty(), enabled: Vec::new() }
    }
}

impl RuleSet {
    /// Manifest rules first (in their order), then `dynamic` by `order` (ties keep their
    /// given order); the first enabled rule whose pattern matches wins.
    pub fn new(manifest: Vec<Arc<Rule>>, mut dynamic: Vec<Arc<Rule>>) -> Result<Self, RuleError> {
        dynamic.sort_by_key(|r| r.spec.order());
        let mut rules = manifest;
        rules.extend(dynamic);
        let enabled: Vec<usize> = (0..rules.len()).filter(|&i| rules[i].enabled()).collect();
        let limit = REGEX_SIZE_LIMIT.saturating_mul(enabled.len().max(1)).min(256 << 20);
        let set = RegexSetBuilder::new(enabled.iter().map(|&i| rules[i].spec.pattern.as_str()))
            .size_limit(limit)
            .build()
            .map_err(|e| RuleError::new("pattern", format!("the rules together do not compile: {e}")))?;
        Ok(Self { rules, set, enabled })
    }

    /// The first enabled rule matching `path`.
    pub fn find(&self, path: &str) -> Option<Matched> {
        if self.enabled.is_empty() {
            return None;
        }
        let first = self.set.matches(path).into_iter().next()?;
        Some(Matched { rule: self.rules[self.enabled[first]].clone() })
    }

    /// Every rule in match order (disabled ones included).
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any enabled rule lists `path` as public for `method`.
    pub fn is_public(&self, path: &str, method: &str) -> bool {
        self.rules.iter().any(|r| r.enabled() && r.is_public(path, method))
    }
}

#[cfg(test)]
mod tests;
