//! The request-path normaliser and the file-name rules (extensions, content hashes).
//!
//! The normaliser is the first of two fences against traversal: it works on the path as
//! received, decodes percent-encoding exactly once, and refuses anything that could name a
//! parent or smuggle a separator (`..`, `%2e%2e`, `%2f`, `\`, `%5c`, NUL). The second fence is
//! in the resolver: the canonical file (symlinks followed) must lie inside the canonical root.

use percent_encoding::percent_decode_str;

/// Why a request path is refused before touching the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// An attempt to leave the root or smuggle a separator: answered 403.
    Traversal(&'static str),
    /// A dotfile or dot-directory (`.env`, `.git/`), or a name that is not UTF-8: answered 404
    /// as if it did not exist, so probing does not reveal what is there.
    Hidden,
}

/// A request path split into safe, decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Decoded segments, none empty, `.`, `..`, hidden, or holding `/`, `\` or NUL.
    pub segments: Vec<String>,
}

impl Normalized {
    /// The last segment, which decides extension-based rules.
    pub fn last(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }
}

/// Normalise a raw (still percent-encoded) request path. A query or fragment is ignored.
/// Empty and `.` segments are dropped; everything else that is odd is rejected.
pub fn normalize(raw: &str) -> Result<Normalized, Rejected> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let mut segments = Vec::new();
    for seg in path.split('/') {
        let bytes: Vec<u8> = percent_decode_str(seg).collect();
        if bytes.contains(&0) {
            return Err(Rejected::Traversal("a NUL byte"));
        }
        if bytes.contains(&b'/') {
            return Err(Rejected::Traversal("an encoded '/' inside a segment"));
        }
        if bytes.contains(&b'\\') {
            return Err(Rejected::Traversal("a backslash"));
        }
        match bytes.as_slice() {
            b"" | b"." => continue,
            b".." => return Err(Rejected::Traversal("a '..' segment")),
            _ => {}
        }
        if bytes[0] == b'.' {
            return Err(Rejected::Hidden);
        }
        let seg = String::from_utf8(bytes).map_err(|_| Rejected::Hidden)?;
        segments.push(seg);
    }
    Ok(Normalized { segments })
}

/// Whether a file name has an extension (`app.js`, `v1.2`), as opposed to a route (`about`).
/// A leading dot does not count.
pub fn has_extension(name: &str) -> bool {
    name.rfind('.').is_some_and(|i| i > 0 && i + 1 < name.len())
}

/// Whether a file name carries a content hash, so that its content never changes under that
/// name and it may be cached for a year.
///
/// The rule: drop the final extension, split the rest on `.` and `-`; the name is fingerprinted
/// when a segment *other than the first* is 8 to 64 characters of `[A-Za-z0-9_]` containing at
/// least one ASCII digit and at least one ASCII letter. That accepts webpack/rollup hex hashes
/// (`app.3f9a1c2b.js`) and Vite's base64url ones (`index-BpX7k2Qa.css`), and refuses names,
/// versions and dates (`chunk-vendors.js`, `jquery-3.7.1.min.js`, `img-20240101.png`).
/// It errs on the safe side: a hash that happens to have no digit (or no letter), or that
/// contains `-`, is not recognised, and such a file merely gets revalidated.
pub fn is_fingerprinted(name: &str) -> bool {
    let stem = match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => return false,
    };
    stem.split(['.', '-']).skip(1).any(|seg| {
        (8..=64).contains(&seg.len())
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && seg.bytes().any(|b| b.is_ascii_digit())
            && seg.bytes().any(|b| b.is_ascii_alphabetic())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn traversal_forms_are_rejected() {
        for raw in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/.%2e/x",
            "/a%2f..%2fb",
            "/a%2Fb",
            "/..%5cetc",
            "/a\\b",
            "/a%00.html",
            "/a\0b",
        ] {
            assert!(matches!(normalize(raw), Err(Rejected::Traversal(_))), "{raw}");
        }
    }

    #[test]
    fn dotfiles_are_hidden() {
        for raw in ["/.env", "/%2eenv", "/.git/config", "/a/.htaccess"] {
            assert_eq!(normalize(raw), Err(Rejected::Hidden), "{raw}");
        }
    }

    #[test]
    fn ordinary_paths_decode_once() {
        assert_eq!(normalize("/a//./b%20c/%252e%252e?x=/../").unwrap().segments, ["a", "b c", "%2e%2e"]);
        assert!(normalize("/").unwrap().segments.is_empty());
        assert!(normalize("").unwrap().segments.is_empty());
    }

    #[test]
    fn extensions() {
        assert!(has_extension("app.js"));
        assert!(!has_extension("about"));
        assert!(!has_extension("trailing."));
        assert!(!has_extension(".env"));
    }

    #[test]
    fn fingerprint_rule_examples() {
        for yes in ["app.3f9a1c2b.js", "index-BpX7k2Qa.css", "chunk.0123456789abcdef0123.js", "a-b-Ab_3defgh.mjs"] {
            assert!(is_fingerprinted(yes), "{yes}");
        }
        for no in [
            "app.js",
            "3f9a1c2b.js",
            "chunk-vendors.js",
            "jquery-3.7.1.min.js",
            "img-20240101.png",
            "app.abcdefgh.js",
            "app.3f9a1c2.js",
            "noext",
        ] {
            assert!(!is_fingerprinted(no), "{no}");
        }
    }

    proptest! {
        /// Whatever is asked, an accepted path is a list of plain names: joining it under a
        /// root can never leave the root.
        #[test]
        fn never_escapes_the_root(raw in "(/|%2[eEfF]|%5[cC]|%00|\\.|\\\\|[a-z]|%[0-9a-fA-F]{2}){0,24}") {
            if let Ok(n) = normalize(&raw) {
                let root = std::path::Path::new("/srv/app");
                let mut p = root.to_path_buf();
                for s in &n.segments {
                    prop_assert!(!s.is_empty() && s != "." && s != "..");
                    prop_assert!(!s.contains(['/', '\\', '\0']));
                    prop_assert!(!s.starts_with('.'));
                    p.push(s);
                }
                prop_assert!(p.starts_with(root));
                prop_assert!(p.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))));
            }
        }

        #[test]
        fn fingerprint_never_panics(name in "\\PC{0,80}") {
            let _ = is_fingerprinted(&name);
            let _ = has_extension(&name);
        }

        #[test]
        fn hex_hashes_are_recognised(stem in "[a-z]{1,10}", hash in "[0-9a-f]{8,32}", ext in "[a-z]{1,4}") {
            prop_assume!(hash.bytes().any(|b| b.is_ascii_digit()) && hash.bytes().any(|b| b.is_ascii_alphabetic()));
            let name = format!("{stem}.{hash}.{ext}");
            prop_assert!(is_fingerprinted(&name));
        }
    }
}
