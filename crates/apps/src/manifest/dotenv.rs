//! An app's `.env` file, read as Buntime reads it.

use std::collections::BTreeMap;

use super::report::MAX_QUOTED_KEY_CHARS;

/// Parse a `.env` file as Buntime does: `KEY=VALUE` lines, `#` comments and blank lines skipped,
/// one layer of matching `'`/`"` around the value stripped, no interpolation. A leading
/// `export ` is accepted (shell habit). Lines without `=` are skipped with a warning.
///
/// Not `dotenvy`: it expands `${VAR}` and processes escapes inside double quotes, so the same
/// `.env` would give a Buntime app different values.
pub fn parse_dotenv(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut vars = BTreeMap::new();
    let mut warnings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            let shown: String = raw.chars().take(MAX_QUOTED_KEY_CHARS).collect();
            let cut = if shown.len() < raw.len() { "…" } else { "" };
            warnings.push(format!("line {} is ignored: expected KEY=VALUE, found {shown:?}{cut}", i + 1));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            warnings.push(format!("line {} is ignored: the key before `=` is empty", i + 1));
            continue;
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)).filter(|_| value.len() >= 2))
            .unwrap_or(value);
        vars.insert(key.to_string(), unquoted.to_string());
    }
    (vars, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_as_buntime_reads_it() {
        let (vars, warnings) =
            parse_dotenv("# c\n\nA=1\nB=\"two words\"\nC='x'\nexport D = y \nE=a=b\nnoequals\nF=\"\n");
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x");
        assert_eq!(vars["D"], "y");
        assert_eq!(vars["E"], "a=b");
        assert_eq!(vars["F"], "\"");
        assert_eq!(warnings, vec!["line 8 is ignored: expected KEY=VALUE, found \"noequals\""]);
    }
}
