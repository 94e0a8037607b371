//! The `static` worker kind: files served by the runtime itself.
//!
//! An app whose entrypoint is `.html` needs no process: [`StaticSite`] serves the directory
//! that holds the entrypoint (as Buntime does, buntime.md §3.6), with what a production static
//! server owes its clients: `Content-Type` with charset, strong `ETag` + `Last-Modified` and
//! 304s, single byte ranges (206/416, `If-Range`), HEAD, precompressed `.br`/`.gz` siblings
//! chosen by `Accept-Encoding`, and `Cache-Control` by kind of file.
//!
//! Why not `tower-http`'s `ServeDir`: it has no `ETag`/`If-None-Match`, no rule that tells a
//! page navigation from an asset request for the SPA fallback, no fingerprint-aware
//! `Cache-Control`, and no in-memory cache for small files (the hot path here is a hash lookup
//! and a `Bytes` clone). Range parsing does come from a crate (`http-range-header`).
//!
//! Where marina deliberately differs from Buntime:
//! - SPA fallback only for page navigations to extension-less paths (see
//!   [`negotiate::is_navigation`]); `/app/missing.js` is a 404, not `index.html` with 200,
//!   so a broken deploy fails loudly instead of feeding HTML to a `<script>` tag.
//! - Traversal is refused twice: [`path::normalize`] rejects `..`, encoded separators,
//!   backslashes and NUL (403), then the canonical path (symlinks resolved) must lie inside
//!   the canonical root (403 otherwise). Dotfiles (`.env`, `.git`) and the app's own manifest
//!   files beside the entrypoint (`manifest.yaml` may hold non-public `env`) are 404.
//!
//! # Cache-Control
//! HTML: `no-cache` (always revalidated, so a deploy is picked up at once). A fingerprinted
//! name ([`path::is_fingerprinted`]): `public, max-age=31536000, immutable`. Anything else:
//! `public, max-age=0, must-revalidate` (cached, but revalidated with the ETag each use).
//!
//! # Injection and the per-request base
//! The site keeps the app's [`Injection`] as a template: whether a `<base>` is injected and
//! which env vars go into `window.__env__`. The href is per request, because one version is
//! reachable as `/todo@1` and `/todo`: [`StaticSite::serve`] reads it from the `x-base` request
//! header (the header Buntime sets for workers), [`StaticSite::serve_with_base`] takes it
//! explicitly. Injected documents get their own ETag (it includes a hash of the injection) and
//! are always sent uncompressed: precompressed siblings of HTML are ignored while injection
//! is on, since the injected bytes differ from what was compressed.
//!
//! # Performance
//! A bounded LRU (entries and bytes, [`CacheLimits`]) keyed by the raw request path holds the
//! resolved file's metadata, prebuilt header values and, for small files, the bytes of every
//! variant. A hit costs one hash lookup under a mutex and a `Bytes` clone. Entries are
//! revalidated against the disk (path resolution and `stat` of every variant, off the async
//! threads) at most once per [`CacheLimits::revalidate_after`] per path, by one request while
//! the others keep using the entry; [`StaticSite::invalidate`] drops everything at once.
//! Files above [`CacheLimits::max_file_bytes`] are kept open instead and read per request
//! (positional 64 KiB reads). Every file of at least [`CacheLimits::zero_copy_min_bytes`] also
//! marks its responses with a [`FileRegion`], which the server sends with `sendfile(2)` on plain
//! HTTP/1.1 connections (see [`marina_core::zerocopy`]; nginx does the same).

mod body;
pub mod negotiate;
pub mod path;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use lru::LruCache;
use marina_core::zerocopy::FileRegion;
use marina_core::{Body, Error};
use parking_lot::Mutex;

use crate::html::{self, Injection};
use negotiate::{Encoding, RangeAnswer};

/// Names in the app directory itself that belong to the runtime, never to the site.
const CONFIG_FILES: &[&str] = &[
    "manifest.yaml",
    "manifest.yml",
    "manifest.json",
    "manifest.jsonc",
    "buntime.json",
    "buntime.jsonc",
    "worker.config.json",
];

/// Per-entry room for injected variants (one per distinct `x-base`); bounds the bytes an
/// entry can grow to after it was weighed.
const MAX_INJECTED_VARIANTS: usize = 4;
/// A longer `x-base` is injected but its output is not cached.
const MAX_CACHED_BASE_LEN: usize = 256;

