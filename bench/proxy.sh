#!/usr/bin/env bash
# Reverse proxy: marina vs nginx proxying to the same backend, and the backend direct, in one
# run with the same wrk settings. The backend is an nginx serving a 1 KiB file (one worker, so
# it is the same backend for everyone); the proxying nginx keeps upstream keep-alive
# connections, as marina does. marina is measured twice: a proxy plugin rule (matched before
# routing) and an app manifest `proxy:` rule (matched after the app is found).
# Then the latency each proxy adds over direct: p50/p99 with one connection (requests one
# after the other, so no queueing).
#
# Usage: bench/proxy.sh   (OUT=file also writes the Markdown summary there)
# Needs: wrk, nginx (apt-get install wrk nginx-light), python3, curl, a release build of marina
# (built here into CARGO_TARGET_DIR, or MARINA_BIN=path: that binary, as in bench/lib.sh).
# Loopback only; every load run is bounded by DURATION. Every URL is checked first: status 200
# and the exact 1024 bytes; a run with non-2xx answers or socket errors stops the script.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"
LAT_DURATION="${LAT_DURATION:-5s}"
CONNS="${CONNS:-32}"
MARINA_PORT="${MARINA_PORT:-18180}"
NGINX_PORT="${NGINX_PORT:-18181}"
BACKEND_PORT="${BACKEND_PORT:-18182}"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is missing: apt-get install nginx-light" >&2; exit 1; }
if [ -n "${MARINA_BIN:-}" ]; then
  BIN="$MARINA_BIN"
  [ -x "$BIN" ] || { echo "MARINA_BIN=$BIN is not an executable file" >&2; exit 1; }
else
  cargo build --release -q -p marina
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/marina"
fi

WORK="$(mktemp -d)"
cleanup() {
  [ -n "${MARINA_PID:-}" ] && kill "$MARINA_PID" 2>/dev/null || true
  for pid in "$WORK"/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/www" "$WORK/tmp" "$WORK/apps/app" "$WORK/plugins/proxy"
python3 -c 'import base64,os,sys; sys.stdout.write(base64.b64encode(os.urandom(1024)).decode()[:1024])' > "$WORK/www/f1k.txt"
chmod -R a+rX "$WORK"

nginx_conf() { # name, workers, server block → starts an nginx
  cat > "$WORK/$1.conf" <<CONF
worker_processes $2;
pid $WORK/$1.pid;
error_log $WORK/tmp/$1.error.log;
events { worker_connections 4096; }
http {
  access_log off;
  tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  $3
}
CONF
  nginx -c "$WORK/$1.conf" -e "$WORK/tmp/$1.error.log"
}
nginx_conf backend 1 "server { listen 127.0.0.1:$BACKEND_PORT; root $WORK/www; open_file_cache max=10; }"
nginx_conf proxy auto "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT; location / {
    proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host; } }"

# marina: the proxy plugin with one configured rule, and an app whose manifest proxies.
cat > "$WORK/plugins/proxy/manifest.yaml" <<YAML
name: "@buntime/plugin-proxy"
base: /redirects
rules:
  - pattern: "^/via-plugin/(.*)$"
    target: http://127.0.0.1:$BACKEND_PORT
    rewrite: /\$1
YAML
printf '<!doctype html><title>app</title>\n' > "$WORK/apps/app/index.html"
cat > "$WORK/apps/app/manifest.yaml" <<YAML
entrypoint: index.html
proxy:
  - pattern: "^/via-app/(.*)$"
    target: http://127.0.0.1:$BACKEND_PORT
    rewrite: /\$1
YAML
RUNTIME_LOG_LEVEL="${MARINA_LOG_LEVEL:-warn}" "$BIN" serve --port "$MARINA_PORT" --worker-dirs "$WORK/apps" \
  --plugin-dirs "$WORK/plugins" --state-dir "$WORK/state" &
MARINA_PID=$!

