#!/usr/bin/env bash
# The worker hop: a warm JS app through marina vs nginx reverse-proxying to the same module
# served by Bun.serve (keep-alive upstream) vs that Bun.serve hit directly. Keep-alive clients,
# the same wrk settings, the sides run alternately in one run. Two handlers: an empty hello
# world (the hop's whole cost shows) and one doing ~0.2 ms of work per request.
#
# marina runs the app with recycling out of the way (maxRequests 1e8, ttl 5m) and logs at
# `error`; nginx 1.22 has worker_processes 2, access log off, `keepalive 64` upstream.
#
# The p99 target (marina's ≤ 2× direct's) is reported three ways, because a closed-loop p99
# at saturation mostly follows each side's throughput (marina and Bun direct saturate at very
# different rates, and wrk's 32 connections queue behind the slower one):
# - at saturation (`-c$CONNS`, as the throughput columns);
# - at one connection (`-c1`): one request at a time, no queueing: the hop's own latency;
# - at the same offered load for both: `-c$CONNS` with a pause of PAUSE_MS between each
#   connection's requests (wrk's Lua `delay()`), which caps every side at about
#   CONNS × 1000 / PAUSE_MS req/s, well under each side's capacity, so both serve the same rate.
#
# Usage: bench/js-hop.sh   (DURATION=5s ROUNDS=3 CONNS=32 PAUSE_MS=5)
# Needs: wrk, nginx, bun, python3, curl.
source "$(dirname "$0")/lib.sh"
need nginx "apt-get install nginx-light"
need bun "npm i -g bun"
build_marina
load_line

mkdir -p "$WORK/nginx"
js_hop_apps 18191
chmod -R a+rX "$WORK"   # workers and nginx run unprivileged

cat > "$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  upstream bun { server 127.0.0.1:18191; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:18192;
    location / { proxy_pass http://bun; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on; }
  }
}
CONF

bun "$WORK/direct.mjs" & PIDS+=($!)
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
RUNTIME_LOG_LEVEL=error "$BIN" serve --port 18193 --worker-dirs "$WORK/apps" --state-dir "$WORK/state" \
  2>"$WORK/marina.log" & PIDS+=($!)
M=http://127.0.0.1:18193 N=http://127.0.0.1:18192 D=http://127.0.0.1:18191
wait_ok "$D/"; wait_ok "$N/"; wait_ok "$M/hello/"; wait_ok "$M/work/"
for u in "$M/hello/" "$N/" "$D/"; do verify_text "$u" $'hello world\n'; done
w=$(curl -s "$D/work"); [ "${#w}" -gt 1000 ] || { echo "FAIL: /work answered '${w:0:80}'" >&2; exit 1; }
for u in "$M/work/" "$N/work"; do verify_text "$u" "$w"; done

compare "$CONNS" marina "$M/hello/" nginx "$N/" direct "$D/"
hello=("${RES[marina]}" "${RES[nginx]}" "${RES[direct]}")
compare "$CONNS" marina "$M/work/" direct "$D/work"
work=("${RES[marina]}" "${RES[direct]}")
compare 1 marina "$M/hello/" nginx "$N/" direct "$D/"
one=("${RES[marina]}" "${RES[nginx]}" "${RES[direct]}")
PAUSE_MS="${PAUSE_MS:-5}"
printf 'function delay() return %s end\n' "$PAUSE_MS" > "$WORK/pause.lua"
WRK_SCRIPT="$WORK/pause.lua" compare "$CONNS" marina "$M/hello/" nginx "$N/" direct "$D/"
paced=("${RES[marina]}" "${RES[nginx]}" "${RES[direct]}")

row() { echo "$1" | awk '{printf "%s | %s / %s", $1, $2, $3}'; }
r() { python3 -c "a=float('$1'.split()[$3]); b=float('$2'.split()[$3]); print(f'{a/b:.2f}')"; }
{
  echo "Warm JS hop under bun $(bun --version), keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\`, $ROUNDS alternating rounds (median), $(date -u '+%Y-%m-%d %H:%M UTC'); $(load_line)."
  echo "Command: \`bench/js-hop.sh\` (nginx: worker_processes 2, keepalive 64 upstream, access log off; marina at error)."
  echo
  echo "| handler | marina req/s \| p50 / p99 ms | nginx → Bun req/s \| p50 / p99 ms | direct Bun req/s \| p50 / p99 ms | marina / nginx | marina / direct | marina p99 / direct p99 |"
  echo "|---|---|---|---|---|---|---|"
  echo "| hello | $(row "${hello[0]}") | $(row "${hello[1]}") | $(row "${hello[2]}") | **$(r "${hello[0]}" "${hello[1]}" 0)** | $(r "${hello[0]}" "${hello[2]}" 0) | $(r "${hello[0]}" "${hello[2]}" 2) |"
  echo "| ~0.2 ms of work | $(row "${work[0]}") | – | $(row "${work[1]}") | – | **$(r "${work[0]}" "${work[1]}" 0)** | $(r "${work[0]}" "${work[1]}" 2) |"
  echo
  echo "Latency of the hello hop below saturation (p99 target: marina ≤ 2× direct), $ROUNDS alternating rounds (median):"
  echo
  echo "| load | marina req/s \| p50 / p99 ms | nginx → Bun req/s \| p50 / p99 ms | direct Bun req/s \| p50 / p99 ms | marina p50 / p99 − direct's (µs) | marina p99 / direct p99 |"
  echo "|---|---|---|---|---|---|"
  added() { python3 -c "a='$1'.split(); b='$2'.split(); print(f'{(float(a[1])-float(b[1]))*1000:.0f} / {(float(a[2])-float(b[2]))*1000:.0f}')"; }
  echo "| one connection (\`-c1\`) | $(row "${one[0]}") | $(row "${one[1]}") | $(row "${one[2]}") | $(added "${one[0]}" "${one[2]}") | **$(r "${one[0]}" "${one[2]}" 2)** |"
  echo "| same offered load (\`-c$CONNS\`, ${PAUSE_MS} ms pause per connection) | $(row "${paced[0]}") | $(row "${paced[1]}") | $(row "${paced[2]}") | $(added "${paced[0]}" "${paced[2]}") | **$(r "${paced[0]}" "${paced[2]}" 2)** |"
  echo "| saturation (\`-c$CONNS\`, the table above) | $(row "${hello[0]}") | $(row "${hello[1]}") | $(row "${hello[2]}") | $(added "${hello[0]}" "${hello[2]}") | $(r "${hello[0]}" "${hello[2]}" 2) |"
} | tee /dev/stderr > "${OUT:-/dev/null}"
