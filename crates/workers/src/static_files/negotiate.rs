//! Request-header rules: content coding, page navigation, validators and ranges.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{ACCEPT, ACCEPT_ENCODING};
use http::{HeaderMap, HeaderName, Method};

/// A representation of a file on disk: itself or a precompressed sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The file as is.
    Identity = 0,
    /// `foo.js.br`.
    Br = 1,
    /// `foo.js.gz`.
    Gzip = 2,
}

impl Encoding {
    /// The sibling's suffix and the `Content-Encoding` token.
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// Pick the representation to send from `Accept-Encoding` and the siblings that exist.
///
/// Follows RFC 9110 §12.5.3: a coding not listed is unacceptable unless `*` covers it;
/// identity is acceptable unless `identity;q=0` (or `*;q=0` without an `identity` entry).
/// The highest q wins; ties prefer br, then gzip, then identity (smaller first). When nothing
/// is acceptable, identity is sent anyway (the RFC allows ignoring the header rather than 406).
/// No header at all means identity: clients that do not ask are not sent compressed bytes.
pub fn choose_encoding(headers: &HeaderMap, has_br: bool, has_gz: bool) -> Encoding {
    if !has_br && !has_gz {
        return Encoding::Identity;
    }
    let (mut br, mut gz, mut id, mut star) = (None, None, None, None);
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1.0f32);
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = v.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q));
                }
            }
            let Some(q) = q else { continue };
            let slot = if coding.eq_ignore_ascii_case("br") {
                &mut br
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gz
            } else if coding.eq_ignore_ascii_case("identity") {
                &mut id
            } else if coding == "*" {
                &mut star
            } else {
                continue;
            };
            *slot = Some(q);
        }
    }
    let br_q = if has_br { br.or(star).unwrap_or(0.0) } else { 0.0 };
    let gz_q = if has_gz { gz.or(star).unwrap_or(0.0) } else { 0.0 };
    // Unlisted identity is acceptable but least preferred: a client that lists codings wants them.
    let id_q = id.or(star).unwrap_or(0.001);
    let mut best = (Encoding::Identity, id_q);
    for (enc, q) in [(Encoding::Gzip, gz_q), (Encoding::Br, br_q)] {
        if q > 0.0 && q >= best.1 {
            best = (enc, q);
        }
    }
    best.0
}

/// Whether a request for a missing, extension-less path is a page navigation that should get
/// the SPA's entrypoint. `Sec-Fetch-Dest` decides when present (`document`, `iframe`, `frame`:
/// plugin UIs live in iframes); otherwise an `Accept` naming `text/html`; a request with
/// neither header (curl, old clients) counts as a navigation. A `fetch()` from a page sends
/// `Sec-Fetch-Dest: empty` and `Accept: */*`, so API-like calls get a 404, not HTML.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let dest = headers.get(HeaderName::from_static("sec-fetch-dest")).map(|v| v.as_bytes());
    if let Some(dest) = dest
        && [&b"document"[..], b"iframe", b"frame"].iter().any(|d| dest.eq_ignore_ascii_case(d))
    {
        return true;
    }
    let accept = headers.get_all(ACCEPT);
    let mut any_accept = false;
    for value in accept {
        any_accept = true;
        if value.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("text/html")) {
            return true;
        }
    }
    dest.is_none() && !any_accept
}

/// `W/"x"` and `"x"` compare equal under the weak comparison.
fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// `If-None-Match` against the current ETag (weak comparison, lists, `*`).
pub fn none_match_hits<'a>(values: impl Iterator<Item = &'a http::HeaderValue>, etag: &str) -> bool {
    values.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| {
        let t = t.trim();
        t == "*" || opaque(t) == opaque(etag)
    })
}

/// Seconds precision, as HTTP dates carry.
pub fn to_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// `If-Modified-Since`: true when the file is not newer than the given date.
pub fn not_modified_since(value: &http::HeaderValue, mtime: SystemTime) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| to_secs(mtime) <= to_secs(since))
}

/// `If-Range`: the range applies only when the validator still matches: an ETag by strong
/// comparison (a weak tag never matches), or a date equal to the Last-Modified.
pub fn if_range_holds(value: &http::HeaderValue, etag: &str, mtime: SystemTime) -> bool {
    let Ok(v) = value.to_str() else { return false };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return !v.starts_with("W/") && v == etag;
    }
    httpdate::parse_http_date(v).is_ok_and(|d| to_secs(d) == to_secs(mtime))
}

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range: send everything with 200. Also used for a syntactically invalid header
    /// (RFC 9110 says to ignore it) and for several ranges, which marina answers with the whole
    /// file rather than `multipart/byteranges` (allowed, and what clients handle best).
    Full,
    /// One satisfiable range, inclusive bounds.
    Partial(u64, u64),
    /// The range lies outside the representation: 416.
    Unsatisfiable,
}

