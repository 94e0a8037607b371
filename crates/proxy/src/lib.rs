//! marina-proxy
