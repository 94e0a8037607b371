//! A manifest's problems are logged once per change, not on every refresh of the registry's cache.
//!
//! Alone in its test binary on purpose: it captures the registry's `warn!`/`error!` events with a
//! scoped subscriber, and tracing caches each callsite's interest process-wide, decided by the
//! first thread to reach it. In `registry.rs` a sibling test loading a bad manifest on a thread
//! without a subscriber could reach the `error!` callsite first and cache "never", and this
//! test then saw no error line (it failed so once in CI, `left: 0, right: 1`). With no other
//! test in the process, only this test's thread reaches those callsites.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use marina_apps::registry::Registry;

#[test]
fn manifest_problems_are_logged_once_per_change() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("noisy");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("manifest.yaml"), "tll: 5s\n").unwrap();
    fs::write(dir.join("index.html"), "<h1>hi</h1>").unwrap();
    // A zero cache TTL: every load re-reads the manifest, as a busy server does every second.
    let reg = Registry::new(vec![root.path().to_path_buf()]).with_cache_ttl(Duration::ZERO);
    // tracing-subscriber writes to an `Arc<File>` as is; the file is read back below.
    let log = Arc::new(tempfile::tempfile().unwrap());
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(log.clone()).finish();
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..5 {
            reg.load(&reg.resolve("noisy").unwrap()).unwrap();
        }
        fs::write(dir.join("manifest.yaml"), "ttl: nope\n").unwrap();
        for _ in 0..5 {
            assert!(reg.load(&reg.resolve("noisy").unwrap()).is_err());
        }
    });
    let mut text = String::new();
    (&*log).seek(SeekFrom::Start(0)).unwrap();
    (&*log).read_to_string(&mut text).unwrap();
    assert_eq!(text.matches("unknown key `tll`").count(), 1, "{text}");
    assert_eq!(text.matches("APP_MANIFEST_INVALID").count(), 1, "{text}");
}