const CC_HTML: HeaderValue = HeaderValue::from_static("no-cache");
const CC_IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const CC_REVALIDATE: HeaderValue = HeaderValue::from_static("public, max-age=0, must-revalidate");

/// Bounds of a site's file cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most paths remembered.
    pub max_entries: usize,
    /// Most bytes of file content held (all variants, injected copies reserved up front).
    pub max_bytes: u64,
    /// Files larger than this are streamed from disk on every request instead of held.
    pub max_file_bytes: u64,
    /// How stale a cached entry may get before one request re-checks the disk.
    pub revalidate_after: Duration,
    /// Responses of at least this many bytes may be sent with `sendfile(2)` (their file is
    /// kept open). Below it, copying from memory costs less than the extra system call and the
    /// ~1.9k instructions of the placeholder body: at 16 KiB sendfile lost, at 64 KiB it won
    /// (server and client CPU per response 10–11 and 9 µs instead of 12–14 and 11; 256 KiB
    /// before; BENCHMARKS.md, "Static files: where the time goes"). nginx sends every size so.
    pub zero_copy_min_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_entries: 4096,
            max_bytes: 64 * 1024 * 1024,
            max_file_bytes: 512 * 1024,
            revalidate_after: Duration::from_secs(1),
            zero_copy_min_bytes: 64 * 1024,
        }
    }
}

/// The canonical places a site is served from, computed once the directory exists.
#[derive(Debug)]
struct Roots {
    /// The canonical app directory (where manifest files live).
    app_dir: PathBuf,
    /// The canonical directory of the entrypoint: the site root.
    root: PathBuf,
    /// The canonical entrypoint file.
    entry: PathBuf,
}

/// One representation of a file, with the header values it is sent with.
#[derive(Debug)]
struct Variant {
    path: PathBuf,
    len: u64,
    mtime: SystemTime,
    etag: HeaderValue,
    last_modified: HeaderValue,
    /// The content, when small enough to hold.
    data: Option<Bytes>,
    /// The open file: when the content is not held, or large enough for zero-copy sending.
    file: Option<Arc<fs::File>>,
}

/// What identifies a file's state on disk: change any of it and the entry is reloaded.
type Stamp = (PathBuf, [Option<(u64, i64, i64, u64)>; 3]);

/// A resolved file and everything needed to answer for it without touching the disk.
#[derive(Debug)]
struct FileEntry {
    stamp: Stamp,
    /// Milliseconds since the site's epoch when the disk was last checked.
    checked_ms: AtomicU64,
    is_html: bool,
    content_type: HeaderValue,
    cache_control: HeaderValue,
    /// Identity, br, gzip (index = [`Encoding`] as usize).
    variants: [Option<Arc<Variant>>; 3],
    /// Injected documents per `x-base`, HTML only.
    injected: Mutex<Vec<(String, Arc<Variant>)>>,
    weight: u64,
}

impl FileEntry {
    fn has_compressed(&self) -> bool {
        self.variants[1].is_some() || self.variants[2].is_some()
    }
}

