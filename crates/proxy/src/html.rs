//! `base` and `relativePaths`: rewriting HTML responses of a rule, as Buntime's proxy does.
//!
//! An app served by an upstream at `/` breaks when marina exposes it under `/cpanel/`: its
//! pages say `src="/app.js"`, which the browser asks of marina's root. Buntime's two rule
//! fields fix that together: `relativePaths` turns root-relative URLs into relative ones
//! (`/app.js` → `./app.js`), and `base` injects `<base href="/cpanel/">` so relative URLs
//! resolve under the prefix.
//!
//! Buntime buffered the whole page and ran regular expressions over it; here the page streams
//! through `lol_html` (Cloudflare's streaming HTML rewriter), so a large page is never held
//! in memory, attributes are rewritten only where they are attributes, and bytes leave as they
//! come. What is rewritten:
//! - `relativePaths`: the `href`, `src` and `action` attributes of any element except `<base>`
//!   whose value starts with one `/` (not `//`, which is protocol-relative); and, in inline
//!   `<script>` text, a single quote followed by one `/` (`'/api'` → `'./api'`), which is
//!   Buntime's rule for string literals in scripts.
//! - `base`: `<base href="{base}/">` as the first child of the first `<head>` (a page without
//!   a `<head>` tag gets none, as in Buntime).
//!
//! Only `text/html` bodies in an ASCII-compatible charset without a `Content-Encoding` are
//! rewritten: compressed bytes cannot be rewritten without decoding them, and marina passes
//! upstream compression through untouched. So that pages do arrive uncompressed, requests that
//! accept `text/html` are sent upstream with `Accept-Encoding: identity` ([`HtmlRewrite::prepare`]);
//! other requests (scripts, images) keep their compression. An HTML answer that comes
//! compressed anyway is passed through unchanged.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use lol_html::html_content::{ContentType, Element, TextChunk};
use lol_html::send::{HtmlRewriter, SendHandlerTypes, Settings};
use lol_html::{AsciiCompatibleEncoding, MemorySettings, element, text};
use marina_core::body::{self, Body, BoxError};
use parking_lot::Mutex;

/// Most memory one page's rewriter may hold (tags split across chunks are buffered).
const MAX_REWRITER_MEMORY: usize = 8 << 20;

/// The attributes `relativePaths` rewrites.
const URL_ATTRIBUTES: [&str; 3] = ["href", "src", "action"];

/// What a rule does to HTML responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtmlRewrite {
    /// The `<base href>` to inject, with its trailing `/`.
    base: Option<String>,
    relative_paths: bool,
}

impl HtmlRewrite {
    /// The rewrite of a rule with these fields; `None` when it has neither.
    pub fn new(base: Option<&str>, relative_paths: bool) -> Option<Self> {
        let base =
            base.filter(|b| !b.is_empty()).map(|b| if b.ends_with('/') { b.to_string() } else { format!("{b}/") });
        (base.is_some() || relative_paths).then_some(Self { base, relative_paths })
    }

