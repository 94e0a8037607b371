//! marina-plugins
