//! marina-proxy: HTTP/1.1 and WebSocket forwarding to local upstreams.
//!
//! The worker pool forwards every app request through an [`Upstream`]: a Unix socket (JS
//! workers) or a loopback port (process workers), with pooled keep-alive connections, bodies
//! streamed both ways (never buffered), hop-by-hop headers removed (RFC 9110 §7.6.1), repeated
//! headers kept, and `Upgrade` exchanges spliced end to end.

pub mod headers;
pub mod limit;
pub mod upstream;

pub use headers::{is_upgrade, strip_hop_by_hop};
pub use limit::{BodyTooLarge, LimitedBody};
pub use upstream::{Hold, ProxyError, Target, Upstream};
