//! What is wrong with a manifest, said well: the problem and error types (with the exact text
//! `marina check` prints and the 500 body an app answers with), the parser messages, value
//! descriptions, key paths, the bounded "did you mean" suggester and the caps on how much one
//! manifest may report.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path inside the file (`env.PORT`, `publicRoutes.GET[1]`, `instances.min`); empty
    /// when the problem is about the whole document (a syntax error, a non-map top level).
    pub path: String,
    /// What was wrong: what was found (quoted) and what was expected.
    pub message: String,
}

/// Every problem found in one manifest file. Its `Display` is the exact text `marina check`
/// prints for the file; it converts into the 500 `APP_MANIFEST_INVALID` error an app with a bad
/// manifest answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file the problems are in.
    pub file: PathBuf,
    /// All problems, in key order (never empty).
    pub problems: Vec<Problem>,
    /// Warnings found while reading the same file, so a typo (`tll`) is shown beside the error
    /// it causes.
    pub warnings: Vec<String>,
    /// The file was not read at all: it leads outside the app dir, is not a regular file or is
    /// too large ([`marina_core::app_file`]). Answered as `APP_FILE_REFUSED`, and its message
    /// never quotes the file.
    pub refused: bool,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        if self.refused {
            writeln!(f, "error: refused app file {}", self.file.display())?;
        } else {
            writeln!(
                f,
                "error: invalid app manifest {} ({n} problem{})",
                self.file.display(),
                if n == 1 { "" } else { "s" }
            )?;
        }
        for p in &self.problems {
            if p.path.is_empty() {
                writeln!(f, "  - {}", p.message)?;
            } else {
                writeln!(f, "  - `{}`: {}", p.path, p.message)?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {}: {w}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

impl From<ManifestError> for marina_core::Error {
    fn from(err: ManifestError) -> Self {
        let first = err
            .problems
            .first()
            .map(|p| if p.path.is_empty() { p.message.clone() } else { format!("`{}`: {}", p.path, p.message) });
        let more = err.problems.len().saturating_sub(1);
        let errors: Vec<Value> = err.problems.iter().map(|p| json!({ "path": p.path, "message": p.message })).collect();
        if err.refused {
            let why = err.problems.first().map(|p| p.message.as_str()).unwrap_or("refused");
            return marina_core::Error::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "APP_FILE_REFUSED",
                format!("app file {} refused: {why}", err.file.display()),
            )
            .with_data(json!({ "file": err.file.display().to_string(), "errors": errors }));
        }
        let mut message = format!("invalid app manifest {}", err.file.display());
        if let Some(first) = first {
            message.push_str(": ");
            message.push_str(&first);
        }
        if more > 0 {
            message.push_str(&format!(" (and {more} more)"));
        }
        marina_core::Error::new(http::StatusCode::INTERNAL_SERVER_ERROR, "APP_MANIFEST_INVALID", message)
            .with_data(json!({ "file": err.file.display().to_string(), "errors": errors }))
    }
}

/// Keep the first [`MAX_REPORTED`] items and say how many more there were.
pub(super) fn cap<T>(items: &mut Vec<T>, more: impl Fn(usize) -> T) {
    if items.len() > MAX_REPORTED {
        let n = items.len() - MAX_REPORTED;
        items.truncate(MAX_REPORTED);
        items.push(more(n));
    }
}

/// serde-saphyr's plain message (no source snippet) with the position spelled out first.
pub(super) fn yaml_error_message(e: &serde_saphyr::Error) -> String {
    let plain = e.without_snippet().to_string();
    let plain = plain.trim();
    match e.location() {
        Some(loc) if loc.line() > 0 => {
            let at = format!("line {}, column {}", loc.line(), loc.column());
            // Drop the library's own "at line X column Y" suffix so the position is said once.
            let msg = strip_location_suffix(plain);
            // The library's advice names its own API, which means nothing to a manifest author.
            let msg = msg.split(", set DuplicateKeyPolicy").next().unwrap_or(msg);
            format!("{at}: invalid YAML: {msg}")
        }
        _ => format!("invalid YAML: {plain}"),
    }
}

fn strip_location_suffix(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].trim_end_matches([',', ' ']),
        None => msg,
    }
}

/// serde_json's message without its trailing " at line L column C".
pub(super) fn json_error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    strip_location_suffix(&s).to_string()
}

/// What a value is, quoted, for "found ..." in messages.
pub fn describe(value: &Value) -> String {
    fn clip(s: String) -> String {
        if s.chars().count() > 48 { format!("{}…", s.chars().take(47).collect::<String>()) } else { s }
    }
    match value {
        Value::Null => "nothing (null)".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {}", clip(Value::String(s.clone()).to_string())),
        Value::Array(_) => format!("a list {}", clip(value.to_string())),
        Value::Object(_) => format!("a map {}", clip(value.to_string())),
    }
}

/// A key path segment: `.key` for plain names, `["a.b"]` for anything else.
pub(super) fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", Value::String(key.to_string())),
    }
}

