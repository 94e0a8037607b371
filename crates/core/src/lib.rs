//! The bottom layer of marina: the pieces every other crate shares.
//!
//! - [`Error`]: the one error type. Every layer returns it; the server turns it into the one
//!   JSON error body (`{"success": false, "code", "message", "error", "data"}`) at a single edge.
//! - [`app_file`]: reading an app's manifest or `.env` without following it out of the app
//!   dir, blocking on a FIFO or reading a huge file.
//! - [`body`]: the boxed HTTP body type that flows between layers, so that a static file, a
//!   worker's streamed response and an API's JSON all travel the same way.
//! - [`settings`]: the one table of configuration variables (env var, flag, default, help,
//!   validation) that `marina serve`'s flags and the README's table are generated from.
//! - [`shard`]: which connection thread a caller runs on (per-thread scheduling).
//! - [`units`]: durations (`"30s"`, a number = seconds) and sizes (`"10mb"`), parsed the way
//!   Buntime manifests write them.
//! - [`zerocopy`]: file bodies that a plain HTTP/1.1 connection sends with `sendfile(2)`.

pub mod app_file;
pub mod body;
pub mod error;
pub mod headers;
pub mod settings;
pub mod shard;
pub mod units;
pub mod zerocopy;

pub use body::Body;
pub use error::{Error, Result, Source};
