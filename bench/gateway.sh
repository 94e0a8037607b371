#!/usr/bin/env bash
# The cost of the gateway and authentication: one static app served by three marina instances
# in the same run — "off" (no plugin dirs, no JWT), "on" (the gateway with CORS and a rate limit
# too high to refuse anything, plus JWT verification of every request; its defaults otherwise)
# and "on, RateLimit-* always" (the same with GATEWAY_RATE_LIMIT_HEADERS=always: three more
# headers on every answer) — with the same wrk load and the same request headers (Origin +
# Authorization: Bearer <HS256 JWT>). ROUNDS rounds (4 by default) each run off, on and always
# once, in an order that rotates from round to round (so no side always follows the same one);
# each round gives its own on/off and always/off ratio, and the report's ratio is the median of
# the rounds' (one noisy run moves a median less than a mean of two). The status and body size
# are checked before the load and wrk must report no non-2xx answer. Besides requests/s it reports
# marina's CPU time per request (user + system from /proc/PID/stat over each wrk run): on a VM
# whose throughput swings with steal and wrk's share of the cores, the steadier measure of cost.
#
# Usage: bench/gateway.sh        (DURATION=8s CONNS=32 ROUNDS=4 by default)
# Needs: wrk (apt-get install wrk), python3, curl, a release build of marina (built here into
# CARGO_TARGET_DIR, or MARINA_BIN=path: that binary).
# Loopback only; every load run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-4}"
OFF_PORT="${OFF_PORT:-18090}"
ON_PORT="${ON_PORT:-18091}"
ALWAYS_PORT="${ALWAYS_PORT:-18092}"
SECRET="bench-secret-0123456789abcdef0123456789"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
if [ -n "${MARINA_BIN:-}" ]; then
  BIN="$MARINA_BIN"
  [ -x "$BIN" ] || { echo "MARINA_BIN=$BIN is not an executable file" >&2; exit 1; }
else
  cargo build --release -q -p marina
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/marina"
fi

WORK="$(mktemp -d)"
cleanup() {
  for pid in ${OFF_PID:-} ${ON_PID:-} ${ALWAYS_PID:-}; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

APP="$WORK/apps/site"
mkdir -p "$APP" "$WORK/no-plugins" "$WORK/plugins/gateway"
printf 'entrypoint: index.html\n' > "$APP/manifest.yaml"
printf '<!doctype html><title>bench</title>\n' > "$APP/index.html"
python3 -c 'import base64,os,sys; sys.stdout.write(base64.b64encode(os.urandom(1024)).decode()[:1024])' > "$APP/f1k.txt"
cp examples/plugins/gateway/manifest.yaml "$WORK/plugins/gateway/manifest.yaml"

TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 3600}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)

export RUNTIME_LOG_LEVEL=warn
"$BIN" serve --port "$OFF_PORT" --worker-dirs "$WORK/apps" --plugin-dirs "$WORK/no-plugins" --state-dir "$WORK/state-off" &
OFF_PID=$!
GATEWAY_CORS_ORIGIN="https://app.example" GATEWAY_RATE_LIMIT_REQUESTS=1000000000 GATEWAY_RATE_LIMIT_WINDOW=60 \
  RUNTIME_JWT_SECRET="$SECRET" \
  "$BIN" serve --port "$ON_PORT" --worker-dirs "$WORK/apps" --plugin-dirs "$WORK/plugins" --state-dir "$WORK/state-on" &
ON_PID=$!
GATEWAY_CORS_ORIGIN="https://app.example" GATEWAY_RATE_LIMIT_REQUESTS=1000000000 GATEWAY_RATE_LIMIT_WINDOW=60 \
  GATEWAY_RATE_LIMIT_HEADERS=always RUNTIME_JWT_SECRET="$SECRET" \
  "$BIN" serve --port "$ALWAYS_PORT" --worker-dirs "$WORK/apps" --plugin-dirs "$WORK/plugins" --state-dir "$WORK/state-always" &
ALWAYS_PID=$!

H_ORIGIN="Origin: https://app.example"
H_AUTH="Authorization: Bearer $TOKEN"
for port in "$OFF_PORT" "$ON_PORT" "$ALWAYS_PORT"; do
  for _ in $(seq 200); do curl -fs -H "$H_AUTH" "http://127.0.0.1:$port/site/f1k.txt" >/dev/null && break; sleep 0.05; done
done

# All answer 200 with the same 1024 bytes; "on" really runs the gateway and the JWT check.
for port in "$OFF_PORT" "$ON_PORT" "$ALWAYS_PORT"; do
  out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H "$H_ORIGIN" -H "$H_AUTH" "http://127.0.0.1:$port/site/f1k.txt")
  [ "$out" = "200 1024" ] || { echo "port $port answered '$out', expected '200 1024'" >&2; exit 1; }