/// Format a duration for messages: whole seconds as `30s`, else milliseconds.
pub(super) fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Longest key the "did you mean" suggester looks at: a typo of a known key is short, and the
/// edit distance costs `len(key) × len(candidate)` per candidate.
pub const MAX_SUGGEST_KEY_CHARS: usize = 64;
/// Most candidates the suggester compares against.
pub const MAX_SUGGEST_CANDIDATES: usize = 64;
/// Most problems and most warnings one manifest reports (the rest are counted in a last line),
/// so a manifest of 100,000 unknown keys does not become 100,000 log lines and a huge error body.
pub const MAX_REPORTED: usize = 50;
/// Longest key quoted in a message; longer ones are cut with `…`.
pub(super) const MAX_QUOTED_KEY_CHARS: usize = 64;

/// The known key closest to `key` when it is close enough to be a likely typo. Bounded: keys
/// longer than [`MAX_SUGGEST_KEY_CHARS`] get no suggestion, and only the first
/// [`MAX_SUGGEST_CANDIDATES`] candidates are compared.
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    if key.chars().nth(MAX_SUGGEST_KEY_CHARS).is_some() {
        return None;
    }
    let known = &known[..known.len().min(MAX_SUGGEST_CANDIDATES)];
    let norm = |s: &str| s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect::<String>();
    let k = norm(key);
    let mut best: Option<(usize, &'a str)> = None;
    for &cand in known {
        let d = osa_distance(&k, &norm(cand));
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    let (d, cand) = best?;
    let limit = (k.chars().count().max(3) / 3).max(1);
    (d <= limit).then_some(cand)
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions (`tll` → `ttl`
/// is one edit), which is what typos usually are.
fn osa_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

pub(super) fn unknown_key_warning(path: &str, key: &str, known: &[&str]) -> String {
    let shown: String = if key.chars().nth(MAX_QUOTED_KEY_CHARS).is_some() {
        format!("{}…", key.chars().take(MAX_QUOTED_KEY_CHARS - 1).collect::<String>())
    } else {
        key.to_string()
    };
    let full = join_key(path, &shown);
    match suggest(key, known) {
        Some(s) => format!("unknown key `{full}` is ignored: did you mean `{}`?", join_key(path, s)),
        None => format!("unknown key `{full}` is ignored"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::tests::parse;
    use crate::manifest::{Format, KNOWN_KEYS, parse_str};

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(suggest("tll", &KNOWN_KEYS), Some("ttl"));
        assert_eq!(suggest("idle_timeout", &KNOWN_KEYS), Some("idleTimeout"));
        assert_eq!(suggest("maxbodysize", &KNOWN_KEYS), Some("maxBodySize"));
        assert_eq!(suggest("database", &KNOWN_KEYS), None);
        let m = parse("tll: 5\n").unwrap();
        assert_eq!(m.warnings, vec!["unknown key `tll` is ignored: did you mean `ttl`?"]);
    }

    #[test]
    fn the_suggester_and_the_reports_are_bounded() {
        // A key far longer than any typo gets no suggestion (and costs no edit distance).
        let long = "t".repeat(MAX_SUGGEST_KEY_CHARS + 1);
        assert_eq!(suggest(&long, &KNOWN_KEYS), None);
        let huge = "x".repeat(200_000);
        let m = parse_str(&format!("{{\"{huge}\": 1}}"), Format::Json, Path::new("/a/worker.config.json")).unwrap();
        assert_eq!(m.warnings.len(), 1);
        assert!(m.warnings[0].len() < 200, "{}", m.warnings[0]);
        // Thousands of unknown keys: the first MAX_REPORTED warnings and a count.
        let many: String = (0..5000).map(|i| format!("k{i}: 1\n")).collect();
        let m = parse(&many).unwrap();
        assert_eq!(m.warnings.len(), MAX_REPORTED + 1);
        assert_eq!(m.warnings.last().unwrap(), &format!("{} more warnings are not shown", 5000 - MAX_REPORTED));
        let bad: String = (0..500).map(|i| format!("env:\n  K{i}: [1]\n")).take(1).collect::<String>()
            + &(0..500).map(|i| format!("  K{i}x: [1]\n")).collect::<String>();
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.problems.len(), MAX_REPORTED + 1, "{e}");
    }

    #[test]
    fn converts_into_the_500_error_body() {
        let e = parse("ttl: 5x\nvisibility: secret\n").unwrap_err();
        let err: marina_core::Error = e.into();
        assert_eq!(err.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.code(), "APP_MANIFEST_INVALID");
        assert!(
            err.message().starts_with("invalid app manifest /apps/x/manifest.yaml: `ttl`: invalid duration \"5x\"")
        );
        assert!(err.message().ends_with("(and 1 more)"));
        let data = err.data().unwrap();
        assert_eq!(data["file"], "/apps/x/manifest.yaml");
        assert_eq!(data["errors"][1]["path"], "visibility");
    }
}
