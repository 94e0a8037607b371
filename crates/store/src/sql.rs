//! Small SQL text helpers: placeholder translation, statement splitting, safe identifiers.
//!
//! These are lexers, not parsers: they only need to know where string literals, quoted
//! identifiers, comments and PostgreSQL dollar-quoted bodies start and end, so that a `$1` or a
//! `;` inside them is left alone.

use marina_core::Error;

/// The lexical regions a scanner can be in.
enum Region {
    Code,
    Single,
    Double,
    LineComment,
    BlockComment,
    Dollar(String),
}

/// Walk `sql`, calling `code(i, c)` for every byte offset that is plain SQL code.
fn scan(sql: &str, mut code: impl FnMut(usize, char)) {
    let bytes = sql.as_bytes();
    let mut region = Region::Code;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        match &region {
            Region::Code => match c {
                '\'' => region = Region::Single,
                '"' => region = Region::Double,
                '-' if bytes.get(i + 1) == Some(&b'-') => {
                    region = Region::LineComment;
                    i += 1;
                }
                '/' if bytes.get(i + 1) == Some(&b'*') => {
                    region = Region::BlockComment;
                    i += 1;
                }
                '$' => {
                    // `$tag$` or `$$` opens a dollar-quoted body; `$1` is a placeholder.
                    let tag_end = sql[i + 1..]
                        .char_indices()
                        .find(|&(_, ch)| !(ch.is_ascii_alphanumeric() || ch == '_'))
                        .map(|(j, _)| i + 1 + j);
                    let is_tag = match tag_end {
                        Some(end) => bytes[end] == b'$' && !bytes[i + 1..end].first().is_some_and(u8::is_ascii_digit),
                        None => false,
                    };
                    if is_tag {
                        let end = tag_end.unwrap_or(i);
                        region = Region::Dollar(sql[i..=end].to_string());
                        i = end;
                    } else {
                        code(i, c);
                    }
                }
                _ => {
                    code(i, c);
                }
            },
            Region::Single if c == '\'' => region = Region::Code,
            Region::Double if c == '"' => region = Region::Code,
            Region::LineComment if c == '\n' => region = Region::Code,
            Region::BlockComment if c == '*' && bytes.get(i + 1) == Some(&b'/') => {
                region = Region::Code;
                i += 1;
            }
            Region::Dollar(tag) if bytes[i..].starts_with(tag.as_bytes()) => {
                i += tag.len() - 1;
                region = Region::Code;
            }
            _ => {}
        }
        i += 1;
    }
}

/// Rewrite PostgreSQL-style `$1` placeholders as SQLite's `?1`.
///
/// SQLite does accept `$1`, but as a *named* parameter numbered by first appearance, so
/// `WHERE b = $2 AND a = $1` would bind the wrong values.
pub fn to_sqlite_placeholders(sql: &str) -> String {
    let mut dollars = Vec::new();
    scan(sql, |i, c| {
        if c == '$' && sql.as_bytes().get(i + 1).is_some_and(u8::is_ascii_digit) {
            dollars.push(i);
        }
    });
    if dollars.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for i in dollars {
        out.push_str(&sql[last..i]);
        out.push('?');
        last = i + 1;
    }
    out.push_str(&sql[last..]);
    out
}

/// Rewrite SQLite-style `?` and `?NNN` placeholders as PostgreSQL's `$n` (outside strings,
/// quoted names and comments), for SQL written for SQLite clients that runs on PostgreSQL.
pub fn question_marks_to_dollars(sql: &str) -> String {
    let mut marks = Vec::new();
    scan(sql, |i, c| {
        if c == '?' {
            marks.push(i);
        }
    });
    if marks.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + marks.len() * 2);
    let mut last = 0;
    let mut next = 0;
    for i in marks {
        out.push_str(&sql[last..i]);
        let digits = sql[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('$');
            out.push_str(&sql[i + 1..i + 1 + digits]);
            last = i + 1 + digits;
        } else {
            next += 1;
            out.push_str(&format!("${next}"));
            last = i + 1;
        }
    }
    out.push_str(&sql[last..]);
    out
}

/// Split a script into statements at top-level `;`, dropping empty ones (and comment-only
/// ones). Needed for files that opt out of the transaction: PostgreSQL runs a multi-statement
/// simple query as one implicit transaction, which `CREATE INDEX CONCURRENTLY` refuses.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut cuts = Vec::new();
    scan(sql, |i, c| {
        if c == ';' {
            cuts.push(i);
        }
    });
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts.into_iter().chain(std::iter::once(sql.len())) {
        let stmt = sql[start..end].trim();
        if has_code(stmt) {
            out.push(stmt.to_string());
        }
        start = (end + 1).min(sql.len());
    }
    out
}

/// Whether `sql` has anything besides whitespace and comments.
pub fn has_code(sql: &str) -> bool {
    let mut found = false;
    scan(sql, |_, c| {
        if !c.is_whitespace() {
            found = true;
        }
    });
    // A string literal or quoted identifier is code too, and `scan` does not report those.
    found || sql.trim_start().starts_with(['\'', '"', '$'])
}