/// Interpret a `Range` header value for `len` bytes.
pub fn range_answer(value: &http::HeaderValue, len: u64) -> RangeAnswer {
    let Ok(v) = value.to_str() else { return RangeAnswer::Full };
    let Ok(parsed) = http_range_header::parse_range_header(v.trim()) else { return RangeAnswer::Full };
    if parsed.ranges.len() != 1 {
        return RangeAnswer::Full;
    }
    if len == 0 {
        return RangeAnswer::Unsatisfiable;
    }
    match parsed.validate(len) {
        Ok(ranges) => match ranges.first() {
            Some(r) if *r.start() < len => RangeAnswer::Partial(*r.start(), *r.end()),
            _ => RangeAnswer::Unsatisfiable,
        },
        Err(_) => RangeAnswer::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn encoding_choice_respects_q() {
        use Encoding::*;
        let cases = [
            ("gzip, deflate, br", true, true, Br),
            ("gzip, deflate, br", false, true, Gzip),
            ("br;q=0, gzip", true, true, Gzip),
            ("br;q=0.5, gzip;q=0.8", true, true, Gzip),
            ("br;q=0, gzip;q=0", true, true, Identity),
            ("*", true, true, Br),
            ("*;q=0, identity", true, true, Identity),
            ("identity;q=0, gzip;q=0.1", true, true, Gzip),
            ("identity", true, true, Identity),
            ("deflate", true, true, Identity),
            ("br;q=bogus, gzip", true, true, Gzip),
            ("x-gzip", false, true, Gzip),
        ];
        for (header, br, gz, want) in cases {
            assert_eq!(choose_encoding(&ae(header), br, gz), want, "{header}");
        }
        assert_eq!(choose_encoding(&HeaderMap::new(), true, true), Identity);
    }

    #[test]
    fn navigation_detection() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(is_navigation(&Method::GET, &h(&[])));
        assert!(is_navigation(&Method::GET, &h(&[("sec-fetch-dest", "document"), ("accept", "*/*")])));
        assert!(is_navigation(&Method::GET, &h(&[("accept", "text/html,application/xhtml+xml")])));
        assert!(!is_navigation(&Method::GET, &h(&[("sec-fetch-dest", "empty"), ("accept", "*/*")])));
        assert!(!is_navigation(&Method::GET, &h(&[("accept", "application/json")])));
        assert!(!is_navigation(&Method::GET, &h(&[("sec-fetch-dest", "script")])));
        assert!(!is_navigation(&Method::POST, &h(&[])));
    }

    #[test]
    fn validators() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(none_match_hits([v("\"a\", \"b\"")].iter(), "\"b\""));
        assert!(none_match_hits([v("W/\"b\"")].iter(), "\"b\""));
        assert!(none_match_hits([v("*")].iter(), "\"b\""));
        assert!(!none_match_hits([v("\"a\"")].iter(), "\"b\""));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = HeaderValue::from_str(&httpdate::fmt_http_date(t)).unwrap();
        assert!(not_modified_since(&date, t + Duration::from_millis(500)));
        assert!(!not_modified_since(&date, t + Duration::from_secs(1)));
        assert!(if_range_holds(&date, "\"e\"", t));
        assert!(if_range_holds(&v("\"e\""), "\"e\"", t));
        assert!(!if_range_holds(&v("W/\"e\""), "\"e\"", t));
        assert!(!if_range_holds(&v("\"f\""), "\"e\"", t));
    }

    #[test]
    fn ranges() {
        let r = |s: &'static str, len| range_answer(&HeaderValue::from_static(s), len);
        assert_eq!(r("bytes=0-9", 100), RangeAnswer::Partial(0, 9));
        assert_eq!(r("bytes=90-200", 100), RangeAnswer::Partial(90, 99));
        assert_eq!(r("bytes=-10", 100), RangeAnswer::Partial(90, 99));
        assert_eq!(r("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=-200", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6", 100), RangeAnswer::Full);
        assert_eq!(r("items=0-1", 100), RangeAnswer::Full);
        assert_eq!(r("bytes=5-1", 100), RangeAnswer::Unsatisfiable);
    }
}
