#!/usr/bin/env bash
# Static files: marina vs nginx on the same files (1 KiB, 64 KiB, 1 MiB), keep-alive, the same
# wrk settings, the two servers run alternately in one run. Twice:
#   quiet:    nginx access log off, marina at `error`;
#   defaults: nginx's access log to a file (its default), marina at `info` (its default: one
#             access line per request to stderr, here a file).
# nginx 1.22 as a production static server: worker_processes 2, sendfile, tcp_nopush,
# open_file_cache. Bodies are checked byte for byte on both before any load.
#
# Usage: bench/static.sh   (DURATION=5s ROUNDS=3 CONNS=32; FILES="f1k f64k f1m")
# Needs: wrk, nginx (apt-get install wrk nginx-light), python3, curl.
source "$(dirname "$0")/lib.sh"
need nginx "apt-get install nginx-light"
FILES="${FILES:-f1k f64k f1m}"
build_marina
load_line

APP="$WORK/apps/site"
mkdir -p "$APP" "$WORK/nginx"
printf 'entrypoint: index.html\n' > "$APP/manifest.yaml"
printf '<!doctype html><title>bench</title>\n' > "$APP/index.html"
for spec in f1k:1024 f64k:65536 f1m:1048576; do
  python3 -c 'import os,sys; sys.stdout.buffer.write(os.urandom(int(sys.argv[1])))' "${spec#*:}" > "$APP/${spec%%:*}.bin"
done
chmod -R a+rX "$WORK"   # nginx's workers run unprivileged

nginx_static_conf "$WORK/nginx.conf" 2 "server { listen 127.0.0.1:18181; root $WORK/apps; access_log off; }" \
  "server { listen 127.0.0.1:18182; root $WORK/apps; access_log $WORK/nginx/access.log; }"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"

RUNTIME_LOG_LEVEL=error "$BIN" serve --port 18183 --worker-dirs "$WORK/apps" --state-dir "$WORK/state-q" \
  2>"$WORK/marina-quiet.log" & PIDS+=($!)
RUNTIME_LOG_LEVEL=info "$BIN" serve --port 18184 --worker-dirs "$WORK/apps" --state-dir "$WORK/state-d" \
  2>"$WORK/marina-info.log" & PIDS+=($!)
for port in 18181 18182 18183 18184; do
  wait_ok "http://127.0.0.1:$port/site/f1k.bin"
  for f in $FILES; do verify_file "http://127.0.0.1:$port/site/$f.bin" "$APP/$f.bin"; done
done

rows=()
for mode in quiet defaults; do
  if [ $mode = quiet ]; then n=18181 m=18183; else n=18182 m=18184; fi
  for f in $FILES; do
    compare "$CONNS" marina "http://127.0.0.1:$m/site/$f.bin" nginx "http://127.0.0.1:$n/site/$f.bin"
    rows+=("| $mode | $f | $(rps_of marina) | $(rps_of nginx) | **$(ratio "$(rps_of marina)" "$(rps_of nginx)")** | $(p99_of marina) / $(p99_of nginx) | $(field marina 4) / $(field nginx 4) |")
  done
done
lines=$(grep -c '"request"\|request$\|marina::access' "$WORK/marina-info.log" || true)

{
  echo "Static files, keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\`, $ROUNDS alternating rounds (median), $(date -u '+%Y-%m-%d %H:%M UTC'); $(load_line)."
  echo "Command: \`bench/static.sh\` (nginx $(nginx -v 2>&1 | sed 's/.*\///'): worker_processes 2, sendfile, tcp_nopush, open_file_cache)."
  echo
  echo "| logs | file | marina req/s | nginx req/s | marina / nginx | p99 ms marina / nginx | bytes per response marina / nginx |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "marina at info wrote $lines access lines ($(wc -c < "$WORK/marina-info.log") bytes) during the run."
} | tee /dev/stderr > "${OUT:-/dev/null}"
