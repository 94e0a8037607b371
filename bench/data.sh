#!/usr/bin/env bash
# Data plugins over HTTP: keyval get, keyval set (committed before the answer) and a Hrana
# `SELECT` round trip (`/database/api/v2/pipeline`, execute + close), each with wrk for DURATION,
# then the same operations on an SQLite file directly (python3's sqlite3, one connection, the
# pragmas marina uses: WAL, synchronous=NORMAL) as the floor that HTTP and marina add to.
# With BENCH_DATABASE_URL=postgres://... the HTTP runs are repeated with marina on PostgreSQL.
#
# Usage: bench/data.sh    (needs wrk, curl, python3; a release build of marina is made)
# Loopback only; every load run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"
CONNS="${CONNS:-16}"
PORT="${MARINA_PORT:-18090}"
KEY="bench-root-key-0123456789abcdef0123456789"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p marina
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/marina"

WORK="$(mktemp -d)"
cleanup() {
  [ -n "${MARINA_PID:-}" ] && kill "$MARINA_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/apps"

cat > "$WORK/get.lua" <<'LUA'
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
LUA
cat > "$WORK/set.lua" <<'LUA'
wrk.method = "PUT"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"name":"ada","n":42,"tags":["a","b"]}'
request = function()
  return wrk.format(nil, "/keyval/api/keys/bench/w" .. math.random(1, 100000))
end
LUA
cat > "$WORK/hrana.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"requests":[{"type":"execute","stmt":{"sql":"SELECT id, name, n FROM items WHERE id = ?","args":[{"type":"integer","value":"7"}]}},{"type":"close"}]}'
LUA

# One marina, its load runs, then stop it. $1: a label, $2: DATABASE_URL or empty.
run() {
  local label=$1 url=$2
  local state="$WORK/state-$label"
  if [ -n "$url" ]; then export DATABASE_URL="$url"; else unset DATABASE_URL; fi
  RUNTIME_LOG_LEVEL=warn RUNTIME_ROOT_KEY="$KEY" "$BIN" serve --port "$PORT" --worker-dirs "$WORK/apps" \
    --plugin-dirs "$PWD/examples/plugins" --state-dir "$state" >"$WORK/marina-$label.log" 2>&1 &
  MARINA_PID=$!
  local base="http://127.0.0.1:$PORT"
  for _ in $(seq 200); do curl -fs "$base/database/api/health" >/dev/null && break; sleep 0.05; done
  local auth=(-H "Authorization: Bearer $KEY" -H "Content-Type: application/json")
  curl -fs "${auth[@]}" -X PUT "$base/keyval/api/keys/bench/1" -d '{"name":"ada","n":42,"tags":["a","b"]}' >/dev/null
  local setup='{"requests":[{"type":"sequence","sql":"DROP TABLE IF EXISTS items; CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)"},'
  setup+='{"type":"execute","stmt":{"sql":"INSERT INTO items (id, name, n) SELECT g, '"'"'item'"'"', g FROM generate_series(1, 1000) g"}},{"type":"close"}]}'
  if [ -z "$url" ]; then
    setup='{"requests":[{"type":"sequence","sql":"DROP TABLE IF EXISTS items; CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, n INTEGER); WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 1000) INSERT INTO items SELECT x, '"'"'item'"'"', x FROM g"},{"type":"close"}]}'
  fi
  curl -fs "${auth[@]}" -X POST "$base/database/api/v2/pipeline" -d "$setup" | grep -q '"type":"ok"' ||
    { echo "setup failed" >&2; cat "$WORK/marina-$label.log" >&2; exit 1; }
  echo "== marina on $label: keyval get (GET /keyval/api/keys/bench/1)"
  BENCH_KEY="$KEY" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/get.lua" "$base/keyval/api/keys/bench/1" |
    grep -E "Requests/sec|Latency  |  50%|  99%|Non-2xx"
  echo "== marina on $label: keyval set (PUT /keyval/api/keys/bench/w<random>)"
  BENCH_KEY="$KEY" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/set.lua" "$base" |
    grep -E "Requests/sec|Latency  |  50%|  99%|Non-2xx"
  echo "== marina on $label: Hrana SELECT by primary key (POST /database/api/v2/pipeline)"
  BENCH_KEY="$KEY" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/hrana.lua" "$base/database/api/v2/pipeline" |
    grep -E "Requests/sec|Latency  |  50%|  99%|Non-2xx"
  kill "$MARINA_PID"
  wait "$MARINA_PID" 2>/dev/null || true
  MARINA_PID=
}

echo "load before: $(uptime)"
run sqlite ""
if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  run postgres "$BENCH_DATABASE_URL"
fi

echo "== SQLite directly (python3 sqlite3, one connection, WAL, synchronous=NORMAL), same operations"
python3 - "$WORK/direct.db" "${DURATION%s}" <<'PY'
import json, random, sqlite3, sys, time
path, seconds = sys.argv[1], float(sys.argv[2]) / 2
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v TEXT, vs TEXT)")
db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)")
db.executemany("INSERT INTO items VALUES (?, 'item', ?)", [(i, i) for i in range(1, 1001)])
value = json.dumps({"name": "ada", "n": 42, "tags": ["a", "b"]})
db.execute("INSERT INTO kv VALUES (?, ?, ?)", (b"bench\x001", value, "v"))
def bench(name, op):
    n, lat, end = 0, [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter(); op(); lat.append(time.perf_counter() - t); n += 1
    lat.sort()
    print(f"{name}: {n / seconds:,.0f} ops/s, p50 {lat[len(lat) // 2] * 1e6:.1f} us, p99 {lat[int(len(lat) * 0.99)] * 1e6:.1f} us")
bench("get (SELECT by key)", lambda: json.loads(db.execute("SELECT v FROM kv WHERE k = ?", (b"bench\x001",)).fetchone()[0]))
def put():
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (b"bench\x00w%d" % random.randint(1, 100000), value, "v"))
    db.execute("COMMIT")
bench("set (one-row transaction)", put)
bench("SELECT by primary key", lambda: db.execute("SELECT id, name, n FROM items WHERE id = ?", (7,)).fetchall())
PY
echo "load after: $(uptime)"