done
curl -s -D - -o /dev/null -H "$H_ORIGIN" -H "$H_AUTH" "http://127.0.0.1:$ON_PORT/site/f1k.txt" | grep -qi '^access-control-allow-origin: https://app.example' \
  || { echo "the gateway did not add CORS headers" >&2; exit 1; }
curl -s "http://127.0.0.1:$ON_PORT/gateway/api/config" | grep -q '"requests":1000000000' \
  || { echo "the gateway has no rate limit" >&2; exit 1; }
curl -s -D - -o /dev/null -H "$H_AUTH" "http://127.0.0.1:$ALWAYS_PORT/site/f1k.txt" | grep -qi '^ratelimit-limit: 1000000000' \
  || { echo "the gateway did not add RateLimit-* with GATEWAY_RATE_LIMIT_HEADERS=always" >&2; exit 1; }
for port in "$ON_PORT" "$ALWAYS_PORT"; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/site/f1k.txt")" = 401 ] \
    || { echo "the JWT check is not on (port $port)" >&2; exit 1; }
done

cpu_ticks() { # pid → user + system clock ticks the process has used
  awk '{print $14 + $15}' "/proc/$1/stat"
}
pid_of() {
  case $1 in "$OFF_PORT") echo "$OFF_PID" ;; "$ON_PORT") echo "$ON_PID" ;; *) echo "$ALWAYS_PID" ;; esac
}
rps() { # port → "requests/s cpu-µs-per-request" (fails on any non-2xx answer)
  local out pid t0 t1 n
  pid=$(pid_of "$1")
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" -H "$H_ORIGIN" -H "$H_AUTH" "http://127.0.0.1:$1/site/f1k.txt")
  t1=$(cpu_ticks "$pid")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers on port $1:" >&2; echo "$out" >&2; exit 1; fi
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v n="$n" -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '/Requests\/sec/ {printf "%s %.3f\n", $2, t * 1e6 / hz / n}' <<<"$out"
}

DURATION=3s rps "$OFF_PORT" >/dev/null  # warm-up, discarded
DURATION=3s rps "$ON_PORT" >/dev/null
DURATION=3s rps "$ALWAYS_PORT" >/dev/null
results=()
for round in $(seq 0 $((ROUNDS - 1))); do
  off="" on="" al=""
  for k in 0 1 2; do
    case $(( (round + k) % 3 )) in
      0) off=$(rps "$OFF_PORT" | tr ' ' ':') ;;
      1) on=$(rps "$ON_PORT" | tr ' ' ':') ;;
      2) al=$(rps "$ALWAYS_PORT" | tr ' ' ':') ;;
    esac
  done
  results+=("$off,$on,$al")
done
python3 - "$(uptime)" "${results[@]}" <<'PY'
import statistics, sys
# each round: off, on, always as "req/s:cpu-µs-per-request"
rounds = [[tuple(map(float, side.split(":"))) for side in r.split(",")] for r in sys.argv[2:]]
med = statistics.median
print(f"load: {sys.argv[1].strip()}")
print("| static 1 KiB | off (req/s) | on: CORS + rate limit + JWT (req/s) | on/off | on, RateLimit-* always (req/s) | always/off |")
print("|---|---|---|---|---|---|")
for i, ((off, _), (on, _), (al, _)) in enumerate(rounds, 1):
    print(f"| round {i} | {off:.0f} | {on:.0f} | {on / off:.2f} | {al:.0f} | {al / off:.2f} |")
print(f"| median | {med(r[0][0] for r in rounds):.0f} | {med(r[1][0] for r in rounds):.0f} | "
      f"**{med(r[1][0] / r[0][0] for r in rounds):.2f}** | {med(r[2][0] for r in rounds):.0f} | "
      f"**{med(r[2][0] / r[0][0] for r in rounds):.2f}** |")
print()
# marina's CPU (user + system, from /proc/PID/stat) per request: what throughput is made of when
# the server is CPU-bound, and much less moved by wrk's share of the two cores or by steal.
print("| marina's CPU per request | off (µs) | on (µs) | off/on | always (µs) | off/always |")
print("|---|---|---|---|---|---|")
for i, ((_, off), (_, on), (_, al)) in enumerate(rounds, 1):
    print(f"| round {i} | {off:.2f} | {on:.2f} | {off / on:.2f} | {al:.2f} | {off / al:.2f} |")
print(f"| median | {med(r[0][1] for r in rounds):.2f} | {med(r[1][1] for r in rounds):.2f} | "
      f"**{med(r[0][1] / r[1][1] for r in rounds):.2f}** | {med(r[2][1] for r in rounds):.2f} | "
      f"**{med(r[0][1] / r[2][1] for r in rounds):.2f}** |")
PY
