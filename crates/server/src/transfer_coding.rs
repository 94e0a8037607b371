//! The one transfer coding marina reads on a request: `chunked`, applied once.
//!
//! hyper frames an HTTP/1.1 request by its last transfer coding: `chunked` last is read as
//! chunked, anything else last is refused (400). It does not look at the codings before it, so
//! `Transfer-Encoding: gzip, chunked` was served: hyper removed the chunking, the body was still
//! gzip-coded, and the app got those bytes as the body with nothing saying so (the header is
//! hop-by-hop, dropped on the way to the worker). `chunked, chunked` likewise left one layer of
//! chunking in the body. RFC 9112 §6.1: a server that receives a transfer coding it does not
//! understand SHOULD answer 501, and a sender MUST NOT apply `chunked` more than once. nginx
//! 1.22 answers 501 to a `Transfer-Encoding` line that is not exactly `chunked` (`gzip, chunked`,
//! `chunked, chunked`) and 400 to a second line. So before anything else reads the request:
//!
//! - a coding other than `chunked` (`gzip`, `deflate`, `compress`, `identity`, a parameter) is
//!   501 `TRANSFER_CODING_UNSUPPORTED`;
//! - `chunked` more than once (in one header or across several) is 400 `TRANSFER_CODING_INVALID`.
//!
//! Both are answered before the body is read, so the connection is closed after the answer
//! (`unread_body`): nothing the client sent after the head is taken for a next request. The
//! message and `data` quote the header clipped to [`SHOWN`] characters: a head may be 64 KiB.
//! HTTP/2 has no transfer codings (h2 refuses the header), so this only ever sees HTTP/1.x.

use http::header::TRANSFER_ENCODING;
use http::{HeaderMap, StatusCode};
use marina_core::Error;
use marina_core::error::clipped;

/// The most characters of the header (and of the coding) an error quotes.
const SHOWN: usize = 200;

/// Check the request's `Transfer-Encoding` (see the module docs).
///
/// # Errors
/// 501 `TRANSFER_CODING_UNSUPPORTED` for a coding other than `chunked`, 400
/// `TRANSFER_CODING_INVALID` for `chunked` applied more than once; both quote the header.
pub fn check(headers: &HeaderMap) -> Result<(), Error> {
    let mut chunked = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        // A list (RFC 9110 §5.6.1): empty elements are allowed and ignored.
        for coding in text.split(',').map(|c| c.trim_matches([' ', '\t'])).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                return Err(unsupported(&clipped(coding, SHOWN), headers));
            }
        }
    }
    if chunked > 1 {
        let got = all(headers);
        return Err(Error::bad_request(
            "TRANSFER_CODING_INVALID",
            format!("the request's Transfer-Encoding \"{got}\" applies chunked {chunked} times, expected once"),
        )
        .with_data(serde_json::json!({ "transferEncoding": got })));
    }
    Ok(())
}

fn unsupported(coding: &str, headers: &HeaderMap) -> Error {
    let got = all(headers);
    Error::new(
        StatusCode::NOT_IMPLEMENTED,
        "TRANSFER_CODING_UNSUPPORTED",
        format!(
            "the request's Transfer-Encoding \"{got}\" uses the coding \"{coding}\", which marina does not decode; \
             expected \"chunked\" alone (send a compressed body with Content-Encoding instead)"
        ),
    )
    .with_data(serde_json::json!({ "transferEncoding": got, "coding": coding }))
}

/// Every `Transfer-Encoding` line, joined as one list, clipped to [`SHOWN`] characters.
fn all(headers: &HeaderMap) -> String {
    let lines: Vec<_> =
        headers.get_all(TRANSFER_ENCODING).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    clipped(&lines.join(", "), SHOWN).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(TRANSFER_ENCODING, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn outcome(lines: &[&str]) -> Result<(), (u16, String)> {
        check(&with(lines)).map_err(|e| (e.status().as_u16(), e.code().to_string()))
    }

    #[test]
    fn chunked_once_or_no_coding_is_read() {
        for ok in [&[][..], &["chunked"], &["Chunked"], &["CHUNKED"], &[" chunked\t"], &["chunked,"], &[", chunked"]] {
            assert_eq!(outcome(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn other_codings_are_501_naming_the_coding() {
        for bad in [
            &["gzip, chunked"][..],
            &["deflate,chunked"],
            &["identity, chunked"],
            &["gzip", "chunked"],
            &["chunked;ext=1"],
            &["x-custom, chunked"],
        ] {
            assert_eq!(outcome(bad), Err((501, "TRANSFER_CODING_UNSUPPORTED".to_string())), "{bad:?}");
        }
        let err = check(&with(&["gzip", "chunked"])).unwrap_err();
        assert!(err.to_string().contains("\"gzip, chunked\""), "{err}");
        assert!(err.to_string().contains("coding \"gzip\""), "{err}");
    }

    #[test]
    fn a_huge_header_is_quoted_clipped() {
        let huge = format!("{}, chunked", "gzip".repeat(15_000));
        let err = check(&with(&[&huge])).unwrap_err();
        assert_eq!(err.status().as_u16(), 501);
        assert!(err.message().len() < 1_000, "{} bytes of message", err.message().len());
        assert!(err.data().unwrap().to_string().len() < 1_000, "data: {} bytes", err.data().unwrap().to_string().len());
        assert!(err.message().contains("…"), "{}", err.message());
    }

    #[test]
    fn chunked_twice_is_400() {
        for bad in [&["chunked, chunked"][..], &["chunked", "chunked"], &["chunked,,chunked"]] {
            assert_eq!(outcome(bad), Err((400, "TRANSFER_CODING_INVALID".to_string())), "{bad:?}");
        }
        let err = check(&with(&["chunked", "chunked"])).unwrap_err();
        assert!(err.to_string().contains("2 times"), "{err}");
    }
}
