//! Text search over a prefix's entries (Buntime's `/indexes` and `/search`): an index names a
//! key prefix and the fields (dot-paths into the values) whose text is searched.
//!
//! Why a scan and not FTS5 / `tsvector`: a real full-text index has to be kept in step with
//! every write path (set, atomic, delete, expiry, queues' undelivered keys) on two databases;
//! the scan gives Buntime's API and matching rules now, at a cost proportional to the entries
//! under the prefix, bounded by [`SCAN_CAP`]. Results come in key order, not ranked.
//!
//! Query: words are matched case-insensitively against the words of the indexed fields
//! (letters and digits; everything else separates words); every word must occur (AND);
//! `word*` matches words starting with `word`; `"two words"` must occur next to each other.

use http::StatusCode;
use marina_core::Error;
use serde_json::{Value as Json, json};

use super::key::{self, Key};
use super::{Entry, Filter, ListOptions, Namespace, Selector, now_ms};
use crate::value::Value;

/// Most entries one search reads before it stops (its results are then the matches among them).
pub const SCAN_CAP: usize = 10_000;

/// A declared index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    /// The key prefix it covers.
    pub prefix: Key,
    /// Dot-paths into the values.
    pub fields: Vec<String>,
    /// Buntime's tokenizer name, kept as given (matching is always the rule above).
    pub tokenize: Option<String>,
}