/// Find a top-level transaction-control statement (`BEGIN;`, `COMMIT;`, `ROLLBACK;`,
/// `START TRANSACTION`, `END;`) in a migration script. The engine owns the transaction; such a
/// statement would commit half a migration. SQLite trigger bodies (`CREATE TRIGGER ... BEGIN
/// ...; END;`) are skipped: their inner `;` split them, and their closing `END` is not a
/// transaction statement.
pub fn find_transaction_control(sql: &str) -> Option<String> {
    let mut in_trigger = false;
    for stmt in split_statements(sql) {
        let words: Vec<String> = strip_comments(&stmt).split_whitespace().map(str::to_ascii_uppercase).collect();
        let Some(first) = words.first().map(String::as_str) else { continue };
        if in_trigger {
            if first == "END" && words.len() == 1 {
                in_trigger = false;
            }
            continue;
        }
        if first == "CREATE" && words.iter().any(|w| w == "TRIGGER") {
            // The body runs to a lone `END`, unless the whole trigger fit in this fragment.
            in_trigger = words.iter().any(|w| w == "BEGIN") && words.last().is_none_or(|w| w != "END");
            continue;
        }
        let control = matches!(first, "BEGIN" | "COMMIT" | "ROLLBACK" | "END")
            || (first == "START" && words.get(1).is_some_and(|w| w == "TRANSACTION"));
        // `ROLLBACK TO SAVEPOINT x` is fine inside a migration; plain forms are at most three
        // words (`BEGIN IMMEDIATE TRANSACTION`, `COMMIT WORK`).
        if control && words.len() <= 3 && !words.iter().any(|w| w == "TO") {
            return Some(stmt);
        }
    }
    None
}

fn strip_comments(stmt: &str) -> String {
    let mut out = String::new();
    let mut last = 0;
    let mut kept = Vec::new();
    scan(stmt, |i, _| {
        kept.push(i);
    });
    // Rebuild from the code positions, spacing over gaps (comments, literals).
    for i in kept {
        if i > last + 1 {
            out.push(' ');
        }
        out.push(stmt.as_bytes()[i] as char);
        last = i;
    }
    out
}

/// Turn an app name into the identifier part used for its PostgreSQL schema (`app_{part}`).
///
/// Lower-cases ASCII letters and maps `-` and `.` to `_`; anything else (quotes, spaces,
/// non-ASCII) is refused rather than guessed at, since two different names must never share
/// one schema.
///
/// # Errors
/// `APP_NAME_INVALID`, quoting the name and saying what is allowed.
pub fn app_ident(name: &str) -> Result<String, Error> {
    let bad = |why: &str| {
        Error::bad_request(
            "APP_NAME_INVALID",
            format!("app name '{name}' cannot name a database: {why} (expected letters, digits, '-', '_' or '.')"),
        )
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 50 {
        return Err(bad("it is longer than 50 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            '-' | '.' => out.push('_'),
            other => return Err(bad(&format!("it contains {other:?}"))),
        }
    }
    Ok(out)
}

/// Double-quote a PostgreSQL identifier. Callers pass only names built by [`app_ident`] or
/// constants, but quoting anyway keeps reserved words working.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn question_marks_become_dollars_outside_strings() {
        assert_eq!(
            question_marks_to_dollars("SELECT ?, '?', \"?\", ?3 -- ?\n, ?"),
            "SELECT $1, '?', \"?\", $3 -- ?\n, $2"
        );
    }

    #[test]
    fn placeholders_outside_literals_only() {
        assert_eq!(to_sqlite_placeholders("SELECT $2, $1"), "SELECT ?2, ?1");
        assert_eq!(
            to_sqlite_placeholders("SELECT '$1', \"$1\", $1 -- $1\n /* $1 */ $10"),
            "SELECT '$1', \"$1\", ?1 -- $1\n /* $1 */ ?10"
        );
        assert_eq!(to_sqlite_placeholders("SELECT $$ $1 $$, $1"), "SELECT $$ $1 $$, ?1");
        assert_eq!(to_sqlite_placeholders("SELECT $a$ ; $1 $a$"), "SELECT $a$ ; $1 $a$");
    }

    #[test]
    fn splitting_respects_literals_and_bodies() {
        let sql = "CREATE TABLE a (x TEXT DEFAULT ';');\n-- a comment; here\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE a (x TEXT DEFAULT ';')".to_string(),
                "-- a comment; here\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql".to_string(),
            ]
        );
        assert!(split_statements("-- only a comment\n;;").is_empty());
    }

    #[test]
    fn transaction_control_is_found_but_triggers_are_not() {
        assert!(find_transaction_control("BEGIN;\nCREATE TABLE a(x int);\nCOMMIT;").is_some());
        assert!(find_transaction_control("CREATE TABLE a(x int);\n-- c\ncommit;").is_some());
        assert!(find_transaction_control("START TRANSACTION; SELECT 1;").is_some());
        let trigger = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE b SET n = n + 1;\nEND;";
        assert!(find_transaction_control(trigger).is_none());
        assert!(find_transaction_control(&format!("{trigger}\nCOMMIT;")).is_some());
        assert!(find_transaction_control("CREATE TABLE a(x int); ROLLBACK TO SAVEPOINT s;").is_none());
    }

    #[test]
    fn app_identifiers() {
        assert_eq!(app_ident("Todo-App.v2").unwrap(), "todo_app_v2");
        for bad in ["", "a b", "x\"y", ".hidden", "ünï", "a;drop"] {
            let err = app_ident(bad).unwrap_err();
            assert_eq!(err.code(), "APP_NAME_INVALID", "{bad}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    proptest! {
        #[test]
        fn lexers_never_panic(s in "\\PC{0,80}") {
            let _ = to_sqlite_placeholders(&s);
            let _ = split_statements(&s);
            let _ = find_transaction_control(&s);
        }

        #[test]
        fn plain_statements_split_back(parts in proptest::collection::vec("[A-Za-z0-9 (),=*]{1,20}", 1..6)) {
            let parts: Vec<String> = parts.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
            let script = parts.join(";\n");
            prop_assert_eq!(split_statements(&script), parts);
        }

        #[test]
        fn translation_only_touches_dollar_digits(s in "[a-z $0-9,]{0,40}") {
            let out = to_sqlite_placeholders(&s);
            prop_assert_eq!(out.replace('?', "$"), s.replace('?', "$"));
        }
    }
}
