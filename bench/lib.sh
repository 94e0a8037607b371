# Shared helpers of the bench scripts (sourced, not run).
#
# Every load run is `wrk` bounded by DURATION on loopback. The two sides of a comparison are run
# alternately (A B A B ...) ROUNDS times in one script run, so background load on the machine
# hits both about equally; the result of a side is the median of its rounds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-32}"

need() { command -v "$1" >/dev/null || { echo "$1 is missing: $2" >&2; exit 1; }; }
need wrk "apt-get install wrk"
need python3 "apt-get install python3"
need curl "apt-get install curl"

# A release build of marina, in CARGO_TARGET_DIR when set (MARINA_BIN=path: use that binary).
build_marina() {
  if [ -n "${MARINA_BIN:-}" ]; then BIN="$MARINA_BIN"; return; fi
  cargo build --release -q -p marina
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/marina"
}

WORK="$(mktemp -d /tmp/marina-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/nginx*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Wait (up to 20 s) until `curl URL` answers 200.
wait_ok() {
  for _ in $(seq 400); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
    sleep 0.05
  done
  echo "no 200 from $1 within 20 s" >&2
  exit 1
}

# Check that URL answers 200 with exactly the bytes of FILE.
verify_file() { # url file
  local got="$WORK/verify.body" code
  code=$(curl -s -o "$got" -w '%{http_code}' "$1")
  [ "$code" = 200 ] || { echo "FAIL $1: status $code" >&2; exit 1; }
  cmp -s "$got" "$2" || { echo "FAIL $1: body differs from $2" >&2; exit 1; }
}

# Check that URL answers 200 with exactly TEXT.
verify_text() { # url text
  local body code
  body=$(curl -s -w '\n%{http_code}' "$1")
  code="${body##*$'\n'}"; body="${body%$'\n'*}"
  [ "$code" = 200 ] && [ "$body" = "$2" ] || { echo "FAIL $1: status $code body '${body:0:80}'" >&2; exit 1; }
}

# One wrk run: prints "rps p50_ms p99_ms bytes_per_response errors requests" (errors = non-2xx/3xx
# + socket errors; a bench with errors is not a result). WRK_SCRIPT=file: wrk's Lua script.
wrk_run() { # conns url
  wrk -t1 -c"$1" -d"$DURATION" ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} --latency "$2" | python3 -c '
import re, sys
t = sys.stdin.read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read", t)
n, size = int(m.group(1)), float(m.group(2)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(3)]
err = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", t))
err += sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {size / max(n, 1):.0f} {err} {n}")'
}

# User + system clock ticks a process has used so far (/proc/PID/stat).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches (voluntary and not) of all of a process's threads so far.
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'; }

