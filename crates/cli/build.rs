//! Link flags of the `marina` binary.
//!
//! `-z pack-relative-relocs` (DT_RELR): the binary is position-independent, and its ~80,000
//! relative relocations took 1.9 MB as RELA entries that the loader reads at every start (and
//! that stayed mapped, part of marina's RSS); packed, they take a few kilobytes. Needs GNU ld
//! 2.38 / lld 15 or newer to link and glibc 2.36 or newer to run (an older glibc refuses the
//! binary at once: "version `GLIBC_ABI_DT_RELR' not found").
//!
//! `--symbol-ordering-file=startup.order` (release builds linked by lld): the functions marina
//! runs in ordinary use (start-up, static files, JS workers warm and `ttl: 0`; listed by
//! `bench/symbol-order.sh`) are laid out together at the start of `.text`. The kernel maps a
//! binary's pages 64 KiB at a time around each first touch (fault-around), so the ~3 MB of code
//! that runs, scattered by codegen units over 35 MB, kept 13-17 MB of `.text` resident in
//! marina's RSS. Lines that no longer name a symbol (a dependency updated, a function renamed)
//! are skipped without a warning. Only rustc's default linker on x86_64 Linux (rust-lld, since
//! Rust 1.90) is known to take the flag: with a linker chosen in RUSTFLAGS, or with
//! `MARINA_SYMBOL_ORDER=off`, the binary links without it.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=startup.order");
    println!("cargo:rerun-if-env-changed=MARINA_SYMBOL_ORDER");
    if default_lld() && std::env::var("PROFILE").as_deref() == Ok("release") {
        let order =
            std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("startup.order");
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether the binary is linked by rustc's own lld: x86_64 Linux GNU, no linker chosen in
/// RUSTFLAGS or the environment, and not turned off.
fn default_lld() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu" || var("MARINA_SYMBOL_ORDER") == "off" {
        return false;
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let chosen = ["linker", "fuse-ld", "link-self-contained"].iter().any(|k| flags.contains(k));
    !chosen && std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_none()
}
