#!/usr/bin/env bash
# marina's async threads (`RUNTIME_THREADS`): the same binary with 1 and with 2 threads, side by
# side in one run, against nginx (static files) and against the Bun app hit directly (the JS
# hop). For each marina side: requests/s, p50 / p99, and marina's own CPU time and context
# switches per request (/proc), which show where a thread count's difference comes from.
#
# Static: a 1 KiB, a 64 KiB and a 1 MiB file, both servers' logs off (nginx as in
# bench/static.sh: worker_processes 2, sendfile, open_file_cache). JS: a hello world and a
# handler doing ~0.2 ms of work (the two of bench/js-hop.sh), one warm Bun worker each. Then
# latency: a proxy plugin rule to the nginx (the 1 KiB file) one request at a time (`-c1`), and
# the JS hello at the same offered load for all sides (32 connections with a 5 ms pause each).
#
# The two sides are settings given as `VAR=value` words: SIDE1 (default `RUNTIME_THREADS=1`)
# and SIDE2 (default `RUNTIME_THREADS=2`); e.g. SIDE1="RUNTIME_SCHEDULER=per-thread" compares
# per-thread scheduling with the shared runtime, both on two threads.
#
# Usage: bench/threads.sh   (DURATION=5s ROUNDS=3 CONNS=32 SIDE1=… SIDE2=…)
# Needs: wrk, nginx, bun, python3, curl.
source "$(dirname "$0")/lib.sh"
need nginx "apt-get install nginx-light"
need bun "npm i -g bun"
build_marina
load_line

SITE="$WORK/apps/site"
mkdir -p "$SITE" "$WORK/nginx" "$WORK/plugins/proxy"
cat > "$WORK/plugins/proxy/manifest.yaml" <<'YAML'
name: "@buntime/plugin-proxy"
base: /redirects
rules:
  - pattern: "^/via-plugin/(.*)$"
    target: http://127.0.0.1:18202
    rewrite: /site/$1
YAML
printf 'entrypoint: index.html\n' > "$SITE/manifest.yaml"
printf '<!doctype html><title>bench</title>\n' > "$SITE/index.html"
for spec in f1k:1024 f64k:65536 f1m:1048576; do
  python3 -c 'import os,sys; sys.stdout.buffer.write(os.urandom(int(sys.argv[1])))' "${spec#*:}" > "$SITE/${spec%%:*}.bin"
done
js_hop_apps 18201
chmod -R a+rX "$WORK"   # workers and nginx run unprivileged

nginx_static_conf "$WORK/nginx.conf" 2 "server { listen 127.0.0.1:18202; root $WORK/apps; access_log off; }"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
bun "$WORK/direct.mjs" & PIDS+=($!)
SIDE1="${SIDE1:-RUNTIME_THREADS=1}" SIDE2="${SIDE2:-RUNTIME_THREADS=2}"
for t in 1 2; do
  side_env="SIDE$t"
  # shellcheck disable=SC2086 # the side's settings are words on purpose
  env ${!side_env} RUNTIME_LOG_LEVEL=error "$BIN" serve --port "1820$((2 + t))" --worker-dirs "$WORK/apps" \
    --plugin-dirs "$WORK/plugins" --state-dir "$WORK/state-$t" 2>"$WORK/marina-$t.log" & PIDS+=($!)
  PID_OF[t$t]=$!
done
T1=http://127.0.0.1:18203 T2=http://127.0.0.1:18204 N=http://127.0.0.1:18202 D=http://127.0.0.1:18201
for u in "$T1" "$T2" "$N"; do
  wait_ok "$u/site/f1k.bin"
  for f in f1k f64k f1m; do verify_file "$u/site/$f.bin" "$SITE/$f.bin"; done
