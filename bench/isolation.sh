#!/usr/bin/env bash
# Isolation costs: marina's RSS idle, after ~100k static and ~100k JS requests, and across
# 1,000 `ttl: 0` requests; and what the sandbox adds to a worker start, measured as the
# latency of `ttl: 0` requests (a fresh worker process each) in three set-ups:
#   full     marina as root: uid drop, per-worker cgroups (memory + pids), Landlock
#   no-cg    marina as root, RUNTIME_CGROUP_PARENT=off: uid drop and Landlock only
#   no-root  marina as an unprivileged user, no cgroups: Landlock only (no uid drop)
# The differences between them are the cgroup and uid-drop costs per start. Landlock is on in
# all three (there is no switch to turn it off), so its own cost is not separated here; the
# per-step start timing (docs/workers.md, "Start timing": the log target marina::worker_start)
# does separate it, and the medians of its steps are printed for each set-up.
#
# Usage: bench/isolation.sh   (as root; needs wrk, curl and node; loopback only; every load
# run is bounded by DURATION or a request count)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION_STATIC="${DURATION_STATIC:-3s}"
DURATION_JS="${DURATION_JS:-10s}"
EPH="${EPH:-1000}"
EPH_CMP="${EPH_CMP:-300}"   # ttl:0 requests per comparison set-up
PORT="${PORT:-18091}"
[ "$(id -u)" = 0 ] || { echo "run as root (the uid drop and cgroups need it)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p marina
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/marina"
USER_NONROOT="${USER_NONROOT:-marina-worker}"

WORK="$(mktemp -d)"
chmod 755 "$WORK"
cleanup() {
  [ -n "${MARINA_PID:-}" ] && kill "$MARINA_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/apps/site" "$WORK/apps/hello" "$WORK/apps/eph"
echo '<h1>hello</h1>' > "$WORK/apps/site/index.html"
cat > "$WORK/apps/hello/index.js" <<'JS'
export default { fetch: () => new Response("hello world\n", { headers: { "content-type": "text/plain" } }) };
JS
printf 'entrypoint: index.js\nttl: 5m\nmaxRequests: 100000000\n' > "$WORK/apps/hello/manifest.yaml"
cp "$WORK/apps/hello/index.js" "$WORK/apps/eph/index.js"
printf 'entrypoint: index.js\nttl: 0\n' > "$WORK/apps/eph/manifest.yaml"
chmod -R a+rX "$WORK/apps"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$MARINA_PID/status"; }

start() { # $1 = set-up name
  local state="$WORK/state-$1" run=()
  rm -rf "$state"
  case "$1" in
    full) run=(env) ;;
    no-cg) run=(env RUNTIME_CGROUP_PARENT=off) ;;
    no-root)
      mkdir -p "$state" && chown "$USER_NONROOT" "$state"
      run=(setpriv --reuid="$USER_NONROOT" --regid="$USER_NONROOT" --clear-groups env HOME="$state" RUNTIME_CGROUP_PARENT=off)
      ;;
  esac
  "${run[@]}" RUNTIME_JS=node RUST_LOG="warn,marina::worker_start=debug" "$BIN" serve --port "$PORT" --worker-dirs "$WORK/apps" \
    --state-dir "$state" --plugin-dirs "$WORK/none" >"$WORK/log-$1" 2>&1 &
  MARINA_PID=$!
  for _ in $(seq 400); do curl -fs "http://127.0.0.1:$PORT/api/health" >/dev/null && return; sleep 0.05; done
  echo "marina did not start ($1):" >&2; cat "$WORK/log-$1" >&2; exit 1
}
stop() { kill "$MARINA_PID"; wait "$MARINA_PID" 2>/dev/null || true; MARINA_PID=; }

requests() { awk '/requests in/ {print $1}'; }

# Medians of the per-step start and stop timing a set-up's log holds, in ms.
steps() { # $1 = set-up name
  python3 - "$WORK/log-$1" <<'PY'
import re, statistics, sys
vals = {}
for line in open(sys.argv[1], errors="replace"):
    if "marina::worker_start" in line:
        for k, v in re.findall(r"\b(\w+)_us=(\d+)", line):
            vals.setdefault(k, []).append(int(v))
order = ["total", "prepare", "cgroup", "landlock", "spawn", "fork", "join", "confine", "exec", "ready",
         "response", "since_created", "on_terminate", "stop", "cleanup"]
print(", ".join(f"{k} {statistics.median(vals[k]) / 1000:.2f}" for k in order if k in vals))
PY
}

# ttl: 0 latency over $EPH sequential requests: prints "median p90" in ms, and the peak RSS.
ephemeral() { # $1 = how many
  local peak=0 t
  : > "$WORK/lat"
  for _ in $(seq "$1"); do
    t=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT/eph/")
    echo "$t" >> "$WORK/lat"
    r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r
  done
  sort -n "$WORK/lat" | awk -v peak="$peak" '{a[NR]=$1} END {printf "%.1f %.1f %d\n", a[int(NR*0.5)]*1000, a[int(NR*0.9)]*1000, peak}'
}

echo "# load: $(uptime | sed 's/.*load average: //') (1/5/15 min) at $(date -u +%H:%MZ)"
start full
curl -fs "http://127.0.0.1:$PORT/site/" >/dev/null
echo "idle RSS: $(rss_kib) KiB"
n=$(wrk -t1 -c32 -d"$DURATION_STATIC" "http://127.0.0.1:$PORT/site/" | requests)
echo "after $n static requests: $(rss_kib) KiB"
curl -fs "http://127.0.0.1:$PORT/hello/" >/dev/null
n=$(wrk -t1 -c32 -d"$DURATION_JS" "http://127.0.0.1:$PORT/hello/" | requests)
echo "after $n JS requests: $(rss_kib) KiB"
read -r med p90 peak < <(ephemeral "$EPH")
echo "across $EPH ttl:0 requests: peak $peak KiB, after: $(rss_kib) KiB"
echo "ttl:0 latency (full sandbox): median ${med} ms, p90 ${p90} ms"
stop
echo "start steps (full sandbox), medians in ms: $(steps full)"
for setup in no-cg no-root; do
  start "$setup"
  curl -fs "http://127.0.0.1:$PORT/eph/" >/dev/null
  read -r med p90 _ < <(ephemeral "$EPH_CMP")
  echo "ttl:0 latency ($setup): median ${med} ms, p90 ${p90} ms"
  stop
  echo "start steps ($setup), medians in ms: $(steps "$setup")"
done
echo "# load after: $(uptime | sed 's/.*load average: //')"
