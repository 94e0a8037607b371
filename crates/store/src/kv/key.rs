//! Composite keys and their order-preserving binary encoding.
//!
//! A key is a list of parts (bytes, string, number, bigint, boolean). The encoding is the
//! FoundationDB tuple layer's idea: a type tag per part, byte strings terminated by `0x00` with
//! inner zeros escaped as `0x00 0xFF`, numbers as big-endian bit patterns arranged so that
//! unsigned byte order is numeric order. Why: the database then orders and range-scans keys
//! with a plain `ORDER BY key` on a binary column (SQLite `BLOB`, PostgreSQL `bytea`, both
//! compared byte by byte), so `list` is an index range scan on both backends.
//!
//! Type order (as in Buntime): bytes < string < number < bigint < boolean. A key sorts before
//! its descendants, and every descendant of `P` lies in `[enc(P) 0x00, enc(P) 0xFF)` — a prefix
//! stops at part boundaries (`["nu"]` does not list `["nux", 1]`, unlike Buntime).

use base64::Engine as _;
use marina_core::Error;
use serde_json::Value as Json;

const TAG_BYTES: u8 = 0x01;
const TAG_STRING: u8 = 0x02;
const TAG_NUMBER: u8 = 0x03;
const TAG_BIGINT: u8 = 0x04;
const TAG_BOOL: u8 = 0x05;

/// One part of a key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyPart {
    /// Raw bytes; JSON `{"$bytes": "<base64>"}`.
    Bytes(Vec<u8>),
    /// A string; JSON string.
    String(String),
    /// A finite double (`-0` is stored as `0`); JSON number.
    Number(f64),
    /// A 64-bit integer kept apart from numbers (JavaScript's `bigint`); JSON `{"$bigint": "123"}`.
    BigInt(i64),
    /// A boolean; JSON boolean.
    Bool(bool),
}

/// A composite key.
pub type Key = Vec<KeyPart>;

/// Encode `key` so that byte order is key order.
pub fn encode(key: &[KeyPart]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() * 10);
    for part in key {
        match part {
            KeyPart::Bytes(b) => escaped(&mut out, TAG_BYTES, b),
            KeyPart::String(s) => escaped(&mut out, TAG_STRING, s.as_bytes()),
            KeyPart::Number(f) => {
                out.push(TAG_NUMBER);
                let f = if *f == 0.0 { 0.0 } else { *f };
                let bits = f.to_bits();
                // Negative numbers: flip every bit (larger magnitude sorts first); positive:
                // flip the sign bit only (so they sort after all negatives).
                let ordered = if bits >> 63 == 1 { !bits } else { bits ^ (1 << 63) };
                out.extend_from_slice(&ordered.to_be_bytes());
            }
            KeyPart::BigInt(i) => {
                out.push(TAG_BIGINT);
                out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
            }
            KeyPart::Bool(b) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*b));
            }
        }
    }
    out
}

fn escaped(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.push(0);
}

/// Decode what [`encode`] produced.
///
/// # Errors
/// An internal error for bytes that are not an encoded key (never from marina's own rows).
pub fn decode(mut bytes: &[u8]) -> Result<Key, Error> {
    let corrupt = || Error::internal("a stored key-value key is not a valid encoding");
    let mut key = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        match tag {
            TAG_BYTES | TAG_STRING => {
                let mut raw = Vec::new();
                loop {
                    let (&b, rest) = bytes.split_first().ok_or_else(corrupt)?;
                    bytes = rest;
                    if b == 0 {
                        if bytes.first() == Some(&0xFF) {
                            raw.push(0);
                            bytes = &bytes[1..];
                        } else {
                            break;
                        }
                    } else {
                        raw.push(b);
                    }
                }
                key.push(if tag == TAG_BYTES {
                    KeyPart::Bytes(raw)
                } else {
                    KeyPart::String(String::from_utf8(raw).map_err(|_| corrupt())?)
                });
            }
            TAG_NUMBER | TAG_BIGINT => {
                if bytes.len() < 8 {
                    return Err(corrupt());
                }
                let n = u64::from_be_bytes(bytes[..8].try_into().map_err(|_| corrupt())?);
                bytes = &bytes[8..];
                key.push(if tag == TAG_NUMBER {
                    let bits = if n >> 63 == 1 { n ^ (1 << 63) } else { !n };
                    KeyPart::Number(f64::from_bits(bits))
                } else {
                    KeyPart::BigInt((n ^ (1 << 63)) as i64)
                });
            }
            TAG_BOOL => {
                let (&b, rest) = bytes.split_first().ok_or_else(corrupt)?;
                bytes = rest;
                key.push(KeyPart::Bool(b != 0));
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(key)
}

/// The half-open byte range `[lo, hi)` holding every strict descendant of `prefix`.
pub fn descendants(prefix: &[KeyPart]) -> (Vec<u8>, Vec<u8>) {
    let enc = encode(prefix);
    let mut lo = enc.clone();
    lo.push(0x00);
    let mut hi = enc;
    hi.push(0xFF);
    (lo, hi)
}

/// A key part as JSON (see [`KeyPart`] for the shapes).
pub fn part_to_json(part: &KeyPart) -> Json {
    match part {
        KeyPart::Bytes(b) => serde_json::json!({ "$bytes": base64::engine::general_purpose::STANDARD.encode(b) }),
        KeyPart::String(s) => Json::String(s.clone()),
        KeyPart::Number(f) => {
            if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                Json::from(*f as i64)
            } else {
                serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number)
            }
        }
        KeyPart::BigInt(i) => serde_json::json!({ "$bigint": i.to_string() }),
        KeyPart::Bool(b) => Json::Bool(*b),
    }
}

