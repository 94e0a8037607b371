#!/usr/bin/env bash
# Static files: marina vs nginx on the same files, same wrk settings, one run, side by side.
# Also measures marina's cold start (process start → first 200).
#
# Usage: bench/static.sh   (MARINA_LOG_LEVEL=info to include the cost of one access log line per request)
# Needs: wrk, nginx (apt-get install wrk nginx-light), python3, a release build of marina.
# Loopback only; every load run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"
CONNS="${CONNS:-32}"
MARINA_PORT="${MARINA_PORT:-18080}"
NGINX_PORT="${NGINX_PORT:-18081}"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is missing: apt-get install nginx-light" >&2; exit 1; }
cargo build --release -q -p marina
BIN="$PWD/target/release/marina"

WORK="$(mktemp -d)"
cleanup() {
  [ -n "${MARINA_PID:-}" ] && kill "$MARINA_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

APP="$WORK/apps/site"
mkdir -p "$APP"
printf 'entrypoint: index.html\n' > "$APP/manifest.yaml"
printf '<!doctype html><title>bench</title>\n' > "$APP/index.html"
python3 -c 'import base64,os,sys; sys.stdout.write(base64.b64encode(os.urandom(1024)).decode()[:1024])' > "$APP/f1k.txt"
python3 -c 'import base64,os,sys; sys.stdout.write(base64.b64encode(os.urandom(65536)).decode()[:65536])' > "$APP/f64k.txt"

# nginx's workers run as an unprivileged user: let them read the files.
chmod -R a+rX "$WORK"

# nginx: the same files, tuned as a production static server would be.
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  include /etc/nginx/mime.types;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; root $WORK/apps; location /site/ { etag on; } }
}
CONF
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"

RUNTIME_LOG_LEVEL="${MARINA_LOG_LEVEL:-warn}" "$BIN" serve --port "$MARINA_PORT" --worker-dirs "$WORK/apps" --state-dir "$WORK/state" &
MARINA_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$MARINA_PORT/site/f1k.txt" >/dev/null && break; sleep 0.05; done
curl -fs "http://127.0.0.1:$NGINX_PORT/site/f1k.txt" >/dev/null

rps() { # url → requests/s
  wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$1" | awk '/Requests\/sec/ {print $2}'
}

results=()
for f in f1k.txt f64k.txt; do
  rps "http://127.0.0.1:$MARINA_PORT/site/$f" >/dev/null  # warm-up, discarded
  m=$(rps "http://127.0.0.1:$MARINA_PORT/site/$f")
  n=$(rps "http://127.0.0.1:$NGINX_PORT/site/$f")
  ratio=$(python3 -c "print(f'{$m/$n:.2f}')")
  results+=("| $f | $m | $n | $ratio |")
done
kill "$MARINA_PID"; wait "$MARINA_PID" 2>/dev/null || true; MARINA_PID=""

# Cold start: from spawning the process to the first 200 on a static file, 20 runs, median.
cold=$(python3 - "$BIN" "$WORK" <<'PY'
import http.client, os, socket, statistics, subprocess, sys, time
bin, work = sys.argv[1], sys.argv[2]
port = 18090
samples = []
for i in range(20):
    env = dict(os.environ, RUNTIME_LOG_LEVEL="error")
    t0 = time.perf_counter()
    p = subprocess.Popen([bin, "serve", "--port", str(port), "--worker-dirs", f"{work}/apps",
                          "--state-dir", f"{work}/cold"], env=env)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/site/f1k.txt")
            if c.getresponse().status == 200:
                break
        except (ConnectionRefusedError, socket.timeout, http.client.RemoteDisconnected, ConnectionResetError):
            pass
        if time.perf_counter() - t0 > 10:
            raise SystemExit("marina did not answer within 10 s")
        time.sleep(0.0002)
    samples.append((time.perf_counter() - t0) * 1000)
    p.terminate(); p.wait()
print(f"{statistics.median(samples):.1f} ms median, {min(samples):.1f} ms min, {max(samples):.1f} ms max")
PY
)

{
  echo "Static files, keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\` on $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo "Command: \`bench/static.sh\`."
  echo
  echo "| file | marina req/s | nginx req/s | marina / nginx |"
  echo "|---|---|---|---|"
  printf '%s\n' "${results[@]}"
  echo
  echo "Cold start (spawn → first 200, 20 runs): $cold"
} | tee /dev/stderr > "${OUT:-/dev/null}"