done
for u in "$T1" "$T2"; do verify_file "$u/via-plugin/f1k.bin" "$SITE/f1k.bin"; done
wait_ok "$D/"
for u in "$T1/hello/" "$T2/hello/" "$D/"; do wait_ok "$u"; verify_text "$u" $'hello world\n'; done
w=$(curl -s "$D/work"); [ "${#w}" -gt 1000 ] || { echo "FAIL: /work answered '${w:0:80}'" >&2; exit 1; }
for u in "$T1/work/" "$T2/work/"; do verify_text "$u" "$w"; done

steal_mark
rows=()
side() { echo "$(rps_of "$1") | $(p50_of "$1") / $(p99_of "$1") | $(cpu_of "$1") | $(cs_of "$1")"; }
for f in f1k f64k f1m; do
  compare "$CONNS" t1 "$T1/site/$f.bin" t2 "$T2/site/$f.bin" other "$N/site/$f.bin"
  rows+=("| static $f | $(side t1) | $(side t2) | $(rps_of other) | **$(ratio "$(rps_of t1)" "$(rps_of t2)")** | $(ratio "$(rps_of t1)" "$(rps_of other)") / $(ratio "$(rps_of t2)" "$(rps_of other)") |")
done
for h in hello work; do
  compare "$CONNS" t1 "$T1/$h/" t2 "$T2/$h/" other "$D/$h"
  rows+=("| JS $h | $(side t1) | $(side t2) | $(rps_of other) | **$(ratio "$(rps_of t1)" "$(rps_of t2)")** | $(ratio "$(rps_of t1)" "$(rps_of other)") / $(ratio "$(rps_of t2)" "$(rps_of other)") |")
done
# A proxied request one at a time: the latency each thread count adds over the backend direct.
compare 1 t1 "$T1/via-plugin/f1k.bin" t2 "$T2/via-plugin/f1k.bin" other "$N/site/f1k.bin"
rows+=("| proxy rule, one connection (\`-c1\`) | $(side t1) | $(side t2) | $(rps_of other) \\| $(p50_of other) / $(p99_of other) | p50 added: **$(python3 -c "print(round(($(p50_of t1) - $(p50_of other)) * 1000))")** / $(python3 -c "print(round(($(p50_of t2) - $(p50_of other)) * 1000))") µs | |")
# The hop's latency at the same offered load for all three (as in bench/js-hop.sh: a pause of
# PAUSE_MS between each connection's requests, far below each side's capacity).
PAUSE_MS="${PAUSE_MS:-5}"
printf 'function delay() return %s end\n' "$PAUSE_MS" > "$WORK/pause.lua"
WRK_SCRIPT="$WORK/pause.lua" compare "$CONNS" t1 "$T1/hello/" t2 "$T2/hello/" other "$D/"
paced="| JS hello, same offered load ($PAUSE_MS ms pause) | $(side t1) | $(side t2) | $(rps_of other) \| $(p50_of other) / $(p99_of other) | p99 ÷ direct's: **$(ratio "$(p99_of t1)" "$(p99_of other)")** / $(ratio "$(p99_of t2)" "$(p99_of other)") | |"
rows+=("$paced")

{
  echo "marina with \`$SIDE1\` (side 1) vs \`$SIDE2\` (side 2), the same binary, keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\`, $ROUNDS alternating rounds (median), $(date -u '+%Y-%m-%d %H:%M UTC'); $(load_line)."
  echo "Command: \`SIDE1='$SIDE1' SIDE2='$SIDE2' bench/threads.sh\`. The other side: nginx (static; worker_processes 2, sendfile, access log off) or the Bun app direct (JS). marina at \`error\`."
  echo
  echo "| load | side 1 req/s \| p50 / p99 ms \| CPU µs/req \| switches/req | side 2 req/s \| p50 / p99 ms \| CPU µs/req \| switches/req | other req/s | side 1 ÷ side 2 | side 1 / side 2 ÷ other |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "CPU steal during the run: $(steal_since) of the cores' time."
} | tee /dev/stderr > "${OUT:-/dev/null}"
