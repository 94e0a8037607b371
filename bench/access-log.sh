#!/usr/bin/env bash
# The access log's cost (#13: at `info` it may cost at most 3% of static throughput): the same
# 1 KiB static file from marina at `info` (one access line per request, stderr to a file) and
# from marina at `error` (no access line), as bench/static.sh serves it.
#
#   bench/access-log.sh               wrk: the two run alternately ROUNDS times, the same
#                                     settings, median of each and "info ÷ error"; text and JSON;
#                                     also marina's CPU time per request at each level (from
#                                     /proc/PID/stat), the steadier measure on a noisy VM.
#   MODE=callgrind bench/access-log.sh
#                                     instructions per request under callgrind (a release
#                                     binary; they do not depend on the machine's load): warm-up,
#                                     `callgrind_control -z`, `wrk -t1 -c8 -d$CG_DURATION`,
#                                     `callgrind_control -d`, total ÷ the requests wrk counted.
#                                     Leaves the profiles in $CG_OUT (default /tmp/access-cg).
#                                     With nginx installed, the same for nginx as a yardstick:
#                                     its access log off, at its default (a write(2) per line)
#                                     and with `buffer=64k`.
#
# Usage: bench/access-log.sh   (DURATION=5s ROUNDS=5 CONNS=32 FORMATS="text json" BASE_PORT=18390)
# Needs: wrk, python3, curl (MODE=callgrind: valgrind).
ROUNDS="${ROUNDS:-5}"
source "$(dirname "$0")/lib.sh"
MODE="${MODE:-wrk}"
FORMATS="${FORMATS:-text json}"
build_marina
LOAD=$(load_line)

APP="$WORK/apps/site"
mkdir -p "$APP"
printf 'entrypoint: index.html\n' > "$APP/manifest.yaml"
printf '<!doctype html><title>bench</title>\n' > "$APP/index.html"
python3 -c 'import os,sys; sys.stdout.buffer.write(os.urandom(1024))' > "$APP/f1k.bin"

# start LEVEL FORMAT PORT [wrapper...]: marina serving $WORK/apps, stderr to $WORK/LEVEL-FORMAT.log.
start() {
  local level=$1 format=$2 port=$3; shift 3
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then echo "port $port is taken (BASE_PORT=...)" >&2; exit 1; fi
  RUNTIME_LOG_LEVEL=$level RUNTIME_LOG_FORMAT=$format "$@" "$BIN" serve --port "$port" \
    --worker-dirs "$WORK/apps" --state-dir "$WORK/state-$level-$format" 2>"$WORK/$level-$format.log" &
  PIDS+=($!)
  PID_OF[$level-$format]=$!
  wait_ok "http://127.0.0.1:$port/site/f1k.bin"
  verify_file "http://127.0.0.1:$port/site/f1k.bin" "$APP/f1k.bin"
}

access_lines() { grep -c 'marina::access' "$1" || true; }

if [ "$MODE" = callgrind ]; then
  need valgrind "apt-get install valgrind"
  CG_OUT="${CG_OUT:-/tmp/access-cg}"
  CG_DURATION="${CG_DURATION:-8s}"
  mkdir -p "$CG_OUT"
  # measure VALGRIND_PID PORT OUT: warm-up, zero the counts, CG_DURATION of load, dump, stop;
  # prints "requests | instructions per request".
  measure() {
    local vpid=$1 url="http://127.0.0.1:$2/site/f1k.bin" n ir
    DURATION=3s wrk_run 8 "$url" >/dev/null   # warm-up
    callgrind_control -z "$vpid" >/dev/null 2>&1
    n=$(wrk -t1 -c8 -d"$CG_DURATION" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d "$vpid" >/dev/null 2>&1
    kill "$vpid"; wait "$vpid" 2>/dev/null || true
    # The dump taken by -d is the one numbered .1 (the exit writes another).
    ir=$(grep -h '^summary:' "$3".*.1 | awk '{print $2}')
    echo "$n | $(python3 -c "print(f'{$ir / $n:,.0f}')")"
  }
  echo "| format | level | requests | instructions per request |"
  echo "|---|---|---|---|"
  port=${BASE_PORT:-18390}
  for format in $FORMATS; do
    for level in error info; do
      port=$((port + 1))
      out="$CG_OUT/cg.$format-$level"
      rm -f "$out"*
      start "$level" "$format" "$port" valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out.%p"
      echo "| $format | $level | $(measure "${PIDS[-1]}" "$port" "$out") |"
    done
  done
  # The yardstick: nginx serving the same file, one process under callgrind, its access log off,
  # at its default (`access_log FILE;`: one write(2) per line) and buffered (`buffer=64k`).
  if command -v nginx >/dev/null; then
    chmod -R a+rX "$WORK"
    for log in off default buffered; do
      port=$((port + 1))
      case $log in
        off) directive="access_log off;" ;;
        default) directive="access_log $WORK/nginx-$log.access;" ;;
        buffered) directive="access_log $WORK/nginx-$log.access combined buffer=64k;" ;;
      esac
      cat > "$WORK/nginx-$log.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $WORK/nginx-cg-$log.pid; error_log $WORK/nginx-$log.error;
events { worker_connections 1024; }
http {
  sendfile on; tcp_nopush on; open_file_cache max=1000; $directive
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK; uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server { listen 127.0.0.1:$port; root $WORK/apps; }
}
CONF
      out="$CG_OUT/cg.nginx-$log"
      rm -f "$out"*
      valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out.%p" nginx -c "$WORK/nginx-$log.conf" -e "$WORK/nginx-$log.error" 2>/dev/null &
      PIDS+=($!)
      wait_ok "http://127.0.0.1:$port/site/f1k.bin"
      verify_file "http://127.0.0.1:$port/site/f1k.bin" "$APP/f1k.bin"
      echo "| nginx (yardstick) | access log $log | $(measure "${PIDS[-1]}" "$port" "$out") |"
    done
  fi
  exit 0
fi

rows=()
port=${BASE_PORT:-18390}
for format in $FORMATS; do
  start error "$format" $((port + 1))
  start info "$format" $((port + 2))
  compare "$CONNS" "error-$format" "http://127.0.0.1:$((port + 1))/site/f1k.bin" \
    "info-$format" "http://127.0.0.1:$((port + 2))/site/f1k.bin"
  rows+=("| $format | $(rps_of "error-$format") | $(rps_of "info-$format") | **$(ratio "$(rps_of "info-$format")" "$(rps_of "error-$format")")** | $(cpu_of "error-$format") / $(cpu_of "info-$format") | **$(ratio "$(cpu_of "error-$format")" "$(cpu_of "info-$format")")** | $(p99_of "error-$format") / $(p99_of "info-$format") | $(access_lines "$WORK/info-$format.log") |")
  port=$((port + 2))
done
{
  echo "Static 1 KiB, keep-alive, \`wrk -t1 -c$CONNS -d$DURATION\`, $ROUNDS alternating rounds (median), $(date -u '+%Y-%m-%d %H:%M UTC'); $LOAD; after: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Command: \`bench/access-log.sh\`."
  echo
  echo "| log format | error (req/s) | info (req/s) | info ÷ error | marina's CPU µs per request, error / info | error ÷ info | p99 ms error / info | access lines written |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee /dev/stderr > "${OUT:-/dev/null}"
