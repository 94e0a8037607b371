#!/usr/bin/env bash
# Worker apps: a hello-world JavaScript app through marina vs the same app served directly by
# the same JS runtime (Bun.serve on TCP), keep-alive, same wrk settings, one run side by side.
# Then ttl: 0 (a fresh worker process per request) requests per second.
#
# Usage: bench/worker.sh   (needs wrk and bun; RUNTIME_JS=node to compare under Node instead)
# Loopback only; every load run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"
CONNS="${CONNS:-32}"
MARINA_PORT="${MARINA_PORT:-18082}"
DIRECT_PORT="${DIRECT_PORT:-18083}"
JS="${RUNTIME_JS:-bun}"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v "$JS" >/dev/null || { echo "$JS is missing (npm i -g bun)" >&2; exit 1; }
cargo build --release -q -p marina
BIN="$PWD/target/release/marina"

WORK="$(mktemp -d)"
cleanup() {
  [ -n "${MARINA_PID:-}" ] && kill "$MARINA_PID" 2>/dev/null || true
  [ -n "${DIRECT_PID:-}" ] && kill "$DIRECT_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/apps/hello" "$WORK/apps/eph"
cat > "$WORK/apps/hello/index.js" <<'JS'
export default { fetch: () => new Response("hello world\n", { headers: { "content-type": "text/plain" } }) };
JS
printf 'ttl: 5m\n' > "$WORK/apps/hello/manifest.yaml"
cp "$WORK/apps/hello/index.js" "$WORK/apps/eph/index.js"
printf 'ttl: 0\n' > "$WORK/apps/eph/manifest.yaml"

# The same module served directly by the same runtime.
if [ "$JS" = bun ]; then
  cat > "$WORK/direct.mjs" <<JS
import app from "$WORK/apps/hello/index.js";
Bun.serve({ hostname: "127.0.0.1", port: $DIRECT_PORT, fetch: app.fetch });
JS
else
  cat > "$WORK/direct.mjs" <<JS
import http from "node:http";
import app from "$WORK/apps/hello/index.js";
http.createServer(async (req, res) => {
  const r = await app.fetch(new Request("http://127.0.0.1" + req.url, { method: req.method }));
  res.writeHead(r.status, Object.fromEntries(r.headers));
  res.end(Buffer.from(await r.arrayBuffer()));
}).listen($DIRECT_PORT, "127.0.0.1");
JS
fi
"$JS" "$WORK/direct.mjs" & DIRECT_PID=$!

RUNTIME_JS="$JS" RUNTIME_LOG_LEVEL=warn "$BIN" serve --port "$MARINA_PORT" --worker-dirs "$WORK/apps" \
  --state-dir "$WORK/state" --ephemeral-concurrency 2 & MARINA_PID=$!
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$MARINA_PORT/hello/" >/dev/null && break; sleep 0.05; done
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$DIRECT_PORT/" >/dev/null && break; sleep 0.05; done

# Prints "requests/s p99" for one wrk run.
rps() {
  wrk -t1 -c"$1" -d"$DURATION" --latency "$2" |
    awk '/Requests\/sec/ {r=$2} /^ +99%/ {p=$2} END {print r, p}'
}

rps "$CONNS" "http://127.0.0.1:$MARINA_PORT/hello/" >/dev/null   # warm-up, discarded
read -r m m99 <<<"$(rps "$CONNS" "http://127.0.0.1:$MARINA_PORT/hello/")"
read -r d d99 <<<"$(rps "$CONNS" "http://127.0.0.1:$DIRECT_PORT/")"
ratio=$(python3 -c "print(f'{$m/$d:.2f}')")
read -r e e99 <<<"$(rps 10 "http://127.0.0.1:$MARINA_PORT/eph/")"

{
  echo "Worker apps under $JS $("$JS" --version), keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo "Command: \`bench/worker.sh\`."
  echo
  echo "| target | req/s | p99 |"
  echo "|---|---|---|"
  echo "| hello app through marina (ttl 5m) | $m | $m99 |"
  echo "| the same app, $JS direct | $d | $d99 |"
  echo "| marina / direct | $ratio | |"
  echo "| ttl: 0, a new worker per request (wrk -c10) | $e | $e99 |"
} | tee /dev/stderr > "${OUT:-/dev/null}"
