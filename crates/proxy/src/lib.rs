//! marina-proxy: HTTP/1.1 and WebSocket forwarding, to local workers and to remote upstreams,
//! and the proxy rules that pick a remote upstream.
//!
//! - [`Upstream`]: a worker's Unix socket or loopback port, with pooled keep-alive connections,
//!   bodies streamed both ways (never buffered), hop-by-hop headers removed (RFC 9110 §7.6.1),
//!   repeated headers kept, and `Upgrade` exchanges spliced end to end.
//! - [`Remote`]: the pooled HTTP(S) client for rule targets, with connect and response
//!   deadlines, TLS verification per rule, and the SSRF [`TargetPolicy`] applied on connect.
//! - [`rules`]: rule validation and the [`RuleSet`] that matches a path with one compiled set.
//! - [`HtmlRewrite`]: a rule's `base`/`relativePaths`, applied to HTML answers as they stream.
//! - [`set_forwarding_headers`]: the one forwarding-header policy, used by both paths.

pub mod forwarded;
pub mod headers;
mod hosts;
pub mod html;
pub mod limit;
pub mod policy;
pub mod pooled;
pub mod remote;
pub mod rules;
pub mod splice;
pub mod stream;
pub mod upstream;

pub use forwarded::{ClientInfo, set_forwarding_headers};
pub use headers::{is_upgrade, strip_hop_by_hop};
pub use html::HtmlRewrite;
pub use limit::{BodyTooLarge, LimitedBody};
pub use policy::TargetPolicy;
pub use remote::{Remote, RemoteConfig};
pub use rules::{Rule, RuleError, RuleSet, RuleSpec};
pub use upstream::{Hold, ProxyError, Target, Upstream};
