//! The `static` worker kind over real HTTP: a hyper server on 127.0.0.1:0 calls
//! `StaticSite::serve`, reqwest (or a raw TCP client, for paths reqwest would normalise) asks.
//! Each test copies `tests/static/site` into a temp dir, so it can add symlinks, siblings and
//! edits without touching the fixtures.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marina_core::{Body, Error, body};
use marina_workers::html::Injection;
use marina_workers::static_files::{CacheLimits, StaticSite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-APP";
const TIMEOUT: Duration = Duration::from_secs(10);

struct Fixture {
    _tmp: tempfile::TempDir,
    app: PathBuf,
    outside: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `<tmp>/app` (a copy of the fixture site) and `<tmp>/outside/secret.txt` beside it.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/static/site"), &app);
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    Fixture { _tmp: tmp, app, outside }
}

/// What the server's edge does with the site's answer: an error becomes its JSON body with its
/// headers (HEAD: no body), so these tests see what a client sees.
fn render(result: Result<http::Response<Body>, Error>, method: &Method) -> http::Response<Body> {
    match result {
        Ok(resp) => resp,
        Err(err) => {
            let bytes = err.to_json().to_string();
            let len = bytes.len();
            let head = method == Method::HEAD;
            let mut resp = http::Response::new(if head { body::empty() } else { body::full(bytes) });
            *resp.status_mut() = err.status();
            if let Some(h) = err.headers() {
                resp.headers_mut().extend(h.clone());
            }
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
            resp
        }
    }
}

/// Serve `site` on a loopback port; the whole URI path (percent-encoded) is the raw path.
async fn serve(site: StaticSite) -> SocketAddr {
    let site = Arc::new(site);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let site = site.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let site = site.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        Ok::<_, Infallible>(render(site.serve(req.method(), &path, req.headers()).await, req.method()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

fn site(f: &Fixture) -> StaticSite {
    StaticSite::new(f.app.clone(), PathBuf::from("index.html"), None)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().unwrap()
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

async fn req(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut rb = client().request(method, format!("http://{addr}{path}"));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    Got { status, headers, body }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    req(addr, Method::GET, path, headers).await
}

/// Send the request line byte for byte (reqwest would normalise `..` and `%2e`).
async fn raw_get(addr: SocketAddr, path: &[u8]) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    };
    tokio::time::timeout(TIMEOUT, fut).await.expect("raw request timed out")
}

#[tokio::test]
async fn content_types_carry_charset_for_text() {
    let f = fixture();
    let addr = serve(site(&f)).await;
    for (path, want) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/assets/app.3f9a1c2b.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/data.json", "application/json; charset=utf-8"),
        ("/assets/logo.svg", "image/svg+xml; charset=utf-8"),
        ("/assets/pixel.png", "image/png"),
        ("/assets/blob.xyzunknown", "application/octet-stream"),
    ] {
        let got = get(addr, path, &[]).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.header("content-type"), want, "{path}");
        assert_eq!(got.header("accept-ranges"), "bytes", "{path}");
    }
    let index = get(addr, "/", &[]).await;
    assert_eq!(index.body, std::fs::read(f.app.join("index.html")).unwrap());
}

#[tokio::test]
async fn etag_and_last_modified_give_304() {
    let f = fixture();
    let addr = serve(site(&f)).await;
    let first = get(addr, "/assets/style.css", &[]).await;
    let etag = first.header("etag").to_string();
    let lm = first.header("last-modified").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong ETag: {etag}");
    assert!(httpdate::parse_http_date(&lm).is_ok(), "{lm}");

    let hit = get(addr, "/assets/style.css", &[("if-none-match", &etag)]).await;
    assert_eq!(hit.status, 304);
    assert!(hit.body.is_empty());
    assert_eq!(hit.header("etag"), etag);
    assert_eq!(hit.header("cache-control"), "public, max-age=0, must-revalidate");

    let list = format!("\"nope\", W/{etag}");
    assert_eq!(get(addr, "/assets/style.css", &[("if-none-match", &list)]).await.status, 304);
    assert_eq!(get(addr, "/assets/style.css", &[("if-none-match", "*")]).await.status, 304);
    assert_eq!(get(addr, "/assets/style.css", &[("if-none-match", "\"other\"")]).await.status, 200);

    assert_eq!(get(addr, "/assets/style.css", &[("if-modified-since", &lm)]).await.status, 304);
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(get(addr, "/assets/style.css", &[("if-modified-since", old)]).await.status, 200);
    // If-None-Match wins over If-Modified-Since.
    let both = get(addr, "/assets/style.css", &[("if-none-match", "\"other\""), ("if-modified-since", &lm)]).await;
    assert_eq!(both.status, 200);
}

#[tokio::test]
async fn a_changed_file_is_picked_up_after_revalidation() {
    let f = fixture();
    let limits = CacheLimits { revalidate_after: Duration::from_millis(50), ..CacheLimits::default() };
    let addr = serve(site(&f).with_cache_limits(limits)).await;
    let before = get(addr, "/assets/style.css", &[]).await;
    std::fs::write(f.app.join("assets/style.css"), "body { color: red; } /* changed */\n").unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    // The first request after the interval re-checks the disk.
    let mut after = get(addr, "/assets/style.css", &[]).await;
    for _ in 0..20 {
        if after.text().contains("changed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        after = get(addr, "/assets/style.css", &[]).await;
    }
    assert!(after.text().contains("changed"), "{}", after.text());
    assert_ne!(after.header("etag"), before.header("etag"));
    // Deleting it makes it a 404 (it has an extension, so no SPA fallback).
    std::fs::remove_file(f.app.join("assets/style.css")).unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let mut gone = get(addr, "/assets/style.css", &[]).await;
    for _ in 0..20 {
        if gone.status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        gone = get(addr, "/assets/style.css", &[]).await;
    }
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn ranges_206_416_and_if_range() {
    let f = fixture();
    let addr = serve(site(&f)).await;
    let full = get(addr, "/assets/app.3f9a1c2b.js", &[]).await;
    let len = full.body.len();
    let etag = full.header("etag").to_string();

    let part = get(addr, "/assets/app.3f9a1c2b.js", &[("range", "bytes=0-9")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), format!("bytes 0-9/{len}"));
    assert_eq!(part.header("content-length"), "10");
    assert_eq!(part.body, full.body[..10]);

    let suffix = get(addr, "/assets/app.3f9a1c2b.js", &[("range", "bytes=-5")]).await;
    assert_eq!(suffix.status, 206);
    assert_eq!(suffix.body, full.body[len - 5..]);

    let bad = get(addr, "/assets/app.3f9a1c2b.js", &[("range", &format!("bytes={len}-"))]).await;
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), format!("bytes */{len}"));
    assert_eq!(bad.json()["code"], "RANGE_NOT_SATISFIABLE");

    // Several ranges: answered with the whole file (documented choice).
    let multi = get(addr, "/assets/app.3f9a1c2b.js", &[("range", "bytes=0-1,4-5")]).await;
    assert_eq!(multi.status, 200);
    assert_eq!(multi.body, full.body);
    // A malformed Range header is ignored.
    assert_eq!(get(addr, "/assets/app.3f9a1c2b.js", &[("range", "pages=1-2")]).await.status, 200);

    let ok = get(addr, "/assets/app.3f9a1c2b.js", &[("range", "bytes=2-3"), ("if-range", &etag)]).await;
    assert_eq!(ok.status, 206);
    assert_eq!(ok.body, full.body[2..4]);
    let stale = get(addr, "/assets/app.3f9a1c2b.js", &[("range", "bytes=2-3"), ("if-range", "\"old\"")]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, full.body);
    let weak = format!("W/{etag}");
    assert_eq!(get(addr, "/assets/app.3f9a1c2b.js", &[("range", "bytes=2-3"), ("if-range", &weak)]).await.status, 200);
    let lm = full.header("last-modified").to_string();
    assert_eq!(get(addr, "/assets/app.3f9a1c2b.js", &[("range", "bytes=2-3"), ("if-range", &lm)]).await.status, 206);
}

#[tokio::test]
async fn head_has_the_headers_of_get_and_no_body() {
    let f = fixture();
    let addr = serve(site(&f)).await;
    for path in ["/assets/style.css", "/", "/about", "/missing.js"] {
        let g = get(addr, path, &[("accept", "text/html")]).await;
        let h = req(addr, Method::HEAD, path, &[("accept", "text/html")]).await;
        assert_eq!(h.status, g.status, "{path}");
        assert!(h.body.is_empty());
        for name in ["content-type", "etag", "last-modified", "cache-control"] {
            assert_eq!(h.header(name), g.header(name), "{path} {name}");
        }
        assert_eq!(h.header("content-length"), g.body.len().to_string(), "{path}");
    }
    let (status, text) = {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"HEAD /assets/style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(TIMEOUT, s.read_to_string(&mut out)).await.unwrap().unwrap();
        (out.split(' ').nth(1).unwrap().to_string(), out)
    };
    assert_eq!(status, "200");
    assert!(text.ends_with("\r\n\r\n"), "HEAD must not carry a body: {text:?}");
}

#[tokio::test]
async fn large_files_stream_and_support_ranges() {
    let f = fixture();
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(f.app.join("assets/big.bin"), &big).unwrap();
    let site = site(&f);
    let addr = serve(site).await;
    let got = get(addr, "/assets/big.bin", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), big.len().to_string());
    assert!(got.body == big);
    let part = get(addr, "/assets/big.bin", &[("range", "bytes=1000000-1999999")]).await;
    assert_eq!(part.status, 206);
    assert!(part.body == big[1_000_000..2_000_000]);
}

