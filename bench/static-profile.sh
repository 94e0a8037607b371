#!/usr/bin/env bash
# Static files: where the time goes, per response, marina vs nginx (BENCHMARKS.md, "Static
# files: where the time goes"). Numbers that do not depend on how loaded the machine is, or
# much less than req/s does; for each file (1 KiB, 64 KiB, 1 MiB):
#   - user-space instructions per request: each server alone under callgrind (marina's release
#     binary; nginx as one process: master_process off, worker_processes 1), 3 s of warm-up,
#     `callgrind_control -z`, CG_DURATION of `wrk -t1 -c8`, the dump's total ÷ wrk's requests;
#   - system calls per request: `strace -c -f` on the server during 4 s of `wrk -t1 -c32`;
#   - TCP segments per request: `nstat` TcpOutSegs (both directions, all of loopback) around
#     DURATION of `wrk -t1 -c32`, and in the same run the CPU per request of the server
#     (utime + stime of its processes, /proc) and of wrk (/usr/bin/time), ROUNDS rounds
#     alternating marina and nginx, medians. The benchmark's client is that one wrk thread:
#     its CPU per response bounds the rate as much as the server's.
# nginx as in bench/static.sh (worker_processes 2, sendfile, tcp_nopush, open_file_cache,
# access log off); marina at `error`.
#
# Usage: bench/static-profile.sh   (FILES="f1k f64k f1m" ROUNDS=3 DURATION=5s CG_DURATION=8s)
# Needs: wrk, nginx, valgrind, strace, nstat (iproute2), python3, curl, /usr/bin/time.
source "$(dirname "$0")/lib.sh"
need nginx "apt-get install nginx-light"
need valgrind "apt-get install valgrind"
need strace "apt-get install strace"
need nstat "apt-get install iproute2"
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing: apt-get install time" >&2; exit 1; }
FILES="${FILES:-f1k f64k f1m}"
CG_DURATION="${CG_DURATION:-8s}"
build_marina

APP="$WORK/apps/site"
mkdir -p "$APP" "$WORK/nginx"
printf 'entrypoint: index.html\n' > "$APP/manifest.yaml"
printf '<!doctype html><title>bench</title>\n' > "$APP/index.html"
for spec in f1k:1024 f64k:65536 f1m:1048576; do
  python3 -c 'import os,sys; sys.stdout.buffer.write(os.urandom(int(sys.argv[1])))' "${spec#*:}" > "$APP/${spec%%:*}.bin"
done
chmod -R a+rX "$WORK"

nginx_conf() { # file port processes
  nginx_static_conf "$1" "$3" "server { listen 127.0.0.1:$2; root $WORK/apps; access_log off; }"
}

# Instructions per request of one server started by CMD under callgrind.
callgrind_per_request() { # port path cmd...
  local port="$1" path="$2"; shift 2
  local out="$WORK/cg.$port.out" vpid n total
  valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out" "$@" > "$WORK/cg.$port.log" 2>&1 &
  vpid=$!
  for _ in $(seq 1200); do curl -s -o /dev/null "http://127.0.0.1:$port$path" && break; sleep 0.1; done
  wrk -t1 -c8 -d3s "http://127.0.0.1:$port$path" > /dev/null
  callgrind_control -z "$vpid" > /dev/null 2>&1
  n=$(wrk -t1 -c8 -d"$CG_DURATION" "http://127.0.0.1:$port$path" | grep -oP '\d+(?= requests in)')
  callgrind_control -d "$vpid" > /dev/null 2>&1
  kill "$vpid"; wait "$vpid" 2>/dev/null || true
  total=$(grep -m1 '^summary:' "$out.1" | awk '{print $2}')
  echo $((total / n))
}

# System calls per request (the four most frequent) of the processes PIDS under load on URL.
syscalls_per_request() { # url pids...
  local url="$1" args=() sp n; shift
  for p in "$@"; do args+=(-p "$p"); done
  strace -c -f "${args[@]}" -o "$WORK/strace.out" 2>/dev/null & sp=$!
  sleep 1
  n=$(wrk -t1 -c32 -d4s "$url" | grep -oP '\d+(?= requests in)')
  kill -INT "$sp"; wait "$sp" 2>/dev/null || true
  python3 - "$WORK/strace.out" "$n" <<'PY'
import sys
n = int(sys.argv[2]); rows = []
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) >= 5 and p[0][0].isdigit() and p[-1] != 'total':
        calls = int(p[3]); errors = int(p[4]) if len(p) == 6 else 0
        rows.append((calls, p[-1], errors))