/// The outcome of resolving a request path.
enum Resolved {
    File(Box<FileEntry>),
    Missing,
    Forbidden(&'static str),
}

struct Cache {
    lru: LruCache<Box<str>, Arc<FileEntry>>,
    bytes: u64,
}

/// A static site: one app version's files, built once and shared by all its requests.
pub struct StaticSite {
    app_dir: PathBuf,
    entrypoint: PathBuf,
    injection: Option<Injection>,
    limits: CacheLimits,
    roots: OnceLock<Arc<Roots>>,
    cache: Mutex<Cache>,
    epoch: Instant,
}

impl std::fmt::Debug for StaticSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticSite")
            .field("app_dir", &self.app_dir)
            .field("entrypoint", &self.entrypoint)
            .field("injection", &self.injection)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl StaticSite {
    /// A site for the app in `root` (the app directory) whose entrypoint is `entrypoint`
    /// (absolute, or relative to `root`). Files are served from the entrypoint's directory.
    ///
    /// Never fails: a missing directory or an entrypoint outside the app directory makes
    /// every request answer the error (404 / 500) until it is fixed; call [`StaticSite::check`]
    /// to report it at load time instead. `injection` is the app's template (see the module
    /// docs): its base, if any, is replaced by each request's.
    pub fn new(root: PathBuf, entrypoint: PathBuf, injection: Option<Injection>) -> Self {
        let entrypoint = if entrypoint.is_absolute() { entrypoint } else { root.join(entrypoint) };
        Self {
            app_dir: root,
            entrypoint,
            injection: injection.filter(|i| !i.is_empty()),
            limits: CacheLimits::default(),
            roots: OnceLock::new(),
            cache: Mutex::new(Cache { lru: LruCache::unbounded(), bytes: 0 }),
            epoch: Instant::now(),
        }
    }

    /// The same site with other cache bounds.
    pub fn with_cache_limits(mut self, limits: CacheLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Forget every cached file, e.g. after the caller saw the directory change.
    pub fn invalidate(&self) {
        let mut cache = self.cache.lock();
        cache.lru.clear();
        cache.bytes = 0;
    }

    /// Cached bytes and entries, for metrics and tests.
    pub fn cache_usage(&self) -> (usize, u64) {
        let cache = self.cache.lock();
        (cache.lru.len(), cache.bytes)
    }

    /// Whether the app directory and the entrypoint exist and the entrypoint lies inside the
    /// app directory.
    ///
    /// # Errors
    /// 404 `NOT_FOUND` when the directory or entrypoint is missing, 500
    /// `ENTRYPOINT_OUTSIDE_APP` when the entrypoint resolves outside the app directory.
    pub fn check(&self) -> Result<(), Error> {
        self.roots().map(|_| ())
    }

    fn roots(&self) -> Result<Arc<Roots>, Error> {
        if let Some(r) = self.roots.get() {
            return Ok(r.clone());
        }
        let app_dir = fs::canonicalize(&self.app_dir).map_err(|e| {
            Error::not_found(format!("app directory '{}' cannot be opened", self.app_dir.display()))
                .with_kind(marina_core::Source::Internal)
                .with_source(e)
        })?;
        let entry = fs::canonicalize(&self.entrypoint).map_err(|e| {
            Error::not_found(format!("entrypoint '{}' does not exist", self.entrypoint.display()))
                .with_kind(marina_core::Source::Internal)
                .with_source(e)
        })?;
        if !entry.starts_with(&app_dir) || !entry.is_file() {
            return Err(Error::internal(format!(
                "entrypoint '{}' resolves to '{}', expected a file inside the app directory '{}'",
                self.entrypoint.display(),
                entry.display(),
                app_dir.display()
            ))
            .with_data(serde_json::json!({ "code": "ENTRYPOINT_OUTSIDE_APP" })));
        }
        let root = entry.parent().map(Path::to_path_buf).unwrap_or_else(|| app_dir.clone());
        Ok(self.roots.get_or_init(|| Arc::new(Roots { app_dir, root, entry })).clone())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Answer a request. `raw_path` is the path below the app's prefix, still percent-encoded,
    /// starting with `/` (`/` is the entrypoint). The `<base>` href, when injected, comes from
    /// the `x-base` request header (empty when absent).
    ///
    /// # Errors
    /// 405 (with `Allow`), 403 for refused paths, 404 for missing files, 416 (with
    /// `Content-Range`) for unsatisfiable ranges, 500 when reading fails. The server renders them.
    pub async fn serve(&self, method: &Method, raw_path: &str, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        let base = headers.get(marina_core::headers::X_BASE).and_then(|v| v.to_str().ok()).unwrap_or("");
        self.serve_with_base(method, raw_path, headers, base).await
    }

    /// [`StaticSite::serve`] with the `x-base` given explicitly.
    pub async fn serve_with_base(
        &self,
        method: &Method,
        raw_path: &str,
        headers: &HeaderMap,
        base: &str,
    ) -> Result<Response<Body>, Error> {
        let head = method == Method::HEAD;
        if method != Method::GET && !head {
            return Err(Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("method {method} is not allowed on a static app, expected GET or HEAD"),
            )
            .with_header(ALLOW, HeaderValue::from_static("GET, HEAD")));
        }
        let roots = self.roots()?;
        let key = raw_path.split(['?', '#']).next().unwrap_or("");
        let key = if key.is_empty() { "/" } else { key };

        let entry = match self.lookup(key, &roots).await? {
            Some(entry) => entry,
            None => {
                // A hidden name is a 404 even for navigations: `/.env` must not look served.
                let normalized = path::normalize(key).ok();
                let last = normalized.as_ref().and_then(|n| n.last()).unwrap_or("");
                if normalized.is_none() || path::has_extension(last) || !negotiate::is_navigation(method, headers) {
                    return Err(Error::not_found(format!("no file at '{raw_path}'"))
                        .with_data(serde_json::json!({ "path": raw_path })));
                }
                self.lookup("/", &roots).await?.ok_or_else(|| {
                    Error::not_found(format!("no file at '{raw_path}' and the entrypoint is gone"))
                        .with_kind(marina_core::Source::Internal)
                })?
            }
        };
        self.respond(&entry, head, headers, base).await
    }

    /// The cached entry for `key`, loading or revalidating it as needed. `Ok(None)` = missing.
    async fn lookup(&self, key: &str, roots: &Arc<Roots>) -> Result<Option<Arc<FileEntry>>, Error> {
        let now = self.now_ms();
        let revalidate_ms = self.limits.revalidate_after.as_millis() as u64;
        let cached = self.cache.lock().lru.get(key).cloned();
        if let Some(entry) = cached {
            let checked = entry.checked_ms.load(Ordering::Relaxed);
            let fresh = now.saturating_sub(checked) < revalidate_ms;
            // Only the request that wins the swap re-checks; the rest serve the entry as is.
            if fresh || entry.checked_ms.compare_exchange(checked, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                return Ok(Some(entry));
            }
            let stamp = entry.stamp.clone();
            let resolved = self.resolve_blocking(key, roots, Some(stamp)).await?;
            return Ok(match resolved {
                None => Some(entry), // unchanged on disk
                Some(Resolved::File(fresh)) => Some(self.insert(key, *fresh)),
                Some(Resolved::Missing | Resolved::Forbidden(_)) => {
                    self.remove(key);
                    return self.lookup_uncached(key, roots).await;
                }
            });
        }
        self.lookup_uncached(key, roots).await
    }

    async fn lookup_uncached(&self, key: &str, roots: &Arc<Roots>) -> Result<Option<Arc<FileEntry>>, Error> {
        match self.resolve_blocking(key, roots, None).await? {
            Some(Resolved::File(entry)) => Ok(Some(self.insert(key, *entry))),
            Some(Resolved::Forbidden(why)) => Err(forbidden(key, why)),
            Some(Resolved::Missing) | None => Ok(None),
        }
    }

    /// Resolve and load off the async threads. With `unchanged_if`, returns `None` when the
    /// file's stamp still equals it (nothing reloaded).
    async fn resolve_blocking(
        &self,
        key: &str,
        roots: &Arc<Roots>,
        unchanged_if: Option<Stamp>,
    ) -> Result<Option<Resolved>, Error> {
        let normalized = match path::normalize(key) {
            Ok(n) => n,
            Err(path::Rejected::Traversal(why)) => return Err(forbidden(key, why)),
            Err(path::Rejected::Hidden) => return Ok(Some(Resolved::Missing)),
        };
        let roots = roots.clone();
        let limits = self.limits;
        let inject = self.injection.is_some();
        let now = self.now_ms();
        tokio::task::spawn_blocking(move || {
            let resolved = resolve(&roots, &normalized.segments);
            let file = match resolved {
                Ok(Some(file)) => file,
                Ok(None) => return Ok(Some(Resolved::Missing)),
                Err(why) => return Ok(Some(Resolved::Forbidden(why))),
            };
            let stamp = stamp_of(&roots, &file);
            if unchanged_if.as_ref() == Some(&stamp) {
                return Ok(None);
            }
            match load(&roots, &file, stamp, limits, inject, now) {
                Ok(entry) => Ok(Some(Resolved::File(Box::new(entry)))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Resolved::Missing)),
                Err(e) => Err(Error::internal(format!("reading '{}' failed", file.display())).with_source(e)),
            }
        })
        .await
        .map_err(|e| Error::internal("the file loader task failed").with_source(e))?
    }

    fn insert(&self, key: &str, entry: FileEntry) -> Arc<FileEntry> {
        let entry = Arc::new(entry);
        if entry.weight > self.limits.max_bytes || self.limits.max_entries == 0 {
            return entry;
        }
        let mut cache = self.cache.lock();
        if let Some(old) = cache.lru.put(key.into(), entry.clone()) {
            cache.bytes -= old.weight;
        }
        cache.bytes += entry.weight;
        while cache.lru.len() > self.limits.max_entries || cache.bytes > self.limits.max_bytes {
            match cache.lru.pop_lru() {
                Some((_, old)) => cache.bytes -= old.weight,
                None => break,
            }
        }
        entry
    }

    fn remove(&self, key: &str) {
        let mut cache = self.cache.lock();
        if let Some(old) = cache.lru.pop(key) {
            cache.bytes -= old.weight;
        }
    }

    /// The variant to send: an injected copy of HTML when injection is on, else the encoding
    /// the client prefers among those on disk.
    fn pick(&self, entry: &FileEntry, headers: &HeaderMap, base: &str) -> Result<(Arc<Variant>, Encoding), Error> {
        let identity =
            entry.variants[0].clone().ok_or_else(|| Error::internal("a file entry without its identity variant"))?;
        if let (true, Some(template)) = (entry.is_html, &self.injection) {
            let want = if template.injects_base() { base } else { "" };
            if let Some((_, v)) = entry.injected.lock().iter().find(|(b, _)| b == want) {
                return Ok((v.clone(), Encoding::Identity));
            }
            let inj = template.with_base(want);
            let source = match &identity.data {
                Some(d) if identity.len as usize <= html::MAX_INJECT_BODY => d.clone(),
                // Too large to inject: sent as is, like a worker's oversized HTML.
                _ => return Ok((identity, Encoding::Identity)),
            };
            let out = html::inject(&source, &inj);
            let variant = Arc::new(Variant {
                path: identity.path.clone(),
                len: out.len() as u64,
                mtime: identity.mtime,
                etag: etag_value(identity.len, identity.mtime, &format!("-i{:x}", inj.fingerprint())),
                last_modified: identity.last_modified.clone(),
                data: Some(out),
                file: None,
            });
            let mut injected = entry.injected.lock();
            if want.len() <= MAX_CACHED_BASE_LEN && injected.len() < MAX_INJECTED_VARIANTS {
                injected.push((want.to_string(), variant.clone()));
            }
            return Ok((variant, Encoding::Identity));
        }
        let enc = negotiate::choose_encoding(headers, entry.variants[1].is_some(), entry.variants[2].is_some());
        Ok((entry.variants[enc as usize].clone().unwrap_or(identity), enc))
    }

    async fn respond(
        &self,
        entry: &FileEntry,
        head: bool,
        req: &HeaderMap,
        base: &str,
    ) -> Result<Response<Body>, Error> {
        let (variant, enc) = self.pick(entry, req, base)?;
        let mut resp = Response::new(marina_core::body::empty());
        // Sized once for the up to nine headers below plus what the front adds on the way out
        // (`x-request-id`; with the gateway, three `RateLimit-*`, up to three CORS headers and
        // `Vary`): growing a HeaderMap rehashes every entry (~950 instructions under callgrind).
        *resp.headers_mut() = HeaderMap::with_capacity(20);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, entry.content_type.clone());
        h.insert(CACHE_CONTROL, entry.cache_control.clone());
        h.insert(ETAG, variant.etag.clone());
        h.insert(LAST_MODIFIED, variant.last_modified.clone());
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if entry.has_compressed() && !(entry.is_html && self.injection.is_some()) {
            h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if enc != Encoding::Identity {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(enc.suffix()));
        }

        let etag = variant.etag.to_str().unwrap_or("");
        let not_modified = if req.contains_key(IF_NONE_MATCH) {
            negotiate::none_match_hits(req.get_all(IF_NONE_MATCH).iter(), etag)
        } else if entry.is_html && self.injection.is_some() {
            // The file's date says nothing about the injected base or env: only the ETag does.
            false
        } else {
            req.get(IF_MODIFIED_SINCE).is_some_and(|v| negotiate::not_modified_since(v, variant.mtime))
        };
        if not_modified {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp.headers_mut().remove(CONTENT_TYPE);
            resp.headers_mut().remove(CONTENT_ENCODING);
            return Ok(resp);
        }

        let len = variant.len;
        let range = match req.get(RANGE) {
            Some(r) if req.get(IF_RANGE).is_none_or(|v| negotiate::if_range_holds(v, etag, variant.mtime)) => {
                negotiate::range_answer(r, len)
            }
            _ => RangeAnswer::Full,
        };
        let (start, end) = match range {
            RangeAnswer::Full => (0, len),
            RangeAnswer::Partial(s, e) => {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                let cr = HeaderValue::from_str(&format!("bytes {s}-{e}/{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0"));
                resp.headers_mut().insert(CONTENT_RANGE, cr);
                (s, e + 1)
            }
            RangeAnswer::Unsatisfiable => {
                let err = Error::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "RANGE_NOT_SATISFIABLE",
                    format!(
                        "range '{}' is outside the {len} bytes of the file",
                        req.get(RANGE).and_then(|v| v.to_str().ok()).unwrap_or("")
                    ),
                )
                .with_data(serde_json::json!({ "size": len }))
                .with_header(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).unwrap_or(HeaderValue::from_static("bytes */0")),
                )
                .with_header(ETAG, variant.etag.clone());
                return Err(err);
            }
        };
        resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(end - start));
        if head || start == end {
            return Ok(resp);
        }
        let region =
            variant.file.as_ref().map(|file| FileRegion { file: file.clone(), offset: start, len: end - start });
        let body = match (&variant.data, &region) {
            (Some(data), _) => marina_core::body::full(data.slice(start as usize..end as usize)),
            (None, Some(region)) => body::read_body(region),
            (None, None) => return Err(Error::internal("a file entry with neither its bytes nor its file")),
        };
        *resp.body_mut() = body;
        if let Some(region) = region.filter(|r| r.len >= self.limits.zero_copy_min_bytes) {
            resp.extensions_mut().insert(region);
        }
        Ok(resp)
    }
}

