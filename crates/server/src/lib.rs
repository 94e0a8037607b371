//! marina-server
