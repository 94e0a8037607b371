//! Large static files over real HTTP on loopback: on plain HTTP/1.1 their bodies go out with
//! `sendfile(2)` (marina_core::zerocopy), on HTTP/2 as read bytes. Every path must serve the
//! exact bytes of the file: whole, ranges, HEAD, keep-alive and pipelined requests on one
//! connection, precompressed siblings, and a file cut short under marina's feet (an error,
//! never wrong bytes).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// Deterministic, non-repeating-looking bytes (a zero run would hide a placeholder leak).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect()
}

struct Site {
    dir: tempfile::TempDir,
    /// 3 MiB + 123: more than one placeholder frame, not held in memory.
    big: Vec<u8>,
    /// 300 KiB: held in memory and sent zero-copy.
    mid: Vec<u8>,
    /// A large precompressed sibling (its bytes need not be real gzip for marina).
    gz: Vec<u8>,
    /// 64 KiB, the smallest size sent zero-copy, and one byte less (copied from memory).
    edge: Vec<u8>,
    below: Vec<u8>,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = dir.path().join("files");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("manifest.yaml"), "entrypoint: index.html\n").unwrap();
    std::fs::write(root.join("index.html"), "<html><body>files</body></html>").unwrap();
    let big = pattern(3 * 1024 * 1024 + 123, 1);
    let mid = pattern(300 * 1024, 2);
    let gz = pattern(700 * 1024, 3);
    let edge = pattern(64 * 1024, 5);
    let below = pattern(64 * 1024 - 1, 6);
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("mid.bin"), &mid).unwrap();
    std::fs::write(root.join("app.js"), pattern(900 * 1024, 4)).unwrap();
    std::fs::write(root.join("app.js.gz"), &gz).unwrap();
    std::fs::write(root.join("edge.bin"), &edge).unwrap();
    std::fs::write(root.join("below.bin"), &below).unwrap();
    Site { dir, big, mid, gz, edge, below }
}

fn h1() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn h2() -> reqwest::Client {
    reqwest::Client::builder().http2_prior_knowledge().build().unwrap()
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn whole_files_and_ranges_are_exact_on_http1_and_http2() {
    let s = site();
    let srv = common::start(s.dir.path(), |_| {}).await;
    for (client, version) in [(h1(), reqwest::Version::HTTP_11), (h2(), reqwest::Version::HTTP_2)] {
        // Several times on one client: keep-alive reuse of the connection between responses.
        for _ in 0..3 {
            for (name, want) in
                [("big.bin", &s.big), ("mid.bin", &s.mid), ("edge.bin", &s.edge), ("below.bin", &s.below)]
            {
                let resp = client.get(format!("{}/files/{name}", srv.base)).send().await.unwrap();
                assert_eq!(resp.version(), version);
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.headers()["content-length"], want.len().to_string().as_str());
                let got = resp.bytes().await.unwrap();
                assert!(got[..] == want[..], "{name} over {version:?}: {} bytes differ from the file", got.len());
            }
        }
        let url = format!("{}/files/big.bin", srv.base);
        let (status, h, body) = fetch(&client, &url, &[("range", "bytes=1000-2000999")]).await;
        assert_eq!(status, 206);
        assert_eq!(h["content-range"], format!("bytes 1000-2000999/{}", s.big.len()).as_str());
        assert!(body[..] == s.big[1000..2_001_000], "range over {version:?}");
        let (status, _, body) = fetch(&client, &url, &[("range", "bytes=-5000")]).await;
        assert_eq!(status, 206);
        assert!(body[..] == s.big[s.big.len() - 5000..], "suffix range over {version:?}");
        let (status, _, body) = fetch(&client, &format!("{}/files/mid.bin", srv.base), &[("range", "bytes=7-")]).await;
        assert_eq!(status, 206);
        assert!(body[..] == s.mid[7..], "open range of a held file over {version:?}");
        let (status, h, body) = fetch(&client, &url, &[("range", "bytes=99999999-")]).await;
        assert_eq!((status, h["content-range"].to_str().unwrap()), (416, format!("bytes */{}", s.big.len()).as_str()));
        assert!(!body.is_empty(), "416 carries the JSON error body");
        // An ETag revalidation is still a 304 without a body.
        let etag = fetch(&client, &url, &[]).await.1["etag"].to_str().unwrap().to_string();
        let (status, _, body) = fetch(&client, &url, &[("if-none-match", &etag)]).await;
        assert_eq!((status, body.len()), (304, 0));
        // The precompressed sibling, chosen by Accept-Encoding, is served as its own bytes.
        let (status, h, body) =
            fetch(&client, &format!("{}/files/app.js", srv.base), &[("accept-encoding", "gzip")]).await;
        assert_eq!((status, h["content-encoding"].to_str().unwrap()), (200, "gzip"));
        assert!(body == s.gz, "gzip sibling over {version:?}");
    }
    // HEAD: the length of the whole file, no body.
    let resp = h1().head(format!("{}/files/big.bin", srv.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], s.big.len().to_string().as_str());
    assert!(resp.bytes().await.unwrap().is_empty());
    srv.stop().await;
}

/// Reads one HTTP/1.1 response with a Content-Length body from `stream`, `pending` holding
/// bytes already read past the previous response.
async fn read_response(stream: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut buf = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed inside a response head");
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("a content-length");
    while pending.len() < head_end + len {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed inside a response body");
        pending.extend_from_slice(&buf[..n]);
    }
    let body = pending[head_end..head_end + len].to_vec();
    pending.drain(..head_end + len);
    (head, body)
}

#[tokio::test]
async fn pipelined_requests_on_one_connection_get_their_own_bytes_in_order() {
    let s = site();
    let srv = common::start(s.dir.path(), |_| {}).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut requests = String::new();
    for path in ["big.bin", "mid.bin", "index.html", "edge.bin", "below.bin", "big.bin"] {
        requests.push_str(&format!("GET /files/{path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    requests.push_str("GET /files/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\n\r\n");
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let expect: [&[u8]; 7] =
        [&s.big, &s.mid, b"<html><body>files</body></html>", &s.edge, &s.below, &s.big, &s.big[5..10]];
    for (i, want) in expect.iter().enumerate() {
        let (head, body) =
            tokio::time::timeout(Duration::from_secs(30), read_response(&mut stream, &mut pending)).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 20"), "response {i}: {head}");
        assert!(body[..] == want[..], "response {i}: {} bytes differ", body.len());
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_file_cut_short_on_disk_is_an_error_never_wrong_bytes() {
    let s = site();
    let srv = common::start(s.dir.path(), |_| {}).await;
    let url = format!("{}/files/big.bin", srv.base);
    let client = h1();
    assert_eq!(fetch(&client, &url, &[]).await.2.len(), s.big.len());
    // Truncate in place: the same inode, so an open file sees it at once.
    let path: &Path = &s.dir.path().join("files/big.bin");
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    for _ in 0..3 {
        // Either marina already saw the change, or the response fails: never padding.
        if let Ok(resp) = client.get(&url).send().await
            && let Ok(body) = resp.bytes().await
        {
            assert!(body[..] == s.big[..1000], "got {} bytes that are not the file", body.len());
        }
    }
    srv.stop().await;
}