fn forbidden(raw: &str, why: &str) -> Error {
    Error::new(StatusCode::FORBIDDEN, "FORBIDDEN", format!("path '{raw}' is refused: it contains {why}"))
        .with_data(serde_json::json!({ "path": raw }))
}

/// Find the file for normalised segments. `Ok(None)` = nothing servable there; `Err` = the
/// path resolves outside the root (a symlink).
fn resolve(roots: &Roots, segments: &[String]) -> Result<Option<PathBuf>, &'static str> {
    if segments.is_empty() {
        return Ok(Some(roots.entry.clone()));
    }
    let mut candidate = roots.root.clone();
    candidate.extend(segments);
    let Some(mut real) = inside(roots, &candidate)? else { return Ok(None) };
    if real.is_dir() {
        let Some(index) = inside(roots, &real.join("index.html"))? else { return Ok(None) };
        real = index;
    }
    let Ok(meta) = fs::metadata(&real) else { return Ok(None) };
    if !meta.is_file() {
        return Ok(None);
    }
    let name = real.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if real.parent() == Some(roots.app_dir.as_path()) && CONFIG_FILES.contains(&name) {
        return Ok(None);
    }
    Ok(Some(real))
}

/// Canonicalise `p` and require it inside the root; a symlink target that is a dotfile is as
/// hidden as the dotfile itself.
fn inside(roots: &Roots, p: &Path) -> Result<Option<PathBuf>, &'static str> {
    let Ok(real) = fs::canonicalize(p) else { return Ok(None) };
    let Ok(rel) = real.strip_prefix(&roots.root) else { return Err("a link that leads outside the app directory") };
    if rel.components().any(|c| c.as_os_str().as_encoded_bytes().first() == Some(&b'.')) {
        return Ok(None);
    }
    Ok(Some(real))
}

