//! `injectBase` / `envPrefix` injection into HTML responses (buntime.md §3.6).
//!
//! Buntime post-processes every HTML response of an app: with `injectBase` a
//! `<base href="{x-base}/">` goes right after `<head>`, so an SPA built for `/` keeps working
//! under `/todo@1/`; env vars matching `envPrefix` go into `<script>window.__env__={...}</script>`
//! before `</head>`, so the same build can be configured per deployment. Buntime escaped only
//! `</script>`; here the JSON is escaped so that no value can close the script or open a
//! comment (`<`, `>`, `&`, U+2028, U+2029 become `\uXXXX`), and the base is attribute-escaped.
//!
//! Where the markers are missing the insertion points fall back in order (`<head ...>` → after
//! `<html ...>` → after `<!doctype ...>` → start of the document), so the tags are never lost
//! and never land before the doctype (which would switch browsers into quirks mode). Markers
//! inside comments or scripts are not recognised as such; the first textual match wins.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use marina_core::{Body, Error};

use marina_apps::manifest::AppConfig;

/// Worker HTML bodies larger than this pass through without injection: buffering them would
/// cost memory per request and delay the first byte for little benefit.
pub const MAX_INJECT_BODY: usize = 8 * 1024 * 1024;

/// What to inject into an app's HTML: the `<base>` href and the public env vars.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Injection {
    /// `Some(x-base)` when `injectBase` is on; the href becomes `{x-base}/`.
    base: Option<String>,
    /// The env vars whose names match `envPrefix`; empty = no script.
    env: BTreeMap<String, String>,
}

impl Injection {
    /// An injection from its parts. `base` is the `x-base` value (such as `/todo@1`), or
    /// `None` for no `<base>` tag.
    pub fn new(base: Option<String>, env: BTreeMap<String, String>) -> Self {
        Self { base, env }
    }

    /// The injection an app's manifest asks for, with `x_base` as the base of this request.
    /// `None` when there is nothing to inject (`injectBase: false` and no env var matching
    /// `envPrefix`), so callers can skip buffering altogether.
    pub fn from_config(config: &AppConfig, x_base: &str) -> Option<Self> {
        let env: BTreeMap<String, String> = config
            .env
            .iter()
            .filter(|(name, _)| config.env_prefix.iter().any(|p| !p.is_empty() && name.starts_with(p.as_str())))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let base = config.inject_base.then(|| x_base.to_string());
        let inj = Self { base, env };
        (!inj.is_empty()).then_some(inj)
    }

    /// The same injection for another request's `x-base`. Only replaces the href: an injection
    /// without a `<base>` tag stays without one.
    pub fn with_base(&self, x_base: &str) -> Self {
        Self { base: self.base.as_ref().map(|_| x_base.to_string()), env: self.env.clone() }
    }

    /// Whether a `<base>` tag is injected.
    pub fn injects_base(&self) -> bool {
        self.base.is_some()
    }

    /// The `x-base` the `<base>` tag is built from, if any.
    pub fn base(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// The env vars that go into `window.__env__`.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// True when injecting would not change a document.
    pub fn is_empty(&self) -> bool {
        self.base.is_none() && self.env.is_empty()
    }

    /// A hash of everything that changes the output; part of the ETag of injected documents,
    /// so that a new base or env value is never answered with 304 for the old bytes.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.base.hash(&mut h);
        self.env.hash(&mut h);
        h.finish()
    }

    /// The `<base href="...">` tag, or empty.
    fn base_tag(&self) -> String {
        match &self.base {
            None => String::new(),
            Some(base) => format!("<base href=\"{}/\">", escape_attr(base.trim_end_matches('/'))),
        }
    }

    /// The `<script>window.__env__=...</script>` tag, or empty.
    fn env_tag(&self) -> String {
        if self.env.is_empty() {
            return String::new();
        }
        // A map of strings always serialises.
        let json = serde_json::to_string(&self.env).unwrap_or_else(|_| "{}".into());
        format!("<script>window.__env__={}</script>", escape_script_json(&json))
    }
}

