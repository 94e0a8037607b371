//! Turning a core WebAssembly module written in WAT into a `wasi:http/proxy` component, with
//! crates only (no `wasm-tools`, no wasm32 toolchain): `wat` parses the text, the WASI 0.2 WIT
//! shipped in `crates/wasm/wit/` (copied from wasmtime-wasi-http 48, the version the host
//! implements) describes the world, `wit-component` embeds it and wraps the module.
//!
//! The module imports functions by their canonical-ABI names (module `wasi:http/types@0.2.12`,
//! field `[method]incoming-request.path-with-query`, ...) and exports
//! `wasi:http/incoming-handler@0.2.12#handle`, `memory` and `cabi_realloc`. `marina wasm build`
//! and the tests use this; any other toolchain that makes a `wasi:http/proxy` component works
//! as well (componentize-py, componentize-js, cargo-component).

use anyhow::Context;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// The WIT packages, in dependency order.
const WIT: [(&str, &str); 7] = [
    ("io.wit", include_str!("../wit/deps/io.wit")),
    ("clocks.wit", include_str!("../wit/deps/clocks.wit")),
    ("random.wit", include_str!("../wit/deps/random.wit")),
    ("filesystem.wit", include_str!("../wit/deps/filesystem.wit")),
    ("sockets.wit", include_str!("../wit/deps/sockets.wit")),
    ("cli.wit", include_str!("../wit/deps/cli.wit")),
    ("http.wit", include_str!("../wit/deps/http.wit")),
];

/// The world a component built here targets: `wasi:http/proxy` plus the environment
/// (marina provides all of WASI 0.2; `proxy` alone has no way to read `env`).
const APP_WORLD: &str =
    "package marina:app;\n\nworld app {\n  include wasi:http/proxy@0.2.12;\n  import wasi:cli/environment@0.2.12;\n}\n";

/// The WASI 0.2 packages and the id of the `marina:app/app` world.
pub fn app_world() -> anyhow::Result<(Resolve, wit_parser::WorldId)> {
    let mut resolve = Resolve::default();
    for (name, src) in WIT {
        resolve.push_str(name, src).with_context(|| format!("the bundled WIT {name} does not parse"))?;
    }
    let app = resolve.push_str("app.wit", APP_WORLD)?;
    let world = resolve.select_world(&[app], Some("app"))?;
    Ok((resolve, world))
}

/// Builds a `wasi:http/proxy` component from the WAT text of a core module.
///
/// # Errors
/// The WAT does not parse (the message has the line and column), or the module's imports and
/// exports do not fit `wasi:http/proxy` plus `wasi:cli/environment` (the message names the
/// import or export).
pub fn component_from_wat(wat_text: &str) -> anyhow::Result<Vec<u8>> {
    let mut module = wat::parse_str(wat_text).context("the WAT does not parse")?;
    let (resolve, world) = app_world()?;
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    ComponentEncoder::default()
        .module(&module)
        .context("the module does not fit the wasi:http/proxy world")?
        .validate(true)
        .encode()
        .context("the module does not fit the wasi:http/proxy world")
}