/// A precompressed sibling (`foo.js.br`), when it exists, is a regular file, and stays inside
/// the root.
fn sibling(roots: &Roots, file: &Path, enc: Encoding) -> Option<(PathBuf, fs::Metadata)> {
    let ext = if enc == Encoding::Br { "br" } else { "gz" };
    let mut name = file.file_name()?.to_os_string();
    name.push(".");
    name.push(ext);
    let real = inside(roots, &file.with_file_name(name)).ok()??;
    let meta = fs::metadata(&real).ok()?;
    meta.is_file().then_some((real, meta))
}

fn meta_key(m: &fs::Metadata) -> (u64, i64, i64, u64) {
    (m.len(), m.mtime(), m.mtime_nsec(), m.ino())
}

fn stamp_of(roots: &Roots, file: &Path) -> Stamp {
    let id = fs::metadata(file).ok().map(|m| meta_key(&m));
    let br = sibling(roots, file, Encoding::Br).map(|(_, m)| meta_key(&m));
    let gz = sibling(roots, file, Encoding::Gzip).map(|(_, m)| meta_key(&m));
    (file.to_path_buf(), [id, br, gz])
}

fn etag_value(len: u64, mtime: SystemTime, suffix: &str) -> HeaderValue {
    let nanos = mtime.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos();
    HeaderValue::from_str(&format!("\"{len:x}-{nanos:x}{suffix}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// `hold`: keep the bytes in memory; `open`: keep the file open (see [`Variant::file`]).
fn variant(path: PathBuf, meta: &fs::Metadata, suffix: &str, hold: bool, open: bool) -> io::Result<Variant> {
    let file = if open || !hold { Some(body::open(&path)?) } else { None };
    // The file may have changed since the caller's stat: describe the file actually opened.
    let meta = match &file {
        Some(f) => f.metadata()?,
        None => meta.clone(),
    };
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let data = match (&file, hold) {
        (_, false) => None,
        (Some(f), true) => {
            let mut buf = Vec::with_capacity(meta.len() as usize);
            io::Read::read_to_end(&mut &**f, &mut buf)?;
            Some(Bytes::from(buf))
        }
        (None, true) => Some(Bytes::from(fs::read(&path)?)),
    };
    // The file may have changed between stat and read; the length must describe the bytes.
    let len = data.as_ref().map_or(meta.len(), |d| d.len() as u64);
    // Held bytes and a file that no longer matches them would disagree: drop the file then.
    let file = file.filter(|_| data.is_none() || len == meta.len());
    Ok(Variant {
        file,
        etag: etag_value(len, mtime, suffix),
        last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(mtime)).unwrap_or(HeaderValue::from_static("")),
        path,
        len,
        mtime,
        data,
    })
}

/// `Content-Type` for a file name: `mime_guess`, with `charset=utf-8` for text.
fn content_type(name: &str) -> HeaderValue {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let essence = mime.essence_str();
    let texty = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
        );
    let value = if texty && mime.get_param("charset").is_none() {
        format!("{essence}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Stat and (for small files) read a resolved file and its precompressed siblings.
fn load(
    roots: &Roots,
    file: &Path,
    stamp: Stamp,
    limits: CacheLimits,
    inject: bool,
    now_ms: u64,
) -> io::Result<FileEntry> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let content_type = content_type(name);
    let is_html = html::is_html_content_type(Some(&content_type));
    let injecting = is_html && inject;
    let meta = fs::metadata(file)?;
    // Injected HTML needs the bytes in memory; hold it up to the injection cap.
    let hold_limit =
        if injecting { limits.max_file_bytes.max(html::MAX_INJECT_BODY as u64) } else { limits.max_file_bytes };
    let zero_copy = |len: u64| len >= limits.zero_copy_min_bytes;
    let identity = variant(file.to_path_buf(), &meta, "", meta.len() <= hold_limit, zero_copy(meta.len()))?;
    let mut weight = 512 + identity.data.as_ref().map_or(0, |d| d.len() as u64);
    if injecting {
        weight += MAX_INJECTED_VARIANTS as u64 * (identity.len + 1024 + MAX_CACHED_BASE_LEN as u64);
    }
    let mut variants = [Some(Arc::new(identity)), None, None];
    if !injecting {
        for enc in [Encoding::Br, Encoding::Gzip] {
            if let Some((path, meta)) = sibling(roots, file, enc) {
                let hold = meta.len() <= limits.max_file_bytes;
                let v = variant(path, &meta, &format!("-{}", enc.suffix()), hold, zero_copy(meta.len()))?;
                weight += 256 + v.data.as_ref().map_or(0, |d| d.len() as u64);
                variants[enc as usize] = Some(Arc::new(v));
            }
        }
    }
    let cache_control = if is_html {
        CC_HTML
    } else if path::is_fingerprinted(name) {
        CC_IMMUTABLE
    } else {
        CC_REVALIDATE
    };
    Ok(FileEntry {
        stamp,
        checked_ms: AtomicU64::new(now_ms),
        is_html,
        content_type,
        cache_control,
        variants,
        injected: Mutex::new(Vec::new()),
        weight,
    })
}