/// Escape text for a double-quoted HTML attribute.
pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Make JSON safe inside `<script>`: these characters only occur inside JSON strings, where
/// `\uXXXX` means the same, so the value is unchanged for JavaScript while `</script>`,
/// `<!--` and the JS line separators can no longer appear.
pub fn escape_script_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Find `needle` (ASCII, lower case) in `hay`, case-insensitively, from `from`.
fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// The end (index after `>`) of the first start tag `<{name}` that is really that tag
/// (followed by `>`, `/` or whitespace, so `<header>` is not `<head>`), skipping quoted
/// attribute values.
fn start_tag_end(html: &[u8], name: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(at) = find_ci(html, name, from) {
        let next = html.get(at + name.len()).copied();
        if matches!(next, Some(b'>' | b'/' | b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')) {
            let mut quote = None;
            for (i, &b) in html.iter().enumerate().skip(at + name.len()) {
                match (quote, b) {
                    (None, b'"' | b'\'') => quote = Some(b),
                    (Some(q), b) if b == q => quote = None,
                    (None, b'>') => return Some((at, i + 1)),
                    _ => {}
                }
            }
            return None;
        }
        from = at + 1;
    }
    None
}

/// Where a tag that belongs in `<head>` can go when there is no `<head>`: after `<html>`, else
/// after the doctype, else at the start.
fn head_fallback(html: &[u8]) -> usize {
    if let Some((_, end)) = start_tag_end(html, b"<html") {
        return end;
    }
    if let Some(at) = find_ci(html, b"<!doctype", 0)
        && let Some(gt) = html[at..].iter().position(|&b| b == b'>')
    {
        return at + gt + 1;
    }
    0
}

/// Inject the `<base>` tag and the env script into an HTML document (see the module docs for
/// where they go). Returns the input unchanged when the injection is empty.
pub fn inject(html: &[u8], inj: &Injection) -> Bytes {
    if inj.is_empty() {
        return Bytes::copy_from_slice(html);
    }
    let base_tag = inj.base_tag();
    let env_tag = inj.env_tag();
    let head = start_tag_end(html, b"<head");
    let after_head = head.map(|(_, end)| end).unwrap_or_else(|| head_fallback(html));
    let before_close = find_ci(html, b"</head", after_head).unwrap_or(after_head);

    let mut out = BytesMut::with_capacity(html.len() + base_tag.len() + env_tag.len());
    out.extend_from_slice(&html[..after_head]);
    out.extend_from_slice(base_tag.as_bytes());
    out.extend_from_slice(&html[after_head..before_close]);
    out.extend_from_slice(env_tag.as_bytes());
    out.extend_from_slice(&html[before_close..]);
    out.freeze()
}

/// Whether a response's `Content-Type` is HTML.
pub fn is_html_content_type(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("text/html"))
        .unwrap_or(false)
}

/// Apply an injection to a worker's (non-static) response.
///
/// Only `text/html` bodies without a `Content-Encoding` (other than `identity`) and with a
/// status that carries a full document (not 1xx/204/206/304) are touched. The body is buffered
/// up to [`MAX_INJECT_BODY`]; a larger body (announced or discovered while reading) passes
/// through unchanged, with the bytes already read put back in front. On success the
/// `Content-Length` is corrected and the `ETag` dropped, because the worker's validator no
/// longer describes these bytes.
///
/// # Errors
/// A body that fails mid-read is a 502 `WORKER_BODY_ERROR`.
pub async fn inject_response(resp: Response<Body>, inj: &Injection) -> Result<Response<Body>, Error> {
    inject_response_capped(resp, inj, MAX_INJECT_BODY).await
}

