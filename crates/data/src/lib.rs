//! The data services apps get from marina, over HTTP: keyval (`/keyval/api`, a Deno-KV-class
//! store on `marina_store::kv`) and database (`/database/api`, each app's own SQL database in
//! libSQL's Hrana protocol and Buntime's admin routes).
//!
//! Both are Buntime plugins; the services live in their own crate, between workers (whose
//! scoped tokens they accept, see [`access`]) and `marina_plugins` (whose `data` module wraps
//! them as `Plugin`s loaded from manifests), so they can be driven without the pipeline and
//! the plugin layer depends on them, never the other way.

#![warn(missing_docs)]

pub mod access;
pub mod database;
pub mod keyval;
mod web;

pub use access::{Access, Caller};
pub use database::Database;
pub use keyval::Keyval;

/// `rest` when `path` is `base` or under it (`base/...`).
pub fn under<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(base)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod send_check {
    fn is_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn handlers_are_send(k: &crate::Keyval, d: &crate::Database, a: &crate::Access) {
        let h = http::HeaderMap::new();
        is_send(&a.caller(&h));
        is_send(&k.handle(http::Request::new(marina_core::body::empty()), ""));
        is_send(&d.handle(http::Request::new(marina_core::body::empty()), ""));
    }
}
