//! `injectBase` / `envPrefix` injection into HTML responses (buntime.md §3.6).
