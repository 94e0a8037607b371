//! Hop-by-hop header handling (RFC 9110 §7.6.1).

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message, and so are never forwarded. A
/// `static`, not a `const`: a `const` array is built afresh (and dropped) at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether `name` describes one connection (the fixed list; names a `Connection` header lists
/// are hop-by-hop too, for that message only).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_index(name).is_some()
}

/// `name`'s place in [`HOP_BY_HOP`], or `HOP_BY_HOP.len()` for `Upgrade`; `None` for an
/// end-to-end header. One `match` on the name's text (a length switch, then one comparison),
/// where comparing with each `HeaderName` of the list was ~10 comparisons a header.
fn hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => HOP_BY_HOP.len(),
        _ => return None,
    })
}

/// Whether a request or response asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
///
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive: a protocol switch is the
/// one hop-by-hop exchange a proxy has to pass on for the two ends to agree on it.
///
/// Every proxied request and its response pass here, so the map is looked at once, by walking
/// its names (no hashing), and only the names found are removed: most messages carry none, or
/// only `Connection: keep-alive`. Removing each of the nine names by lookup, and parsing every
/// `Connection` token into a new `HeaderName`, cost ~1,750 instructions a call (callgrind,
/// `bench/proxy.sh`'s request and nginx's response); this costs ~200 (nothing to remove) to
/// ~700 (nginx's response, whose `Connection` goes).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Which of the fixed names are present: bit i for HOP_BY_HOP[i], bit 8 for Upgrade.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_index(name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        // Names listed in Connection are hop-by-hop too. Collected first (the values borrow the
        // map; nothing is allocated unless a token names another header), then looked up by
        // `&str`, which needs no `HeaderName` of its own. Fixed names are left to the loop
        // below, which removes them anyway.
        let mut named: Vec<String> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            if let Ok(s) = value.to_str() {
                for token in s.split(',') {
                    let token = token.trim();
                    if token.is_empty()
                        || (keep_upgrade && token.eq_ignore_ascii_case("upgrade"))
                        || is_fixed_hop_by_hop(token)
                    {
                        continue;
                    }
                    named.push(token.to_owned());
                }
            }
        }
        for token in &named {
            headers.remove(token.as_str());
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a `Connection` token names `Upgrade` or one of [`HOP_BY_HOP`] (any case).
fn is_fixed_hop_by_hop(token: &str) -> bool {
    token.eq_ignore_ascii_case(header::UPGRADE.as_str())
        || HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn removes_listed_and_named_headers_and_keeps_repeats() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(names, vec!["set-cookie"]);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = map(&[("connection", "Upgrade, x-hop"), ("upgrade", "websocket"), ("x-hop", "1")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(h.get("x-hop").is_none());
    }

    proptest::proptest! {
        /// Whatever the mix, no hop-by-hop header survives and every end-to-end header keeps
        /// all its values in order.
        #[test]
        fn end_to_end_headers_survive_and_hop_by_hop_do_not(
            pairs in proptest::collection::vec(
                (proptest::sample::select(vec![
                    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                    "proxy-authorization", "set-cookie", "x-a", "x-b", "cookie", "accept",
                ]), "[a-z0-9, =-]{0,12}"),
                0..20,
            )
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in &pairs {
                h.append(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
            }
            let named: Vec<String> = h.get_all("connection").iter()
                .flat_map(|v| v.to_str().unwrap().split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .collect();
            let before = h.clone();
            strip_hop_by_hop(&mut h, false);
            for hop in ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization"] {
                proptest::prop_assert!(!h.contains_key(hop));
            }
            for name in ["set-cookie", "x-a", "x-b", "cookie", "accept"] {
                if named.iter().any(|n| n == name) {
                    proptest::prop_assert!(!h.contains_key(name));
                } else {
                    let a: Vec<_> = before.get_all(name).iter().collect();
                    let b: Vec<_> = h.get_all(name).iter().collect();
                    proptest::prop_assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn the_index_agrees_with_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_index(&header::UPGRADE), Some(HOP_BY_HOP.len()));
        for name in [header::HOST, header::CONTENT_LENGTH, HeaderName::from_static("x-te")] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn not_an_upgrade_without_connection_token() {
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[("connection", "keep-alive")])));
    }
}