async fn inject_response_capped(resp: Response<Body>, inj: &Injection, cap: usize) -> Result<Response<Body>, Error> {
    let status = resp.status();
    let headers = resp.headers();
    let encoded = headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.to_str().map(|s| s.trim().eq_ignore_ascii_case("identity")).unwrap_or(false));
    let announced_too_big = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > cap as u64);
    if inj.is_empty()
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED)
        || encoded
        || announced_too_big
        || !is_html_content_type(headers.get(CONTENT_TYPE))
    {
        return Ok(resp);
    }

    let (mut parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                return Err(Error::bad_gateway(
                    "WORKER_BODY_ERROR",
                    "the app's HTML response body failed while being read",
                )
                .with_source(err));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                if buf.len() > cap {
                    // Too big after all: give back what was read, then the rest as it comes.
                    let head = futures_util::stream::iter([Ok(Frame::data(buf.freeze()))]);
                    let rest = http_body_util::BodyStream::new(body);
                    let chained = futures_util::StreamExt::chain(head, rest);
                    return Ok(Response::from_parts(
                        parts,
                        marina_core::body::boxed(http_body_util::StreamBody::new(chained)),
                    ));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }

    let out = inject(&buf, inj);
    parts.headers.remove(ETAG);
    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    let body = match trailers {
        None => marina_core::body::full(out),
        Some(t) => {
            let frames = [Ok::<_, marina_core::body::BoxError>(Frame::data(out)), Ok(Frame::trailers(t))];
            marina_core::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
        }
    };
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn s(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn base_goes_after_head_and_env_before_close() {
        let inj = Injection::new(Some("/todo@1".into()), env(&[("PUBLIC_A", "1")]));
        let out =
            s(inject(b"<!doctype html><html><HEAD lang=\"x>y\"><title>t</title></Head><body></body></html>", &inj));
        assert_eq!(
            out,
            "<!doctype html><html><HEAD lang=\"x>y\"><base href=\"/todo@1/\"><title>t</title>\
             <script>window.__env__={\"PUBLIC_A\":\"1\"}</script></Head><body></body></html>"
        );
    }

    #[test]
    fn header_is_not_head() {
        let inj = Injection::new(Some("/a".into()), BTreeMap::new());
        let out = s(inject(b"<html><header>x</header></html>", &inj));
        assert_eq!(out, "<html><base href=\"/a/\"><header>x</header></html>");
    }

    #[test]
    fn no_markers_never_goes_before_doctype() {
        let inj = Injection::new(None, env(&[("PUBLIC_A", "1")]));
        let out = s(inject(b"<!DOCTYPE html><p>hi", &inj));
        assert!(out.starts_with("<!DOCTYPE html><script>"), "{out}");
        let out = s(inject(b"plain", &inj));
        assert!(out.starts_with("<script>") && out.ends_with("plain"), "{out}");
    }

    #[test]
    fn base_and_env_are_escaped() {
        let inj = Injection::new(
            Some("/x\"><script>alert(1)</script>".into()),
            env(&[("PUBLIC_X", "</script><script>alert(1)</script>\u{2028}&<!--")]),
        );
        let out = s(inject(b"<head></head>", &inj));
        assert!(!out.contains("alert(1)</script>"), "{out}");
        assert_eq!(out.matches("</script>").count(), 1, "only our own closing tag: {out}");
        assert!(out.contains("href=\"/x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;/\""), "{out}");
        assert!(out.contains("\\u003c/script\\u003e"), "{out}");
        assert!(out.contains("\\u2028\\u0026\\u003c!--"), "{out}");
        // The escaped JSON still means the same value.
        let json = out.split("window.__env__=").nth(1).unwrap().split("</script>").next().unwrap();
        let back: BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        assert_eq!(back["PUBLIC_X"], "</script><script>alert(1)</script>\u{2028}&<!--");
    }

    #[test]
    fn trailing_slash_of_base_is_not_doubled() {
        let inj = Injection::new(Some("/todo/".into()), BTreeMap::new());
        assert_eq!(s(inject(b"<head>", &inj)), "<head><base href=\"/todo/\">");
        let inj = Injection::new(Some(String::new()), BTreeMap::new());
        assert_eq!(s(inject(b"<head>", &inj)), "<head><base href=\"/\">");
    }

    #[test]
    fn from_config_filters_by_prefix() {
        let mut cfg =
            AppConfig { env: env(&[("PUBLIC_A", "1"), ("VITE_B", "2"), ("SECRET", "no")]), ..AppConfig::default() };
        let inj = Injection::from_config(&cfg, "/app").unwrap();
        assert_eq!(inj.env().keys().collect::<Vec<_>>(), ["PUBLIC_A", "VITE_B"]);
        assert_eq!(inj.base(), None);
        cfg.env = env(&[("SECRET", "no")]);
        assert!(Injection::from_config(&cfg, "/app").is_none());
        cfg.inject_base = true;
        assert_eq!(Injection::from_config(&cfg, "/app").unwrap().base(), Some("/app"));
        assert_eq!(Injection::from_config(&cfg, "/app").unwrap().with_base("/b").base(), Some("/b"));
    }

    fn html_response(body: &'static str, extra: &[(&str, &str)]) -> Response<Body> {
        let mut b = Response::builder().header(CONTENT_TYPE, "text/html; charset=utf-8");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(marina_core::body::full(body)).unwrap()
    }

    async fn body_of(resp: Response<Body>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn response_injection_fixes_length_and_drops_etag() {
        let inj = Injection::new(Some("/a".into()), BTreeMap::new());
        let resp =
            inject_response(html_response("<head></head>", &[("etag", "\"x\""), ("content-length", "13")]), &inj)
                .await
                .unwrap();
        assert!(resp.headers().get(ETAG).is_none());
        assert_eq!(resp.headers()[CONTENT_LENGTH], "30");
        assert_eq!(body_of(resp).await, "<head><base href=\"/a/\"></head>");
    }

    #[tokio::test]
    async fn response_injection_skips_what_it_must_not_touch() {
        let inj = Injection::new(Some("/a".into()), BTreeMap::new());
        let gz = inject_response(html_response("<head>", &[("content-encoding", "gzip")]), &inj).await.unwrap();
        assert_eq!(body_of(gz).await, "<head>");
        let json = Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(marina_core::body::full("<head>"))
            .unwrap();
        assert_eq!(body_of(inject_response(json, &inj).await.unwrap()).await, "<head>");
        let mut partial = html_response("<head>", &[]);
        *partial.status_mut() = StatusCode::PARTIAL_CONTENT;
        assert_eq!(body_of(inject_response(partial, &inj).await.unwrap()).await, "<head>");
    }

    #[tokio::test]
    async fn oversized_bodies_pass_through_whole() {
        let inj = Injection::new(Some("/a".into()), BTreeMap::new());
        let chunks: Vec<Result<Frame<Bytes>, marina_core::body::BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"<head>0123"))), Ok(Frame::data(Bytes::from_static(b"456789")))];
        let body = marina_core::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(chunks)));
        let resp = Response::builder().header(CONTENT_TYPE, "text/html").header(ETAG, "\"e\"").body(body).unwrap();
        let out = inject_response_capped(resp, &inj, 8).await.unwrap();
        assert_eq!(out.headers()[ETAG], "\"e\"");
        assert_eq!(body_of(out).await, "<head>0123456789");
        let announced = html_response("<head>0123456789", &[("content-length", "16")]);
        assert_eq!(body_of(inject_response_capped(announced, &inj, 8).await.unwrap()).await, "<head>0123456789");
    }
}
