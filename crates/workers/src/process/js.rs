//! JavaScript workers: which engine runs them, and the host shim that serves the app module.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use http::StatusCode;
use marina_core::Error;

use super::spawn::which;

/// The shim source, shipped inside the binary.
pub(crate) const HOST_SHIM: &str = include_str!("shim/host.mjs");

/// The engine that runs JS workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsRuntime {
    /// Bun: runs `.ts` directly and serves with `Bun.serve`.
    Bun(PathBuf),
    /// Node ≥ 20, with its major version (flags differ by version).
    Node(PathBuf, u32),
}

impl JsRuntime {
    /// The executable.
    pub fn path(&self) -> &Path {
        match self {
            JsRuntime::Bun(p) | JsRuntime::Node(p, _) => p,
        }
    }

    /// `"bun"` or `"node"`.
    pub fn name(&self) -> &'static str {
        match self {
            JsRuntime::Bun(_) => "bun",
            JsRuntime::Node(..) => "node",
        }
    }
}

fn start_failed(message: String) -> Error {
    Error::new(StatusCode::INTERNAL_SERVER_ERROR, "WORKER_START_FAILED", message)
}

/// Chooses the engine: `RUNTIME_JS` (`bun`, `node` or a path) when given, else Bun when it is
/// on `PATH`, else Node ≥ 20.
pub(crate) fn resolve(choice: Option<&str>) -> Result<JsRuntime, Error> {
    let choice = choice.map(str::trim).filter(|c| !c.is_empty());
    let (path, flavour) = match choice {
        Some(c) => {
            let path = which(c).ok_or_else(|| {
                start_failed(format!("RUNTIME_JS is '{c}', which is not an executable on PATH; expected 'bun', 'node' or a path to one of them"))
            })?;
            let file = path.file_name().map(|f| f.to_string_lossy().to_lowercase()).unwrap_or_default();
            (path, if file.contains("bun") { "bun" } else { "node" })
        }
        None => match which("bun") {
            Some(p) => (p, "bun"),
            None => match which("node") {
                Some(p) => (p, "node"),
                None => {
                    return Err(start_failed(
                        "no JavaScript runtime found: install Bun (https://bun.sh) or Node.js 20 or newer, or set RUNTIME_JS".into(),
                    ));
                }
            },
        },
    };
    if flavour == "bun" {
        return Ok(JsRuntime::Bun(path));
    }
    let out = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| start_failed(format!("could not run '{} --version': {e}", path.display())))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = parse_node_major(&version).ok_or_else(|| {
        start_failed(format!(
            "'{} --version' printed '{version}', expected a Node.js version such as v20.11.0",
            path.display()
        ))
    })?;
    if major < 20 {
        return Err(start_failed(format!(
            "Node.js {version} at {} is too old: marina needs Node.js 20 or newer (or Bun)",
            path.display()
        )));
    }
    Ok(JsRuntime::Node(path, major))
}

fn parse_node_major(version: &str) -> Option<u32> {
    version.trim().strip_prefix('v')?.split('.').next()?.parse().ok()
}

/// Writes the shim into `{state_dir}/shim/host.mjs` (replacing an older one) and returns its path.
pub(crate) fn write_shim(state_dir: &Path) -> Result<PathBuf, Error> {
    let dir = state_dir.join("shim");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("could not create the shim directory {}: {e}", dir.display())))?;
    let path = dir.join("host.mjs");
    let tmp = dir.join(format!("host.mjs.{}", std::process::id()));
    std::fs::write(&tmp, HOST_SHIM)
        // Workers run as another user and must read it (marina's umask is 077).
        .and_then(|()| std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::internal(format!("could not write the JS host shim to {}: {e}", path.display())))?;
    Ok(path)
}

/// The program and arguments that run `entrypoint` through the shim on `socket`, telling it
/// the fd of its readiness pipe.
pub(crate) fn command(
    runtime: &JsRuntime,
    shim: &Path,
    entrypoint: &Path,
    socket: &Path,
    low_memory: bool,
) -> Result<(OsString, Vec<OsString>), Error> {
    let mut args: Vec<OsString> = Vec::new();
    let program = match runtime {
        JsRuntime::Bun(p) => {
            if low_memory {
                args.push("--smol".into());
            }
            p.clone().into_os_string()
        }
        JsRuntime::Node(p, major) => {
            let ext = entrypoint.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "ts" | "mts" | "tsx") {
                return Err(start_failed(format!(
                    "the entrypoint {} is TypeScript, which needs Bun: install Bun (https://bun.sh) or set RUNTIME_JS=bun; Node.js {major} (the runtime in use) runs only .js/.mjs/.cjs",
                    entrypoint.display()
                )));
            }
            if *major < 22 {
                // Node 20 treats `export default` in a plain .js file as CommonJS without this.
                args.push("--experimental-detect-module".into());
            }
            p.clone().into_os_string()
        }
    };
    args.push(shim.into());
    args.push(socket.into());
    args.push(super::sandbox::READY_FD.to_string().into());
    Ok((program, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_parse() {
        assert_eq!(parse_node_major("v20.20.2\n"), Some(20));
        assert_eq!(parse_node_major("v22.1.0"), Some(22));
        assert_eq!(parse_node_major("1.2"), None);
    }

    #[test]
    fn typescript_under_node_says_what_to_install() {
        let rt = JsRuntime::Node("/usr/bin/node".into(), 20);
        let err = command(&rt, Path::new("/s/host.mjs"), Path::new("/a/index.ts"), Path::new("/s/w.sock"), false)
            .unwrap_err();
        assert_eq!(err.code(), "WORKER_START_FAILED");
        assert!(err.message().contains("install Bun"), "{}", err.message());
    }

    #[test]
    fn unknown_runtime_is_a_clear_error() {
        let err = resolve(Some("definitely-not-a-js-runtime")).unwrap_err();
        assert!(err.message().contains("'definitely-not-a-js-runtime'"), "{}", err.message());
    }
}