rows.sort(reverse=True)
print(", ".join(f"{c / n:.2f} {name}" + (f" ({e / n:.2f} failed)" if e / n >= 0.01 else "") for c, name, e in rows[:4]))
PY
}

# "segments server_us wrk_us" per request for one wrk run of DURATION on URL against PIDS.
cpu_per_request() { # url pids...
  local url="$1" tck u0 u1 segs0 segs1 out; shift
  tck=$(getconf CLK_TCK)
  ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
  segs() { nstat -a -z 2>/dev/null | awk '/^TcpOutSegs/{print $2}'; }
  u0=$(ticks "$@"); segs0=$(segs)
  out=$( { /usr/bin/time -f "WRKCPU %U %S" wrk -t1 -c32 -d"$DURATION" "$url"; } 2>&1 )
  u1=$(ticks "$@"); segs1=$(segs)
  python3 - "$out" "$tck" "$u0" "$u1" "$segs0" "$segs1" <<'PY'
import re, sys
out, tck, u0, u1, s0, s1 = sys.argv[1], *map(int, sys.argv[2:])
n = int(re.search(r"(\d+) requests in", out).group(1))
wu, ws = map(float, re.search(r"WRKCPU ([\d.]+) ([\d.]+)", out).groups())
print(f"{(s1 - s0) / n:.1f} {(u1 - u0) / tck / n * 1e6:.1f} {(wu + ws) / n * 1e6:.1f}")
PY
}

median() { python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):g}")' "$@"; }

load_before=$(load_line)
rows=()
for f in $FILES; do
  cg_m=$(callgrind_per_request 18297 "/site/$f.bin" "$BIN" serve --log-level error --port 18297 \
    --worker-dirs "$WORK/apps" --state-dir "$WORK/state-cg")
  nginx_conf "$WORK/nginx-cg.conf" 18298 1
  cg_n=$(callgrind_per_request 18298 "/site/$f.bin" nginx -c "$WORK/nginx-cg.conf" -e "$WORK/nginx/error.log")
  rows+=("| $f | user-space instructions per request (callgrind) | $cg_m | $cg_n |")
done

nginx_conf "$WORK/nginx.conf" 18281 2
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
"$BIN" serve --log-level error --port 18283 --worker-dirs "$WORK/apps" --state-dir "$WORK/state" \
  2>"$WORK/marina.log" & PIDS+=($!)
MARINA_PID=$!
for port in 18281 18283; do
  wait_ok "http://127.0.0.1:$port/site/f1k.bin"
  for f in $FILES; do verify_file "http://127.0.0.1:$port/site/$f.bin" "$APP/$f.bin"; done
done
NGINX_PIDS=$(pgrep -P "$(cat "$WORK/nginx.conf.pid")" | tr '\n' ' ')

for f in $FILES; do
  m="http://127.0.0.1:18283/site/$f.bin" n="http://127.0.0.1:18281/site/$f.bin"
  rows+=("| $f | system calls per request (strace -c, -c32) | $(syscalls_per_request "$m" "$MARINA_PID") | $(syscalls_per_request "$n" $NGINX_PIDS) |")
  : > "$WORK/cpu.m"; : > "$WORK/cpu.n"
  wrk -t1 -c32 -d1s "$m" > /dev/null; wrk -t1 -c32 -d1s "$n" > /dev/null
  for _ in $(seq "$ROUNDS"); do
    cpu_per_request "$m" "$MARINA_PID" >> "$WORK/cpu.m"
    # shellcheck disable=SC2086
    cpu_per_request "$n" $NGINX_PIDS >> "$WORK/cpu.n"
  done
  col() { median $(awk -v c="$2" '{print $c}' "$1"); }
  rows+=("| $f | TCP segments per request (nstat, both directions) | $(col "$WORK/cpu.m" 1) | $(col "$WORK/cpu.n" 1) |")
  rows+=("| $f | server CPU per request, µs (/proc utime+stime) | $(col "$WORK/cpu.m" 2) | $(col "$WORK/cpu.n" 2) |")
  rows+=("| $f | wrk CPU per request, µs | $(col "$WORK/cpu.m" 3) | $(col "$WORK/cpu.n" 3) |")
done

{
  echo "Static files per request, marina vs nginx, $(date -u '+%Y-%m-%d %H:%M UTC'); $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Command: \`bench/static-profile.sh\` (callgrind: \`wrk -t1 -c8 -d$CG_DURATION\`; CPU and segments: $ROUNDS alternating rounds of \`wrk -t1 -c32 -d$DURATION\`, medians; nginx $(nginx -v 2>&1 | sed 's/.*\///'))."
  echo
  echo "| file | per request | marina | nginx |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee /dev/stderr > "${OUT:-/dev/null}"