#[tokio::test]
async fn precompressed_siblings_follow_accept_encoding() {
    let f = fixture();
    // No brotli encoder is at hand; the server never looks inside, so any bytes do to tell
    // which sibling was sent.
    std::fs::write(f.app.join("assets/app.3f9a1c2b.js.br"), b"BROTLI-SIBLING").unwrap();
    let gz = std::fs::read(f.app.join("assets/app.3f9a1c2b.js.gz")).unwrap();
    let plain = std::fs::read(f.app.join("assets/app.3f9a1c2b.js")).unwrap();
    let addr = serve(site(&f)).await;
    let p = "/assets/app.3f9a1c2b.js";

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [u8]);
    let cases: [Case; 7] = [
        (&[("accept-encoding", "gzip, deflate, br")], "br", b"BROTLI-SIBLING"),
        (&[("accept-encoding", "gzip")], "gzip", &gz),
        (&[("accept-encoding", "br;q=0, gzip")], "gzip", &gz),
        (&[("accept-encoding", "br;q=0.2, gzip;q=0.9")], "gzip", &gz),
        (&[("accept-encoding", "br;q=0, gzip;q=0")], "", &plain),
        (&[("accept-encoding", "identity")], "", &plain),
        (&[], "", &plain),
    ];
    let mut etags = std::collections::HashSet::new();
    for (headers, enc, body) in cases {
        let got = get(addr, p, headers).await;
        assert_eq!(got.status, 200, "{headers:?}");
        assert_eq!(got.header("content-encoding"), enc, "{headers:?}");
        assert_eq!(got.header("vary"), "Accept-Encoding", "{headers:?}");
        assert_eq!(got.header("content-type"), "text/javascript; charset=utf-8");
        assert!(got.body == body, "{headers:?}");
        etags.insert(got.header("etag").to_string());
    }
    assert_eq!(etags.len(), 3, "each variant has its own ETag: {etags:?}");
    // The gzip ETag validates only the gzip variant.
    let gz_etag = get(addr, p, &[("accept-encoding", "gzip")]).await.header("etag").to_string();
    assert_eq!(get(addr, p, &[("accept-encoding", "gzip"), ("if-none-match", &gz_etag)]).await.status, 304);
    assert_eq!(get(addr, p, &[("accept-encoding", "identity"), ("if-none-match", &gz_etag)]).await.status, 200);
    // No sibling, no Vary.
    let css = get(addr, "/assets/style.css", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(css.header("vary"), "");
    assert_eq!(css.header("content-encoding"), "");
}

