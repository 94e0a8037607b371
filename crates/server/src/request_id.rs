//! `X-Request-Id`: echo a sane incoming id so a caller's trace survives, otherwise mint a
//! UUIDv7 (time-ordered, so ids sort by arrival in logs).

use std::sync::Arc;

use http::HeaderMap;

/// The longest incoming id that is echoed; longer ones are replaced.
const MAX_LEN: usize = 128;

/// The id for this request: the incoming `x-request-id` when it is 1–128 visible characters from
/// a conservative set (letters, digits, `-_.:/+=`), else a new UUIDv7.
pub fn for_request(headers: &HeaderMap) -> Arc<str> {
    if let Some(id) = headers.get(marina_core::headers::X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && is_sane(id)
    {
        return Arc::from(id);
    }
    // Encoded in place: the same text as `to_string`, without the formatting machinery.
    let mut buf = uuid::Uuid::encode_buffer();
    Arc::from(&*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf))
}

fn is_sane(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_str(id).unwrap());
        h
    }

    #[test]
    fn sane_ids_are_echoed() {
        assert_eq!(&*for_request(&with("abc-123_X.y:z")), "abc-123_X.y:z");
    }

    #[test]
    fn odd_ids_are_replaced_with_uuid_v7() {
        for id in ["", "has space", "<script>", &"x".repeat(129), "quote\""] {
            let got = for_request(&with(id));
            let uuid = uuid::Uuid::parse_str(&got).expect("a uuid");
            assert_eq!(uuid.get_version_num(), 7, "{id:?}");
        }
        assert_eq!(uuid::Uuid::parse_str(&for_request(&HeaderMap::new())).unwrap().get_version_num(), 7);
    }
}
