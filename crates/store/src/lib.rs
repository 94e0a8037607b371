//! marina-store