# Run the sides alternately; sets RES[name]="rps p50 p99 bytes errors cpu cs" (medians of the
# rounds). cpu: the server's CPU time (user + system) per request in µs, for a side whose server
# process is PID_OF[name] (else "-"): when the server is CPU-bound it is what throughput is made
# of, and steal or wrk's share of the cores move it much less than they move requests/s.
# cs: that process's context switches per request (else "-").
# Usage: compare CONNS name1 url1 name2 url2 [name3 url3 ...]
declare -A RES PID_OF
compare() {
  local conns="$1"; shift
  local -a names=() urls=()
  while [ $# -gt 0 ]; do names+=("$1"); urls+=("$2"); shift 2; done
  local i r
  for i in "${!names[@]}"; do : > "$WORK/res.${names[$i]}"; done
  # Warm-up, discarded.
  for i in "${!names[@]}"; do DURATION=1s wrk_run "$conns" "${urls[$i]}" >/dev/null; done
  for r in $(seq "$ROUNDS"); do
    for i in "${!names[@]}"; do
      local pid="${PID_OF[${names[$i]}]:-}" t0=0 c0=0 out
      [ -n "$pid" ] && t0=$(cpu_ticks "$pid") c0=$(ctx_switches "$pid")
      # AROUND: a function run as `AROUND start NAME` before each side's run and `AROUND stop
      # NAME` after it (background load that only that side should see).
      [ -n "${AROUND:-}" ] && "$AROUND" start "${names[$i]}"
      out=$(wrk_run "$conns" "${urls[$i]}")
      [ -n "${AROUND:-}" ] && "$AROUND" stop "${names[$i]}"
      if [ -n "$pid" ]; then
        out="$out $(awk -v t="$(( $(cpu_ticks "$pid") - t0 ))" -v c="$(( $(ctx_switches "$pid") - c0 ))" \
          -v hz="$(getconf CLK_TCK)" '{printf "%.3f %.2f", t * 1e6 / hz / $6, c / $6}' <<<"$out")"
      else
        out="$out - -"
      fi
      echo "$out" >> "$WORK/res.${names[$i]}"
    done
  done
  for i in "${!names[@]}"; do
    RES[${names[$i]}]=$(python3 -c '
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
cols = list(zip(*rows))
m = [statistics.median(map(float, c)) for c in cols[:4]]
cpu = f"{statistics.median(map(float, cols[6])):.3f}" if cols[6][0] != "-" else "-"
cs = f"{statistics.median(map(float, cols[7])):.2f}" if cols[7][0] != "-" else "-"
print(f"{m[0]:.0f} {m[1]:.3f} {m[2]:.3f} {m[3]:.0f} {sum(map(int, cols[4]))} {cpu} {cs}")' "$WORK/res.${names[$i]}")
    local errors; errors=$(echo "${RES[${names[$i]}]}" | awk '{print $5}')
    [ "$errors" = 0 ] || echo "WARNING: ${names[$i]} had $errors errors under load" >&2
  done
}

field() { echo "${RES[$1]}" | awk -v f="$2" '{print $f}'; }
rps_of() { field "$1" 1; }
p50_of() { field "$1" 2; }
p99_of() { field "$1" 3; }
cpu_of() { field "$1" 6; }
cs_of() { field "$1" 7; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

load_line() { echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"; }
# The share of all CPUs' time the hypervisor took away (steal) since `steal_mark` ran: on a VM
# it is noise no alternation removes, so a run with much of it is worth repeating.
steal_mark() { STEAL0=$(awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat); }
steal_since() {
  awk -v a="$STEAL0" '/^cpu /{split(a, s, " "); printf "%.1f%%", 100 * ($9 - s[1]) / ($2+$3+$4+$5+$6+$7+$8+$9 - s[2])}' /proc/stat
}

# The two JS apps of the hop benchmarks, in $WORK/apps (a hello world, and `work`: ~0.2 ms of
# work per request), with recycling out of the way, and $WORK/direct.mjs serving both modules
# with Bun.serve on 127.0.0.1:PORT (`/work…` to the second) for the app-direct side.
js_hop_apps() { # port
  mkdir -p "$WORK/apps/hello" "$WORK/apps/work"
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
  for app in hello work; do printf 'ttl: 5m\nmaxRequests: 100000000\n' > "$WORK/apps/$app/manifest.yaml"; done
  cat > "$WORK/direct.mjs" <<JS
import hello from "$WORK/apps/hello/index.js";
import work from "$WORK/apps/work/index.js";
Bun.serve({ hostname: "127.0.0.1", port: $1,
  fetch: (req) => (new URL(req.url).pathname.startsWith("/work") ? work : hello).fetch(req) });
JS
}

# FILE: an nginx config for a production static server: PROCESSES workers (1: in the
# foreground, no master, as profilers need), sendfile, tcp_nopush, open_file_cache, its MIME
# types, pid file FILE.pid; each further argument is one `server { … }` block.
nginx_static_conf() { # file processes server-block...
  local file="$1" processes="$2" one=""; shift 2
  [ "$processes" = 1 ] && one="master_process off; daemon off;"
  mkdir -p "$WORK/nginx"
  {
    cat <<CONF
worker_processes $processes; $one
pid $file.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  include /etc/nginx/mime.types;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
CONF
    printf '  %s\n' "$@"
    echo "}"
  } > "$file"
}
