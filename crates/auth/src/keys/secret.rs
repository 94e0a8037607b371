//! Key material: generation, hashing and comparison.
//!
//! A generated key is `btk_` + 32 random bytes in unpadded base64url (Buntime's format), so 256
//! bits of entropy: a single unsalted SHA-256 is enough at rest (there is nothing to brute
//! force), and it lets a lookup find the row without keeping the secret. Comparisons run in
//! constant time over the digests, so neither the secret's length nor a matching prefix shows in
//! the timing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use marina_core::Error;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every generated key starts with.
pub const KEY_PREFIX: &str = "btk_";

/// How many leading characters of a key are stored and shown (`btk_` + 8), as in Buntime.
pub const SHOWN_PREFIX_LEN: usize = 12;

/// A new key: `btk_` + 43 base64url characters.
///
/// # Errors
/// 500 when the operating system's random source fails (then no key is better than a weak one).
pub fn generate() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("the system random source failed: {e}")))?;
    Ok(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The SHA-256 digest of a key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The stored form: the digest in lower-case hex.
pub fn hash_hex(key: &str) -> String {
    hex::encode(digest(key))
}

/// The part of a key shown in listings and used to narrow lookups.
pub fn shown_prefix(key: &str) -> &str {
    // Keys are ASCII; a non-ASCII guess is cut at a char boundary so it never panics.
    let mut end = SHOWN_PREFIX_LEN.min(key.len());
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// Whether `candidate`'s digest equals the stored hex digest, in constant time.
pub fn matches_hash(candidate: &[u8; 32], stored_hex: &str) -> bool {
    let mut stored = [0u8; 32];
    if hex::decode_to_slice(stored_hex, &mut stored).is_err() {
        return false;
    }
    candidate.ct_eq(&stored).into()
}

/// Whether two secrets are equal, in constant time whatever their lengths (both are hashed first).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    digest(a).ct_eq(&digest(b)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_buntimes_shape() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("btk_"));
        assert_eq!(a.len(), 4 + 43);
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(shown_prefix(&a).len(), 12);
    }

    #[test]
    fn hashes_compare() {
        let key = generate().unwrap();
        let stored = hash_hex(&key);
        assert_eq!(stored.len(), 64);
        assert!(matches_hash(&digest(&key), &stored));
        assert!(!matches_hash(&digest("btk_other"), &stored));
        assert!(!matches_hash(&digest(&key), "not hex"));
        assert!(secrets_equal("root-key", "root-key"));
        assert!(!secrets_equal("root-key", "root-key2"));
        assert_eq!(shown_prefix("ééééééé"), "éééééé");
        assert_eq!(shown_prefix("btk"), "btk");
    }
}
