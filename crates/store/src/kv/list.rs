//! Range reads: list (prefix, start/end, reverse, limit, cursor pages, where-filters) and count.

use base64::Engine as _;
use http::StatusCode;
use marina_core::Error;

use super::key::{self, Key};
use super::{DEFAULT_LIST_LIMIT, Entry, Filter, LIVE, Namespace, entry_of, limit_error, now_ms};
use crate::value::{Row, Value};

/// Which keys a list, count or delete covers.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Strict descendants of this key.
    pub prefix: Option<Key>,
    /// From this key (inclusive).
    pub start: Option<Key>,
    /// Up to this key (exclusive).
    pub end: Option<Key>,
}

impl Selector {
    /// The half-open byte range `[lo, hi)`.
    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        let (mut lo, mut hi) = match &self.prefix {
            Some(p) => key::descendants(p),
            // Every encoded key starts with a tag byte below 0xFF.
            None => (Vec::new(), vec![0xFF]),
        };
        if let Some(s) = &self.start {
            lo = lo.max(key::encode(s));
        }
        if let Some(e) = &self.end {
            hi = hi.min(key::encode(e));
        }
        (lo, hi)
    }
}

/// A list request.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Which keys.
    pub selector: Selector,
    /// Page size (default [`DEFAULT_LIST_LIMIT`], at most [`KvLimits::max_list_limit`]).
    pub limit: Option<usize>,
    /// Newest key first.
    pub reverse: bool,
    /// Continue after the page that returned this cursor.
    pub cursor: Option<String>,
    /// Only entries whose value passes.
    pub filter: Option<Filter>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The entries, in key order (reversed when asked).
    pub entries: Vec<Entry>,
    /// Where the next page starts (`None` when there is none).
    pub cursor: Option<String>,
    /// Whether more entries follow.
    pub has_more: bool,
}

impl Namespace {
    pub(crate) fn clamp_limit(&self, limit: Option<usize>) -> Result<usize, Error> {
        let max = self.limits().max_list_limit;
        match limit {
            None => Ok(DEFAULT_LIST_LIMIT.min(max)),
            Some(0) => Err(Error::bad_request("KV_LIMIT_INVALID", "limit must be a positive number (at least 1)")
                .with_data(serde_json::json!({ "path": "limit" }))),
            Some(n) if n > max => Err(limit_error(
                StatusCode::BAD_REQUEST,
                "KV_LIMIT_INVALID",
                "maxListLimit",
                format!("limit: {n} is above the limit (maxListLimit) of {max}"),
            )),
            Some(n) => Ok(n),
        }
    }

    async fn scan(&self, lo: &[u8], hi: &[u8], reverse: bool, n: usize) -> Result<Vec<Row>, Error> {
        let order = if reverse { "DESC" } else { "ASC" };
        self.store()
            .query(
                &format!(
                    "SELECT key, value, versionstamp FROM kv_entries WHERE ns = $1 AND key >= $3 AND key < $4 AND {LIVE} ORDER BY key {order} LIMIT $5"
                ),
                &[
                    self.ns.as_ref().into(),
                    Value::Integer(now_ms()),
                    Value::Blob(lo.to_vec()),
                    Value::Blob(hi.to_vec()),
                    Value::Integer(n as i64),
                ],
            )
            .await
    }

    /// One page of entries.
    ///
    /// # Errors
    /// `KV_KEY_*`, `KV_LIMIT_INVALID`, `KV_CURSOR_INVALID`; store errors.
    pub async fn list(&self, opts: &ListOptions) -> Result<ListPage, Error> {
        let limit = self.clamp_limit(opts.limit)?;
        for (k, f) in [(&opts.selector.prefix, "prefix"), (&opts.selector.start, "start"), (&opts.selector.end, "end")]
        {
            if let Some(k) = k {
                self.check_key(k, f, f == "prefix")?;
            }
        }
        let (mut lo, mut hi) = opts.selector.range();
        if let Some(c) = &opts.cursor {
            let after = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| {
                Error::bad_request("KV_CURSOR_INVALID", "cursor: not a cursor returned by a previous page")
                    .with_data(serde_json::json!({ "path": "cursor" }))
            })?;
            if opts.reverse {
                hi = hi.min(after);
            } else {
                let mut next = after;
                next.push(0);
                lo = lo.max(next);
            }
        }
        let mut entries = Vec::new();
        let mut has_more = false;
        let chunk = if opts.filter.is_some() { (limit + 1).max(256) } else { limit + 1 };
        'scan: while lo < hi {
            let rows = self.scan(&lo, &hi, opts.reverse, chunk).await?;
            let exhausted = rows.len() < chunk;
            for r in &rows {
                let raw: Vec<u8> = r.get("key")?;
                if opts.reverse {
                    hi = raw.clone();
                } else {
                    lo = raw.clone();
                    lo.push(0);
                }
                let e = entry_of(r)?;
                if opts.filter.as_ref().is_none_or(|f| f.matches(&e.value)) {
                    if entries.len() == limit {
                        has_more = true;
                        break 'scan;
                    }
                    entries.push(e);
                }
            }
            if exhausted {
                break;
            }
        }
        let cursor = if has_more {
            entries.last().map(|e| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key::encode(&e.key)))
        } else {
            None
        };
        Ok(ListPage { entries, cursor, has_more })
    }

    /// How many live entries the selector covers (and pass the filter).
    ///
    /// # Errors
    /// `KV_KEY_*`; store errors.
    pub async fn count(&self, selector: &Selector, filter: Option<&Filter>) -> Result<u64, Error> {
        let (lo, hi) = selector.range();
        if let Some(f) = filter {
            let mut n = 0;
            let mut opts = ListOptions {
                selector: selector.clone(),
                limit: Some(self.limits().max_list_limit),
                filter: Some(f.clone()),
                ..Default::default()
            };
            loop {
                let page = self.list(&opts).await?;
                n += page.entries.len() as u64;
                match page.cursor {
                    Some(c) => opts.cursor = Some(c),
                    None => return Ok(n),
                }
            }
        }
        let row = self
            .store()
            .query_opt(
                &format!("SELECT COUNT(*) AS n FROM kv_entries WHERE ns = $1 AND key >= $3 AND key < $4 AND {LIVE}"),
                &[self.ns.as_ref().into(), Value::Integer(now_ms()), Value::Blob(lo), Value::Blob(hi)],
            )
            .await?;
        Ok(row.map(|r| r.get::<i64>("n")).transpose()?.unwrap_or(0) as u64)
    }
}
