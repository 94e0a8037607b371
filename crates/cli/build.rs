//! Link flags of the `marina` binary.
//!
//! `-z pack-relative-relocs` (DT_RELR): the binary is position-independent, and its ~80,000
//! relative relocations took 1.9 MB as RELA entries that the loader reads at every start (and
//! that stayed mapped, part of marina's RSS); packed, they take a few kilobytes. Needs GNU ld
//! 2.38 / lld 15 or newer to link and glibc 2.36 or newer to run (an older glibc refuses the
//! binary at once: "version `GLIBC_ABI_DT_RELR' not found").
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