/// A key as a JSON array.
pub fn key_to_json(key: &[KeyPart]) -> Json {
    Json::Array(key.iter().map(part_to_json).collect())
}

fn bad_key(message: String, field: &str) -> Error {
    Error::bad_request("KV_KEY_INVALID", message).with_data(serde_json::json!({ "path": field }))
}

/// One key part from JSON; `field` names it in errors (e.g. `mutations[2].key[1]`).
///
/// # Errors
/// `KV_KEY_INVALID` naming the field and what was found.
pub fn part_from_json(v: &Json, field: &str) -> Result<KeyPart, Error> {
    match v {
        Json::String(s) => Ok(KeyPart::String(s.clone())),
        Json::Bool(b) => Ok(KeyPart::Bool(*b)),
        Json::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(KeyPart::Number(f)),
            _ => Err(bad_key(format!("{field}: {n} is not a finite number"), field)),
        },
        Json::Object(o) if o.len() == 1 && o.contains_key("$bigint") => {
            let text = match &o["$bigint"] {
                Json::String(s) => s.clone(),
                Json::Number(n) if n.is_i64() => n.to_string(),
                other => {
                    return Err(bad_key(format!("{field}: $bigint must be a string of digits, found {other}"), field));
                }
            };
            text.parse::<i64>()
                .map(KeyPart::BigInt)
                .map_err(|_| bad_key(format!("{field}: $bigint '{text}' is not an integer in the 64-bit range"), field))
        }
        Json::Object(o) if o.len() == 1 && o.contains_key("$bytes") => match &o["$bytes"] {
            Json::String(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(KeyPart::Bytes)
                .map_err(|e| bad_key(format!("{field}: $bytes is not base64: {e}"), field)),
            other => Err(bad_key(format!("{field}: $bytes must be a base64 string, found {other}"), field)),
        },
        other => Err(bad_key(
            format!(
                "{field}: a key part must be a string, number, boolean, {{\"$bigint\": \"…\"}} or {{\"$bytes\": \"…\"}}, found {other}"
            ),
            field,
        )),
    }
}

/// A key from a JSON array.
///
/// # Errors
/// `KV_KEY_INVALID` naming the field.
pub fn key_from_json(v: &Json, field: &str) -> Result<Key, Error> {
    let Json::Array(parts) = v else {
        return Err(bad_key(format!("{field}: a key must be an array of parts, found {v}"), field));
    };
    parts.iter().enumerate().map(|(i, p)| part_from_json(p, &format!("{field}[{i}]"))).collect()
}

