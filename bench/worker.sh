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

# hello: Buntime's defaults (maxRequests 1000, so a busy worker is recycled often);
# steady: the same module with recycling out of the way (the cost of marina's hop alone);
# work: a handler doing ~0.2 ms of real work (build and serialise a JSON list);
# eph: ttl 0, a new worker process per request.
mkdir -p "$WORK/apps/hello" "$WORK/apps/steady" "$WORK/apps/work" "$WORK/apps/eph"
cat > "$WORK/apps/hello/index.js" <<'JS'
export default { fetch: () => new Response("hello world\n", { headers: { "content-type": "text/plain" } }) };
JS
cat > "$WORK/apps/work/index.js" <<'JS'
export default {
  fetch() {
    const items = [];
    for (let i = 0; i < 600; i++) items.push({ id: i, name: `item ${i}`, tags: ["a", "b", String(i % 7)] });
    const body = JSON.stringify(items.filter((x) => x.id % 3 === 0).map((x) => ({ ...x, score: Math.sqrt(x.id) })));
    return new Response(body, { headers: { "content-type": "application/json" } });
  },
};
JS
printf 'ttl: 5m\n' > "$WORK/apps/hello/manifest.yaml"
cp "$WORK/apps/hello/index.js" "$WORK/apps/steady/index.js"
printf 'ttl: 5m\nmaxRequests: 100000000\n' > "$WORK/apps/steady/manifest.yaml"
printf 'ttl: 5m\nmaxRequests: 100000000\n' > "$WORK/apps/work/manifest.yaml"
cp "$WORK/apps/hello/index.js" "$WORK/apps/eph/index.js"
printf 'ttl: 0\n' > "$WORK/apps/eph/manifest.yaml"

# The same modules served directly by the same runtime: /hello and /work.
if [ "$JS" = bun ]; then
  cat > "$WORK/direct.mjs" <<JS
import hello from "$WORK/apps/hello/index.js";
import work from "$WORK/apps/work/index.js";
Bun.serve({ hostname: "127.0.0.1", port: $DIRECT_PORT,
  fetch: (req) => (new URL(req.url).pathname.startsWith("/work") ? work : hello).fetch(req) });
JS
else
  cat > "$WORK/direct.mjs" <<JS
import http from "node:http";
import hello from "$WORK/apps/hello/index.js";
import work from "$WORK/apps/work/index.js";
http.createServer(async (req, res) => {
  const app = req.url.startsWith("/work") ? work : hello;
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

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
for app in hello steady work; do
  rps "$CONNS" "http://127.0.0.1:$MARINA_PORT/$app/" >/dev/null   # warm-up, discarded
done
rps "$CONNS" "http://127.0.0.1:$DIRECT_PORT/work" >/dev/null
read -r h h99 <<<"$(rps "$CONNS" "http://127.0.0.1:$MARINA_PORT/hello/")"
read -r s s99 <<<"$(rps "$CONNS" "http://127.0.0.1:$MARINA_PORT/steady/")"
read -r d d99 <<<"$(rps "$CONNS" "http://127.0.0.1:$DIRECT_PORT/")"
read -r w w99 <<<"$(rps "$CONNS" "http://127.0.0.1:$MARINA_PORT/work/")"
read -r dw dw99 <<<"$(rps "$CONNS" "http://127.0.0.1:$DIRECT_PORT/work")"
read -r e e99 <<<"$(rps 10 "http://127.0.0.1:$MARINA_PORT/eph/")"

{
  echo "Worker apps under $JS $("$JS" --version), keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo "Command: \`bench/worker.sh\`."
  echo
  echo "| app | through marina req/s (p99) | $JS direct req/s (p99) | marina / direct |"
  echo "|---|---|---|---|"
  echo "| hello, Buntime defaults (maxRequests 1000: recycled under load) | $h ($h99) | $d ($d99) | $(ratio "$h" "$d") |"
  echo "| hello, maxRequests 1e8 (marina's hop alone) | $s ($s99) | $d ($d99) | $(ratio "$s" "$d") |"
  echo "| ~0.2 ms of work per request, maxRequests 1e8 | $w ($w99) | $dw ($dw99) | $(ratio "$w" "$dw") |"
  echo
  echo "ttl: 0 (a new worker process per request, 2 at a time, wrk -c10): $e req/s, p99 $e99."
} | tee /dev/stderr > "${OUT:-/dev/null}"
