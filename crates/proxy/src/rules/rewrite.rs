//! The `rewrite` template: `$1…$n`, `${n}`, `$name` and `${name}` replaced by capture groups.
//!
//! Parsed once when the rule is compiled, so a request only concatenates pieces. Not the
//! `regex` crate's `Captures::expand`: Buntime's `$1a` means group 1 then `a` (JavaScript
//! `replace` semantics), while `expand` would read it as a group named `1a`.

use regex::{Captures, Regex};

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Group(usize),
}

/// A parsed `rewrite` whose every group reference is known to exist in the rule's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text` against the groups of `regex`. The error says which reference is wrong.
    pub fn parse(text: &str, regex: &Regex) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '$' {
                if c == '?' || c == '#' || c.is_whitespace() || c.is_control() {
                    return Err(format!(
                        "character {c:?} at byte {i} is not allowed: the rewrite is a path (the query string is kept from the request)"
                    ));
                }
                lit.push(c);
                continue;
            }
            let group = match chars.peek().map(|&(_, c)| c) {
                Some('$') => {
                    chars.next();
                    lit.push('$');
                    continue;
                }
                Some('{') => {
                    chars.next();
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => name.push(c),
                            None => return Err(format!("'${{' at byte {i} is not closed with '}}'")),
                        }
                    }
                    resolve(&name, regex)?
                }
                Some(c) if c.is_ascii_digit() => {
                    let mut digits = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if !c.is_ascii_digit() {
                            break;
                        }
                        digits.push(c);
                        chars.next();
                    }
                    resolve(&digits, regex)?
                }
                Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                    let mut name = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if !(c.is_ascii_alphanumeric() || c == '_') {
                            break;
                        }
                        name.push(c);
                        chars.next();
                    }
                    resolve(&name, regex)?
                }
                _ => {
                    // A lone `$` (end of text, or before `/`) is literal, as in JavaScript.
                    lit.push('$');
                    continue;
                }
            };
            if !lit.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Group(group));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Self { pieces })
    }

    /// The rewritten path: groups that did not take part in the match become "" (as in
    /// Buntime), and a leading `/` is forced.
    pub fn expand(&self, caps: &Captures<'_>) -> String {
        let mut out = String::with_capacity(64);
        self.expand_into(caps, &mut out);
        out
    }

    /// [`Template::expand`], appended to `out` (the upstream URI is built in one buffer).
    pub fn expand_into(&self, caps: &Captures<'_>, out: &mut String) {
        let start = out.len();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Group(g) => out.push_str(caps.get(*g).map_or("", |m| m.as_str())),
            }
        }
        if !out[start..].starts_with('/') {
            out.insert(start, '/');
        }
    }

    /// Whether the template refers to any group (if not, no captures are needed per request).
    pub fn uses_groups(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Group(_)))
    }

    /// The template's text when it has no group (the rewritten path is constant).
    pub fn constant(&self) -> String {
        let mut out = String::new();
        self.constant_into(&mut out);
        out
    }

    /// [`Template::constant`], appended to `out`.
    pub fn constant_into(&self, out: &mut String) {
        let start = out.len();
        for piece in &self.pieces {
            if let Piece::Literal(s) = piece {
                out.push_str(s);
            }
        }
        if !out[start..].starts_with('/') {
            out.insert(start, '/');
        }
    }
}

/// A group number or name → its index, or why it does not exist.
fn resolve(name: &str, regex: &Regex) -> Result<usize, String> {
    if name.is_empty() {
        return Err("'${}' names no group".into());
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        let n: usize = name.parse().map_err(|_| format!("group number {name} is too large"))?;
        let groups = regex.captures_len() - 1;
        if n > groups {
            return Err(format!("'${n}' refers to group {n}, but the pattern has {groups} capture group(s)"));
        }
        return Ok(n);
    }
    regex
        .capture_names()
        .position(|n| n == Some(name))
        .ok_or_else(|| format!("'${name}' refers to a group the pattern does not name (write (?<{name}>...))"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pattern: &str, template: &str, path: &str) -> String {
        let re = Regex::new(pattern).unwrap();
        let t = Template::parse(template, &re).unwrap();
        t.expand(&re.captures(path).unwrap())
    }

    #[test]
    fn the_rewrite_table() {
        let table = [
            // pattern, rewrite, path, expected
            (r"^/api/(.*)$", "/v1/$1", "/api/users/7", "/v1/users/7"),
            (r"^/api/(.*)$", "v1/$1", "/api/x", "/v1/x"),
            (r"^/(\w+)/(\d+)$", "/$2/$1/$2", "/user/42", "/42/user/42"),
            (r"^/a(/b)?/(.*)$", "/x$1/$2", "/a/c", "/x/c"),
            (r"^/(.*)$", "/$1a", "/p", "/pa"),
            (r"^/(?<name>[^/]+)/(?<rest>.*)$", "/$rest/${name}", "/svc/deep/path", "/deep/path/svc"),
            (r"^/(.*)$", "/${1}0", "/p", "/p0"),
            (r"^/(.*)$", "/cost$$/$1", "/p", "/cost$/p"),
            (r"^/(.*)$", "/end$", "/p", "/end$"),
            (r"^/api", "", "/api/x", "/"),
            (r"^/(.*)$", "/%20$1", "/a%2Fb", "/%20a%2Fb"),
        ];
        for (pattern, template, path, want) in table {
            assert_eq!(run(pattern, template, path), want, "{pattern} {template} {path}");
        }
    }

    #[test]
    fn bad_templates_say_why() {
        let re = Regex::new(r"^/(a)/(?<b>.)").unwrap();
        for (t, needle) in [
            ("/$3", "has 2 capture group(s)"),
            ("/$nope", "does not name"),
            ("/${1", "not closed"),
            ("/${}", "names no group"),
            ("/x?y=1", "query string"),
            ("/a b", "not allowed"),
            ("/$99999999999999999999999", "too large"),
        ] {
            let err = Template::parse(t, &re).unwrap_err();
            assert!(err.contains(needle), "{t}: {err}");
        }
    }
}