/// A key from URL path segments (`users/1` → `["users", 1]`): a segment that is a decimal
/// integer becomes a number, anything else a string (percent-decoded by the caller) —
/// `true`/`false` included, as in Buntime (`validateKeyPart`), so a URL cannot name a boolean
/// part; JSON bodies can.
pub fn key_from_path(segments: &[&str]) -> Key {
    segments
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            // Only canonical integers ("1", "-2", not "01" or "+1") become numbers, so the
            // segment reads back as written.
            if let Ok(n) = s.parse::<i64>()
                && n.to_string() == *s
                && n.unsigned_abs() < (1 << 53)
            {
                KeyPart::Number(n as f64)
            } else {
                KeyPart::String((*s).to_string())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    /// The order keys must have, written independently of the encoding.
    fn cmp_part(a: &KeyPart, b: &KeyPart) -> Ordering {
        fn rank(p: &KeyPart) -> u8 {
            match p {
                KeyPart::Bytes(_) => 0,
                KeyPart::String(_) => 1,
                KeyPart::Number(_) => 2,
                KeyPart::BigInt(_) => 3,
                KeyPart::Bool(_) => 4,
            }
        }
        match (a, b) {
            (KeyPart::Bytes(x), KeyPart::Bytes(y)) => x.cmp(y),
            (KeyPart::String(x), KeyPart::String(y)) => x.as_bytes().cmp(y.as_bytes()),
            (KeyPart::Number(x), KeyPart::Number(y)) => x.partial_cmp(y).unwrap(),
            (KeyPart::BigInt(x), KeyPart::BigInt(y)) => x.cmp(y),
            (KeyPart::Bool(x), KeyPart::Bool(y)) => x.cmp(y),
            _ => rank(a).cmp(&rank(b)),
        }
    }

    fn cmp_key(a: &[KeyPart], b: &[KeyPart]) -> Ordering {
        for (x, y) in a.iter().zip(b) {
            match cmp_part(x, y) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        a.len().cmp(&b.len())
    }

    fn part() -> impl Strategy<Value = KeyPart> {
        prop_oneof![
            proptest::collection::vec(prop_oneof![Just(0u8), Just(0xFF), any::<u8>()], 0..6).prop_map(KeyPart::Bytes),
            "[a\\x00b\u{ff}é]{0,5}".prop_map(KeyPart::String),
            prop_oneof![
                any::<f64>().prop_filter("finite", |f| f.is_finite()),
                Just(0.0),
                Just(-1.5),
                Just(f64::MIN_POSITIVE)
            ]
            .prop_map(|f| KeyPart::Number(if f == 0.0 { 0.0 } else { f })),
            prop_oneof![any::<i64>(), Just(0), Just(-1), Just(i64::MIN), Just(i64::MAX)].prop_map(KeyPart::BigInt),
            any::<bool>().prop_map(KeyPart::Bool),
        ]
    }

    fn key() -> impl Strategy<Value = Key> {
        proptest::collection::vec(part(), 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn byte_order_is_key_order(a in key(), b in key()) {
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), cmp_key(&a, &b), "{:?} vs {:?}", a, b);
        }

        #[test]
        fn decode_inverts_encode(a in key()) {
            prop_assert_eq!(decode(&encode(&a)).unwrap(), a);
        }

        #[test]
        fn descendants_are_exactly_the_longer_keys_under_a_prefix(p in key(), k in key()) {
            let (lo, hi) = descendants(&p);
            let e = encode(&k);
            let inside = e >= lo && e < hi;
            let is_descendant = k.len() > p.len() && cmp_key(&k[..p.len()], &p) == Ordering::Equal;
            prop_assert_eq!(inside, is_descendant, "{:?} under {:?}", k, p);
        }

        #[test]
        fn json_round_trips(a in key()) {
            let j = key_to_json(&a);
            let back = key_from_json(&j, "key").unwrap();
            // Integral numbers come back as numbers of equal value.
            prop_assert_eq!(encode(&back), encode(&a));
        }
    }

    #[test]
    fn prefixes_stop_at_part_boundaries() {
        let (lo, hi) = descendants(&[KeyPart::String("nu".into())]);
        let nux = encode(&[KeyPart::String("nux".into()), KeyPart::Number(1.0)]);
        let nu1 = encode(&[KeyPart::String("nu".into()), KeyPart::Number(1.0)]);
        assert!(!(nux >= lo && nux < hi));
        assert!(nu1 >= lo && nu1 < hi);
    }

    #[test]
    fn path_segments_become_typed_parts() {
        assert_eq!(
            key_from_path(&["users", "1", "-2", "true", "1.5", "", "x"]),
            vec![
                KeyPart::String("users".into()),
                KeyPart::Number(1.0),
                KeyPart::Number(-2.0),
                KeyPart::String("true".into()),
                KeyPart::String("1.5".into()),
                KeyPart::String("x".into())
            ]
        );
    }

    #[test]
    fn bad_parts_name_the_field() {
        let err = key_from_json(&serde_json::json!(["a", null]), "checks[0].key").unwrap_err();
        assert_eq!(err.code(), "KV_KEY_INVALID");
        assert!(err.message().starts_with("checks[0].key[1]:"), "{}", err.message());
        assert!(key_from_json(&serde_json::json!("a"), "key").is_err());
        assert!(key_from_json(&serde_json::json!([{"$bigint": "9999999999999999999999"}]), "key").is_err());
        assert!(key_from_json(&serde_json::json!([{"$bytes": "!!"}]), "key").is_err());
    }
}