impl IndexDef {
    /// `{prefix, fields, tokenize}`.
    pub fn to_json(&self) -> Json {
        json!({ "prefix": key::key_to_json(&self.prefix), "fields": self.fields, "tokenize": self.tokenize })
    }
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// One part of a query.
#[derive(Debug, PartialEq)]
enum Term {
    Word(String),
    Prefix(String),
    Phrase(Vec<String>),
}

fn parse_query(q: &str) -> Result<Vec<Term>, Error> {
    let mut terms = Vec::new();
    for (i, chunk) in q.split('"').enumerate() {
        if i % 2 == 1 {
            let phrase: Vec<String> = words(chunk).collect();
            if !phrase.is_empty() {
                terms.push(Term::Phrase(phrase));
            }
            continue;
        }
        for raw in chunk.split_whitespace() {
            let star = raw.ends_with('*');
            let ws: Vec<String> = words(raw).collect();
            let n = ws.len();
            for (j, w) in ws.into_iter().enumerate() {
                terms.push(if star && j + 1 == n { Term::Prefix(w) } else { Term::Word(w) });
            }
        }
    }
    if terms.is_empty() {
        return Err(Error::bad_request("KV_SEARCH_INVALID", "query: needs at least one word")
            .with_data(json!({ "path": "query" })));
    }
    Ok(terms)
}

fn at_path<'v>(value: &'v Json, path: &str) -> Option<&'v Json> {
    path.split('.').try_fold(value, |v, p| match v {
        Json::Object(m) => m.get(p),
        Json::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn collect_text(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::String(s) => out.extend(words(s)),
        Json::Number(n) => out.push(n.to_string()),
        Json::Bool(b) => out.push(b.to_string()),
        Json::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Json::Object(m) => m.values().for_each(|x| collect_text(x, out)),
        Json::Null => {}
    }
}

fn matches(terms: &[Term], fields: &[String], value: &Json) -> bool {
    let mut text = Vec::new();
    for f in fields {
        if let Some(v) = at_path(value, f) {
            collect_text(v, &mut text);
        }
        // A phrase never spans two fields.
        text.push(String::new());
    }
    terms.iter().all(|t| match t {
        Term::Word(w) => text.iter().any(|x| x == w),
        Term::Prefix(p) => text.iter().any(|x| x.starts_with(p.as_str())),
        Term::Phrase(ws) => text.windows(ws.len()).any(|win| win == ws.as_slice()),
    })
}

impl Namespace {
    /// Declare (or redeclare) the index of `prefix`.
    ///
    /// # Errors
    /// `KV_KEY_*`; `KV_INDEX_INVALID` for no fields or an empty field; store errors.
    pub async fn create_index(&self, prefix: Key, fields: Vec<String>, tokenize: Option<String>) -> Result<(), Error> {
        self.check_key(&prefix, "prefix", true)?;
        if fields.is_empty() || fields.iter().any(|f| f.trim().is_empty()) {
            return Err(Error::bad_request(
                "KV_INDEX_INVALID",
                "options.fields: At least one field is required (a non-empty list of field paths such as \"title\" or \"author.name\")",
            )
            .with_data(json!({ "path": "options.fields" })));
        }
        let fields_json = serde_json::to_string(&fields).unwrap_or_default();
        self.store()
            .execute(
                "INSERT INTO kv_indexes (ns, prefix, fields, tokenize, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (ns, prefix) DO UPDATE SET fields = excluded.fields, tokenize = excluded.tokenize",
                &[
                    self.name().into(),
                    Value::Blob(key::encode(&prefix)),
                    fields_json.into(),
                    tokenize.map_or(Value::Null, Value::from),
                    Value::Integer(now_ms()),
                ],
            )
            .await?;
        Ok(())
    }

    /// The indexes of this namespace, in prefix order.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list_indexes(&self) -> Result<Vec<IndexDef>, Error> {
        let rows = self
            .store()
            .query(
                "SELECT prefix, fields, tokenize FROM kv_indexes WHERE ns = $1 ORDER BY prefix",
                &[self.name().into()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let raw: Vec<u8> = r.get("prefix")?;
                let fields: String = r.get("fields")?;
                Ok(IndexDef {
                    prefix: key::decode(&raw)?,
                    fields: serde_json::from_str(&fields).unwrap_or_default(),
                    tokenize: r.get("tokenize")?,
                })
            })
            .collect()
    }

    /// Remove the index of `prefix`; whether there was one.
    ///
    /// # Errors
    /// Store errors.
    pub async fn remove_index(&self, prefix: &Key) -> Result<bool, Error> {
        let n = self
            .store()
            .execute(
                "DELETE FROM kv_indexes WHERE ns = $1 AND prefix = $2",
                &[self.name().into(), Value::Blob(key::encode(prefix))],
            )
            .await?;
        Ok(n > 0)
    }

    /// Entries under `prefix` whose indexed fields match `query` (and `filter`), at most `limit`,
    /// in key order.
    ///
    /// # Errors
    /// `KV_INDEX_NOT_FOUND` (404) when `prefix` has no index; `KV_SEARCH_INVALID`,
    /// `KV_LIMIT_INVALID`; store errors.
    pub async fn search(
        &self,
        prefix: &Key,
        query: &str,
        limit: Option<usize>,
        filter: Option<&Filter>,
    ) -> Result<Vec<Entry>, Error> {
        let limit = self.clamp_limit(limit)?;
        let terms = parse_query(query)?;
        let Some(index) = self.list_indexes().await?.into_iter().find(|i| &i.prefix == prefix) else {
            return Err(Error::new(
                StatusCode::NOT_FOUND,
                "KV_INDEX_NOT_FOUND",
                format!("prefix {}: no index; create one with POST /indexes", key::key_to_json(prefix)),
            )
            .with_data(json!({ "path": "prefix" })));
        };
        let mut opts = ListOptions {
            selector: Selector { prefix: Some(prefix.clone()), ..Default::default() },
            limit: Some(self.limits().max_list_limit),
            filter: filter.cloned(),
            ..Default::default()
        };
        let (mut found, mut scanned) = (Vec::new(), 0);
        loop {
            let page = self.list(&opts).await?;
            scanned += page.entries.len();
            for e in page.entries {
                if matches(&terms, &index.fields, &e.value) {
                    found.push(e);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            match page.cursor {
                Some(c) if scanned < SCAN_CAP => opts.cursor = Some(c),
                _ => return Ok(found),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_match_words_prefixes_and_phrases() {
        let v = json!({ "title": "The Rust Book", "author": { "name": "Steve Klabnik" }, "tags": ["lang", "Systems"] });
        let fields = vec!["title".to_string(), "author.name".to_string(), "tags".to_string()];
        let m = |q: &str| matches(&parse_query(q).unwrap(), &fields, &v);
        assert!(m("rust"));
        assert!(m("RUST klabnik"));
        assert!(m("syst*"));
        assert!(m("\"rust book\""));
        assert!(!m("\"book rust\""));
        assert!(!m("\"book steve\""), "a phrase does not span fields");
        assert!(!m("rust python"));
        assert!(!m("rus"));
        assert!(parse_query("  ** ").is_err());
    }
}