    /// Adjusts the upstream request: a request for a page asks for it uncompressed, so that it
    /// can be rewritten.
    pub fn prepare(&self, request_headers: &mut HeaderMap) {
        let wants_html = request_headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains("text/html")));
        if wants_html {
            request_headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
    }

    /// Rewrites `resp` when it is an uncompressed HTML page; anything else passes unchanged.
    /// `head` says the request was a HEAD (no body to rewrite, but the length would be wrong).
    pub fn apply(&self, resp: Response<Body>, head: bool) -> Response<Body> {
        let Some(encoding) = html_encoding(resp.headers()) else { return resp };
        if let Some(ce) = resp.headers().get(header::CONTENT_ENCODING)
            && !ce.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            tracing::debug!(encoding = ?ce, "HTML answer is compressed; passed through without base/relativePaths rewriting");
            return resp;
        }
        let (mut parts, inner) = resp.into_parts();
        // The body changes length and bytes: the upstream's length and strong validator no
        // longer describe it (a weak ETag still lets caches revalidate).
        parts.headers.remove(header::CONTENT_LENGTH);
        if let Some(etag) = parts.headers.get(header::ETAG)
            && !etag.as_bytes().starts_with(b"W/")
            && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
        {
            parts.headers.insert(header::ETAG, weak);
        }
        let no_body = head || parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED;
        if no_body {
            return Response::from_parts(parts, inner);
        }
        Response::from_parts(parts, body::boxed(HtmlBody::new(inner, self, encoding)))
    }

    fn settings(&self, encoding: AsciiCompatibleEncoding) -> Settings<'static, 'static> {
        let mut settings = Settings::new_send()
            .with_encoding(encoding)
            .with_memory_settings(MemorySettings::new().with_max_allowed_memory_usage(MAX_REWRITER_MEMORY));
        if self.relative_paths {
            for attr in URL_ATTRIBUTES {
                settings =
                    settings.append_element_content_handler(element!(format!("[{attr}]"), move |el: &mut Element<
                        '_,
                        '_,
                        SendHandlerTypes,
                    >| {
                        if el.tag_name() != "base"
                            && let Some(value) = el.get_attribute(attr)
                            && let Some(rel) = relative(&value)
                        {
                            el.set_attribute(attr, &rel)?;
                        }
                        Ok(())
                    }));
            }
            let mut carry = String::new();
            settings = settings.append_element_content_handler(text!("script", move |t: &mut TextChunk<'_>| {
                let last = t.last_in_text_node();
                let input =
                    if carry.is_empty() { Cow::Borrowed(t.as_str()) } else { Cow::Owned(carry.clone() + t.as_str()) };
                let (out, rest) = quoted_paths(&input, last);
                let changed = out != t.as_str();
                carry = rest.to_string();
                if changed {
                    let out = out.into_owned();
                    t.replace(&out, ContentType::Html);
                }
                Ok(())
            }));
        }
        if let Some(base) = &self.base {
            let tag = format!(r#"<base href="{base}">"#);
            let mut done = false;
            settings = settings.append_element_content_handler(element!("head", move |el: &mut Element<
                '_,
                '_,
                SendHandlerTypes,
            >| {
                if !done {
                    el.prepend(&tag, ContentType::Html);
                    done = true;
                }
                Ok(())
            }));
        }
        settings
    }
}

/// `./rest` for a root-relative URL `/rest`; `None` for anything else (`//host`, `http:`,
/// `rel/ative`, `#frag`).
fn relative(url: &str) -> Option<String> {
    let rest = url.strip_prefix('/')?;
    (!rest.starts_with('/')).then(|| format!("./{rest}"))
}

/// Buntime's script rule over one chunk of script text: `'/x` → `'./x` unless it is `'//`.
/// Returns the rewritten text to emit now and the tail to hold for the next chunk (a trailing
/// `'` or `'/` whose meaning depends on what follows). With `at_end`, nothing is held.
fn quoted_paths(text: &str, at_end: bool) -> (Cow<'_, str>, &str) {
    let (now, held) = if at_end {
        (text, "")
    } else if text.ends_with("'/") {
        text.split_at(text.len() - 2)
    } else if text.ends_with('\'') {
        text.split_at(text.len() - 1)
    } else {
        (text, "")
    };
    if !now.contains("'/") {
        return (Cow::Borrowed(now), held);
    }
    let bytes = now.as_bytes();
    let mut out = String::with_capacity(now.len() + 8);
    let mut from = 0;
    for i in 0..bytes.len().saturating_sub(1) {
        if bytes[i] == b'\'' && bytes[i + 1] == b'/' && bytes.get(i + 2) != Some(&b'/') {
            out.push_str(&now[from..=i]);
            out.push('.');
            from = i + 1;
        }
    }
    out.push_str(&now[from..]);
    (Cow::Owned(out), held)
}

/// The charset of an HTML response, when it is one lol_html can rewrite.
fn html_encoding(headers: &HeaderMap) -> Option<AsciiCompatibleEncoding> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mut params = ct.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("text/html") {
        return None;
    }
    let charset = params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("charset").then(|| v.trim().trim_matches('"').to_string())
    });
    let encoding = match charset {
        None => encoding_rs::UTF_8,
        Some(label) => encoding_rs::Encoding::for_label(label.as_bytes())?,
    };
    AsciiCompatibleEncoding::new(encoding)
}

/// The rewriter's output, shared between its sink and the body that hands it on.
type Out = Arc<Mutex<Vec<u8>>>;
type Rewriter = HtmlRewriter<'static, Box<dyn FnMut(&[u8]) + Send>>;

