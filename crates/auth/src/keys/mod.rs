//! API keys: the model (roles, permissions, expiry), the key material, and the store.

pub mod model;
pub mod secret;
mod store;

pub use model::{ALL_PERMISSIONS, ALL_ROLES, Role, parse_expires_in};
pub use store::{CreatedKey, KeyCheck, KeyInfo, KeyStore, NewKey, now_secs};