DIRECT="http://127.0.0.1:$BACKEND_PORT/f1k.txt"
NGINX="http://127.0.0.1:$NGINX_PORT/f1k.txt"
PLUGIN="http://127.0.0.1:$MARINA_PORT/via-plugin/f1k.txt"
APP="http://127.0.0.1:$MARINA_PORT/app/via-app/f1k.txt"
for _ in $(seq 200); do curl -fs "$PLUGIN" >/dev/null && break; sleep 0.05; done
for url in "$DIRECT" "$NGINX" "$PLUGIN" "$APP"; do
  curl -fsS -o "$WORK/tmp/got" "$url" || { echo "$url did not answer 200" >&2; exit 1; }
  cmp -s "$WORK/tmp/got" "$WORK/www/f1k.txt" || { echo "$url answered other bytes than the file" >&2; exit 1; }
done

run() { # conns duration url → wrk's output, after checking it had no errors
  local out
  out=$(wrk -t1 -c"$1" -d"$2" --latency "$3")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "errors in a run against $3:" >&2; echo "$out" >&2; exit 1; fi
  echo "$out"
}
field() { awk "$1" <<<"$2"; }
rps() { field '/Requests\/sec/ {print $2}' "$1"; }
per_resp() { # bytes read per response, from "N requests in T, X MB read"
  python3 - "$1" <<'PY'
import re, sys
m = re.search(r"(\d+) requests in [^,]+, ([\d.]+)([KMG]?B) read", sys.argv[1])
n, x, unit = int(m.group(1)), float(m.group(2)), m.group(3)
print(round(x * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit] / n))
PY
}
pct() { field "/^ +$1%/ {print \$2}" "$2"; }

declare -A R B
for name in direct nginx plugin app; do
  case $name in direct) url=$DIRECT ;; nginx) url=$NGINX ;; plugin) url=$PLUGIN ;; app) url=$APP ;; esac
  run "$CONNS" 2s "$url" >/dev/null   # warm-up, discarded
  out=$(run "$CONNS" "$DURATION" "$url")
  R[$name]=$(rps "$out"); B[$name]=$(per_resp "$out")
done
declare -A P50 P99
for name in direct nginx plugin; do
  case $name in direct) url=$DIRECT ;; nginx) url=$NGINX ;; plugin) url=$PLUGIN ;; esac
  out=$(run 1 "$LAT_DURATION" "$url")
  P50[$name]=$(pct 50 "$out"); P99[$name]=$(pct 99 "$out")
done
us() { python3 -c "
import sys; v=sys.argv[1]
for suf, f in (('us',1),('ms',1000),('s',1e6)):
    if v.endswith(suf): print(round(float(v[:-len(suf)])*f, 1)); break" "$1"; }
added() { python3 -c "print(round($(us "$1") - $(us "$2"), 1))"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

{
  echo "Reverse proxy to an nginx backend serving 1 KiB, keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\` on $(nproc) cores, $(date -u +%Y-%m-%d), load average before the run: ${LOAD:-$(cut -d' ' -f1-3 /proc/loadavg)}."
  echo "Command: \`bench/proxy.sh\`${MARINA_BIN:+ (marina binary \`$MARINA_BIN\`, given by MARINA_BIN)}."
  echo
  echo "| path | req/s | bytes read per response | / nginx proxy | / backend direct |"
  echo "|---|---|---|---|---|"
  echo "| backend direct (nginx, 1 worker) | ${R[direct]} | ${B[direct]} | | 1.00 |"
  echo "| nginx proxy (\`worker_processes auto\`, upstream keep-alive) | ${R[nginx]} | ${B[nginx]} | 1.00 | $(ratio "${R[nginx]}" "${R[direct]}") |"
  echo "| marina, proxy plugin rule | ${R[plugin]} | ${B[plugin]} | $(ratio "${R[plugin]}" "${R[nginx]}") | $(ratio "${R[plugin]}" "${R[direct]}") |"
  echo "| marina, app manifest rule | ${R[app]} | ${B[app]} | $(ratio "${R[app]}" "${R[nginx]}") | $(ratio "${R[app]}" "${R[direct]}") |"
  echo
  echo "Latency with one connection (\`wrk -t1 -c1 -d$LAT_DURATION\`), p50 / p99:"
  echo "backend direct ${P50[direct]} / ${P99[direct]}; nginx proxy ${P50[nginx]} / ${P99[nginx]} (adds $(added "${P50[nginx]}" "${P50[direct]}") µs at p50);"
  echo "marina ${P50[plugin]} / ${P99[plugin]} (adds $(added "${P50[plugin]}" "${P50[direct]}") µs at p50)."
} | tee /dev/stderr > "${OUT:-/dev/null}"