/// A body that streams the upstream's body through the rewriter.
struct HtmlBody {
    inner: Body,
    rewriter: Option<Rewriter>,
    out: Out,
}

impl HtmlBody {
    fn new(inner: Body, rewrite: &HtmlRewrite, encoding: AsciiCompatibleEncoding) -> Self {
        let out: Out = Arc::default();
        let sink = out.clone();
        let rewriter = HtmlRewriter::new(
            rewrite.settings(encoding),
            Box::new(move |chunk: &[u8]| sink.lock().extend_from_slice(chunk)) as Box<dyn FnMut(&[u8]) + Send>,
        );
        Self { inner, rewriter: Some(rewriter), out }
    }

    fn take_out(&self) -> Option<Bytes> {
        let mut out = self.out.lock();
        (!out.is_empty()).then(|| Bytes::from(std::mem::take(&mut *out)))
    }
}

impl HttpBody for HtmlBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(rewriter) = this.rewriter.as_mut() else { return Poll::Ready(None) };
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers cannot follow a rewritten body in any useful way; they are dropped.
                    let Ok(data) = frame.into_data() else { continue };
                    if let Err(e) = rewriter.write(&data) {
                        this.rewriter = None;
                        return Poll::Ready(Some(Err(format!("rewriting the HTML answer failed: {e}").into())));
                    }
                    if let Some(bytes) = this.take_out() {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Some(Err(e)) => {
                    this.rewriter = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    let rewriter = this.rewriter.take().expect("checked above");
                    if let Err(e) = rewriter.end() {
                        return Poll::Ready(Some(Err(format!("rewriting the HTML answer failed: {e}").into())));
                    }
                    return Poll::Ready(this.take_out().map(|b| Ok(Frame::data(b))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rewriter.is_none() && self.out.lock().is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_relative_urls_become_relative() {
        assert_eq!(relative("/app.js").as_deref(), Some("./app.js"));
        assert_eq!(relative("/").as_deref(), Some("./"));
        assert_eq!(relative("//cdn.example/x.js"), None);
        assert_eq!(relative("https://x/"), None);
        assert_eq!(relative("rel/x"), None);
        assert_eq!(relative("#top"), None);
    }

    #[test]
    fn quoted_paths_in_scripts_hold_what_the_next_chunk_decides() {
        assert_eq!(quoted_paths("fetch('/api/x')", true).0, "fetch('./api/x')");
        assert_eq!(quoted_paths("a='//cdn/x'; b='/'", true).0, "a='//cdn/x'; b='./'");
        assert_eq!(quoted_paths("no quotes / here", false), (Cow::Borrowed("no quotes / here"), ""));
        assert_eq!(quoted_paths("x = '", false), (Cow::Borrowed("x = "), "'"));
        assert_eq!(quoted_paths("x = '/", false), (Cow::Borrowed("x = "), "'/"));
        assert_eq!(quoted_paths("'/a' + '/", false), (Cow::Owned("'./a' + ".into()), "'/"));
        assert_eq!(quoted_paths("'/", true).0, "'./");
        assert_eq!(quoted_paths("é'/ü", true).0, "é'./ü", "multi-byte text around the quote");
    }

    #[test]
    fn only_uncompressed_html_in_an_ascii_compatible_charset_is_rewritten() {
        let ct = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(html_encoding(&ct("text/html")).is_some());
        assert!(html_encoding(&ct("Text/HTML; charset=\"ISO-8859-1\"")).is_some());
        assert!(html_encoding(&ct("text/html; charset=utf-16le")).is_none());
        assert!(html_encoding(&ct("text/html; charset=nonsense")).is_none());
        assert!(html_encoding(&ct("application/json")).is_none());
        assert!(html_encoding(&HeaderMap::new()).is_none());
        assert_eq!(HtmlRewrite::new(Some(""), false), None);
        assert_eq!(HtmlRewrite::new(Some("/cp"), false).unwrap().base.as_deref(), Some("/cp/"));
    }

    #[test]
    fn pages_that_ask_for_html_are_requested_uncompressed() {
        let rw = HtmlRewrite::new(None, true).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml;q=0.9"));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
        rw.prepare(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "identity");
        let mut js = HeaderMap::new();
        js.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        js.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        rw.prepare(&mut js);
        assert_eq!(js[header::ACCEPT_ENCODING], "gzip");
    }
}
