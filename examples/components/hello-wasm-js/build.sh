#!/usr/bin/env bash
# Builds hello.wasm from hello.js with componentize-js: a wasi:http/proxy component whose JS
# engine (StarlingMonkey, a SpiderMonkey build) is inside it.
#
# Usage: examples/components/hello-wasm-js/build.sh [OUT.wasm]
#   needs node (20 or later) and npm. componentize-js is installed once from the npm registry
#   into COMPONENTIZE_JS_DIR (default ~/.cache/marina/componentize-js); the build itself is
#   offline and takes about 30 s of CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/hello.wasm}"
version=0.23.0
tools="${COMPONENTIZE_JS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/marina/componentize-js}"
cli="$tools/node_modules/@bytecodealliance/componentize-js/src/cli.js"
if ! grep -qs "\"version\": \"$version\"" "$tools/node_modules/@bytecodealliance/componentize-js/package.json"; then
  mkdir -p "$tools"
  npm install --prefix "$tools" --no-audit --no-fund --silent "@bytecodealliance/componentize-js@$version"
fi

# The world: wasi:http/proxy, from the WASI 0.2 WIT marina ships (crates/wasm/wit), at the
# patch version this componentize-js's engine is built against (0.2.10; wasmtime links any 0.2.x),
# less what came after it (exit-with-code, @since 0.2.12).
wit="$(mktemp -d)"
trap 'rm -rf "$wit"' EXIT
for f in "$here"/../../../crates/wasm/wit/deps/*.wit; do
  pkg="$(basename "$f" .wit)"
  mkdir -p "$wit/deps/$pkg"
  sed -e '/@since(version = 0\.2\.12)/{N;d}' -e 's/@0\.2\.12/@0.2.10/g' "$f" > "$wit/deps/$pkg/$pkg.wit"
done
printf 'package marina:hello-js;\n\nworld hello {\n  include wasi:http/proxy@0.2.10;\n}\n' > "$wit/world.wit"

node "$cli" "$here/hello.js" --wit "$wit" --world-name hello --out "$out"
echo "built $out ($(stat -c %s "$out") bytes)"