#[tokio::test]
async fn cache_control_by_kind() {
    let f = fixture();
    let addr = serve(site(&f)).await;
    assert_eq!(get(addr, "/", &[]).await.header("cache-control"), "no-cache");
    assert_eq!(get(addr, "/about", &[("accept", "text/html")]).await.header("cache-control"), "no-cache");
    assert_eq!(
        get(addr, "/assets/app.3f9a1c2b.js", &[]).await.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(get(addr, "/assets/style.css", &[]).await.header("cache-control"), "public, max-age=0, must-revalidate");
    std::fs::write(f.app.join("assets/index-BpX7k2Qa.css"), "a{}").unwrap();
    assert_eq!(
        get(addr, "/assets/index-BpX7k2Qa.css", &[]).await.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
}

#[tokio::test]
async fn spa_fallback_only_for_page_navigations() {
    let f = fixture();
    let addr = serve(site(&f)).await;
    let index = std::fs::read(f.app.join("index.html")).unwrap();
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    // reqwest always sends `Accept: */*`; a client with no Accept at all is checked below.
    for headers in [
        &[("accept", html)][..],
        &[("sec-fetch-dest", "document"), ("accept", html)][..],
        &[("sec-fetch-dest", "iframe")][..],
    ] {
        let got = get(addr, "/todos/42/edit", headers).await;
        assert_eq!(got.status, 200, "{headers:?}");
        assert_eq!(got.body, index, "{headers:?}");
        assert_eq!(got.header("content-type"), "text/html; charset=utf-8");
    }
    let (status, text) = raw_get(addr, b"/todos/42/edit").await;
    assert_eq!(status, 200);
    assert!(text.contains("INDEX-PAGE"));
    // Missing assets are 404 whatever the headers say.
    for path in ["/missing.js", "/assets/app.deadbeef1.js", "/img/logo.png"] {
        let got = get(addr, path, &[("accept", html)]).await;
        assert_eq!(got.status, 404, "{path}");
        assert_eq!(got.json()["code"], "NOT_FOUND");
        assert_eq!(got.header("content-type"), "application/json");
    }
    // API-like fetches from a page are not navigations.
    let api = get(addr, "/api/users", &[("sec-fetch-dest", "empty"), ("accept", "*/*")]).await;
    assert_eq!(api.status, 404);
    assert_eq!(get(addr, "/api/users", &[("accept", "application/json")]).await.status, 404);
    // Only GET/HEAD.
    let post = req(addr, Method::POST, "/about", &[]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");
    assert_eq!(post.json()["code"], "METHOD_NOT_ALLOWED");
    // A directory serves its index.html.
    assert!(get(addr, "/docs/", &[]).await.text().contains("DOCS-INDEX"));
    assert!(get(addr, "/docs", &[]).await.text().contains("DOCS-INDEX"));
}

#[tokio::test]
async fn every_traversal_form_is_refused() {
    let f = fixture();
    let app = &f.app;
    std::os::unix::fs::symlink("/etc/passwd", app.join("passwd.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", app.join("etc")).unwrap();
    std::os::unix::fs::symlink(f.outside.join("secret.txt"), app.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&f.outside, app.join("assets/linkdir")).unwrap();
    let addr = serve(site(&f)).await;
    let forms: &[&[u8]] = &[
        b"/../outside/secret.txt",
        b"/assets/../../outside/secret.txt",
        b"/%2e%2e/outside/secret.txt",
        b"/%2E%2e/outside/secret.txt",
        b"/.%2e/outside/secret.txt",
        b"/..%2foutside%2fsecret.txt",
        b"/assets%2F..%2F..%2Foutside/secret.txt",
        b"/..%5coutside%5csecret.txt",
        b"/%5c..%5c..%5coutside/secret.txt",
        b"/index.html%00.js",
        b"/%00",
        b"/passwd.txt",
        b"/etc/passwd",
        b"/leak.txt",
        b"/assets/linkdir/secret.txt",
    ];
    for form in forms {
        let (status, text) = raw_get(addr, form).await;
        let shown = String::from_utf8_lossy(form);
        assert_eq!(status, 403, "{shown}: {text}");
        assert!(text.contains("\"code\":\"FORBIDDEN\""), "{shown}: {text}");
        assert!(!text.contains(SECRET) && !text.contains("root:"), "{shown} leaked: {text}");
    }
    // A raw backslash never reaches the site: hyper refuses the request line (400). Either way,
    // nothing is served.
    let (status, text) = raw_get(addr, b"/..\\outside\\secret.txt").await;
    assert!(status == 403 || status == 400, "{status}: {text}");
    assert!(!text.contains(SECRET));
}

#[tokio::test]
async fn dotfiles_and_app_config_are_never_served() {
    let f = fixture();
    std::os::unix::fs::symlink(".env", f.app.join("public.txt")).unwrap();
    let addr = serve(site(&f)).await;
    for path in ["/.env", "/%2eenv", "/%2Eenv", "/assets/.hidden", "/manifest.yaml", "/public.txt"] {
        let got = get(addr, path, &[]).await;
        assert_eq!(got.status, 404, "{path}: {}", got.text());
        assert!(!got.text().contains("SECRET_FROM_DOTENV") && !got.text().contains("secret-in-manifest"), "{path}");
    }
    // The raw forms too (reqwest may normalise some of them).
    for path in [&b"/.env"[..], b"/%2eenv", b"/./.env"] {
        let (status, text) = raw_get(addr, path).await;
        assert_eq!(status, 404, "{text}");
        assert!(!text.contains("SECRET_FROM_DOTENV"));
    }
}

fn injected_site(f: &Fixture) -> StaticSite {
    let env: BTreeMap<String, String> =
        [("PUBLIC_GREETING".to_string(), "hi </script><script>alert(1)</script>".to_string())].into();
    let inj = Injection::new(Some(String::new()), env);
    StaticSite::new(f.app.clone(), f.app.join("index.html"), Some(inj))
}

#[tokio::test]
async fn injection_is_escaped_and_per_base() {
    let f = fixture();
    std::fs::copy(f.app.join("assets/app.3f9a1c2b.js.gz"), f.app.join("index.html.gz")).unwrap();
    let addr = serve(injected_site(&f)).await;
    let evil = get(addr, "/", &[("x-base", "/x\"><script>alert(2)</script>"), ("accept-encoding", "gzip")]).await;
    assert_eq!(evil.status, 200);
    let text = evil.text();
    assert!(text.contains("<head><base href=\"/x&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;/\">"), "{text}");
    assert!(!text.contains("alert(1)</script>") && !text.contains("<script>alert"), "{text}");
    assert!(text.contains("window.__env__={\"PUBLIC_GREETING\":\"hi \\u003c/script\\u003e"), "{text}");
    assert!(text.contains("</script>\n</head>") || text.contains("</script></head>"), "{text}");
    // Injected HTML is never the precompressed sibling.
    assert_eq!(evil.header("content-encoding"), "");
    assert_eq!(evil.header("content-length"), evil.body.len().to_string());

    let a = get(addr, "/", &[("x-base", "/todo@1")]).await;
    let b = get(addr, "/", &[("x-base", "/todo")]).await;
    assert!(a.text().contains("<base href=\"/todo@1/\">"));
    assert!(b.text().contains("<base href=\"/todo/\">"));
    assert_ne!(a.header("etag"), b.header("etag"), "the ETag covers the injection");
    // Cached per base: repeated requests give the same bytes and 304 on their own ETag.
    assert_eq!(get(addr, "/", &[("x-base", "/todo@1")]).await.body, a.body);
    let etag = a.header("etag").to_string();
    assert_eq!(get(addr, "/", &[("x-base", "/todo@1"), ("if-none-match", &etag)]).await.status, 304);
    assert_eq!(get(addr, "/", &[("x-base", "/todo"), ("if-none-match", &etag)]).await.status, 200);
    let lm = a.header("last-modified").to_string();
    assert_eq!(get(addr, "/", &[("x-base", "/todo"), ("if-modified-since", &lm)]).await.status, 200);
    // SPA fallback gets it too; non-HTML does not.
    assert!(
        get(addr, "/deep/route", &[("x-base", "/todo"), ("accept", "text/html")])
            .await
            .text()
            .contains("<base href=\"/todo/\">")
    );
    let js = get(addr, "/assets/app.3f9a1c2b.js", &[("x-base", "/todo")]).await;
    assert!(!js.text().contains("<base"));
}

#[tokio::test]
async fn cache_stays_within_its_bounds() {
    let f = fixture();
    for i in 0..20 {
        std::fs::write(f.app.join(format!("assets/f{i}.txt")), vec![b'a'; 10_000]).unwrap();
    }
    let limits = CacheLimits { max_entries: 8, max_bytes: 40_000, ..CacheLimits::default() };
    let site = Arc::new(site(&f).with_cache_limits(limits));
    for i in 0..20 {
        let resp = site.serve(&Method::GET, &format!("/assets/f{i}.txt"), &HeaderMap::new()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10_000);
        let (entries, bytes) = site.cache_usage();
        assert!(entries <= 8 && bytes <= 40_000, "{entries} entries, {bytes} bytes");
    }
    site.invalidate();
    assert_eq!(site.cache_usage(), (0, 0));
}

#[tokio::test]
async fn a_missing_app_dir_answers_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let site = StaticSite::new(tmp.path().join("nope"), PathBuf::from("index.html"), None);
    let err = site.check().unwrap_err();
    assert_eq!(err.status(), 404);
    let err = site.serve(&Method::GET, "/", &HeaderMap::new()).await.unwrap_err();
    assert_eq!(err.status(), 404);
    // marina's own app dir is gone: not the client's fault, so production hides the path.
    assert_eq!(err.kind(), marina_core::Source::Internal);
    assert!(err.message().contains("nope"), "{err}");

    // An entrypoint that is a symlink leading out of the app dir is refused.
    let f = fixture();
    std::os::unix::fs::symlink(f.outside.join("secret.txt"), f.app.join("evil.html")).unwrap();
    let site = StaticSite::new(f.app.clone(), PathBuf::from("evil.html"), None);
    assert_eq!(site.check().unwrap_err().status(), 500);
    let resp = render(site.serve(&Method::GET, "/", &HeaderMap::new()).await, &Method::GET);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains(SECRET));
}

mod never_escapes {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        /// Whatever path is asked, the secret beside the app and the files behind symlinks out
        /// of it are never served.
        #[test]
        fn no_request_path_reaches_outside(parts in proptest::collection::vec(
            prop_oneof![
                Just("..".to_string()), Just("%2e%2e".to_string()), Just("%2E.".to_string()),
                Just("%2f".to_string()), Just("%5c".to_string()), Just("\\".to_string()),
                Just("%00".to_string()), Just("outside".to_string()), Just("secret.txt".to_string()),
                Just("leak.txt".to_string()), Just("linkdir".to_string()), Just("assets".to_string()),
                Just(".".to_string()), Just("".to_string()), "[a-z%0-9.]{1,6}",
            ], 0..8)) {
            let f = fixture();
            std::os::unix::fs::symlink(f.outside.join("secret.txt"), f.app.join("leak.txt")).unwrap();
            std::os::unix::fs::symlink(&f.outside, f.app.join("linkdir")).unwrap();
            let site = site(&f);
            let raw = format!("/{}", parts.join("/"));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let body = rt.block_on(async {
                let resp = render(site.serve(&Method::GET, &raw, &HeaderMap::new()).await, &Method::GET);
                resp.into_body().collect().await.unwrap().to_bytes()
            });
            prop_assert!(!String::from_utf8_lossy(&body).contains(SECRET), "{raw}");
        }
    }
}

/// The bundled example app (README) works as documented: injected base and env, SPA
/// fallback for `/about`, the gzip sibling, and the manifest kept private.
#[tokio::test]
async fn the_hello_static_example_works() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps/hello-static");
    let loaded = marina_apps::manifest::load(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    let inj = Injection::from_config(&loaded.config, "");
    assert!(inj.as_ref().is_some_and(|i| i.injects_base()));
    let entry = loaded.config.entrypoint.clone().unwrap_or_else(|| "index.html".into());
    let site = StaticSite::new(dir.clone(), PathBuf::from(entry), inj);
    site.check().unwrap();
    let addr = serve(site).await;
    let page = get(addr, "/", &[("x-base", "/hello-static")]).await;
    let text = page.text();
    assert!(text.contains("<base href=\"/hello-static/\">"), "{text}");
    assert!(text.contains("window.__env__={\"PUBLIC_GREETING\":\"Hello from marina\"}"), "{text}");
    assert!(!text.contains("not-for-the-browser"));
    let about = get(addr, "/about", &[("x-base", "/hello-static"), ("accept", "text/html")]).await;
    assert_eq!(about.status, 200);
    assert_eq!(about.body, page.body);
    let js = get(addr, "/assets/app.3f9a1c2b.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(js.header("content-encoding"), "gzip");
    assert_eq!(js.header("cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(get(addr, "/assets/missing.js", &[("accept", "text/html")]).await.status, 404);
    assert_eq!(get(addr, "/manifest.yaml", &[]).await.status, 404);
}

/// Not a test: a server for throughput measurements against nginx (see the report in the
/// commit history). `MARINA_BENCH_DIR` is served on `MARINA_BENCH_PORT` for
/// `MARINA_BENCH_SECS` seconds:
/// `MARINA_BENCH_DIR=/tmp/site MARINA_BENCH_PORT=18080 cargo test --release -p marina-workers
///  --test static_files -- --ignored bench_server`, then `wrk -c64 -d10s http://127.0.0.1:18080/1k.bin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "manual benchmark server"]
async fn bench_server() {
    let dir = PathBuf::from(std::env::var("MARINA_BENCH_DIR").expect("MARINA_BENCH_DIR"));
    let port: u16 = std::env::var("MARINA_BENCH_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(18080);
    let secs: u64 = std::env::var("MARINA_BENCH_SECS").ok().and_then(|p| p.parse().ok()).unwrap_or(60);
    let site = Arc::new(StaticSite::new(dir, PathBuf::from("index.html"), None));
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let accept = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let site = site.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let site = site.clone();
                    async move {
                        Ok::<_, Infallible>(render(
                            site.serve(req.method(), req.uri().path(), req.headers()).await,
                            req.method(),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(secs), accept).await;
}
