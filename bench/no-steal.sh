#!/usr/bin/env bash
# What per-thread scheduling costs (`RUNTIME_SCHEDULER=per-thread`): no thread takes work from
# another, so a connection whose work is CPU-heavy inside marina delays the other connections on
# its thread. The heavy work here is a WebAssembly guest computing without end (the test guest's
# `/loop`, cut at the app's 1 s timeout with a 504, and asked again at once), which runs on
# marina's threads and yields every 10 ms tick. Beside it: light traffic, a 1 KiB static file at
# a paced rate (8 connections, a 2 ms pause between each one's requests), whose latency is the
# measure. The same binary, shared runtime and per-thread, both on two threads, alternately;
# each once without the guest computing and once with SPINNERS requests computing at a time.
#
# Usage: bench/no-steal.sh   (DURATION=5s ROUNDS=3 SPINNERS=1)
# Needs: wrk, python3, curl.
source "$(dirname "$0")/lib.sh"
build_marina
load_line
SPINNERS="${SPINNERS:-1}"

mkdir -p "$WORK/apps/site" "$WORK/apps/spin"
printf 'entrypoint: index.html\n' > "$WORK/apps/site/manifest.yaml"
printf '<!doctype html><title>bench</title>\n' > "$WORK/apps/site/index.html"
python3 -c 'import os,sys; sys.stdout.buffer.write(os.urandom(1024))' > "$WORK/apps/site/f1k.bin"
cp "$(dirname "$0")/../crates/wasm/tests/guest.wat" "$WORK/apps/spin/guest.wat"
"$BIN" wasm build "$WORK/apps/spin/guest.wat" >/dev/null
printf 'entrypoint: guest.wasm\nttl: 5m\ntimeout: 1s\n' > "$WORK/apps/spin/manifest.yaml"
chmod -R a+rX "$WORK"

declare -A PORT_OF=([shared]=18211 [pthread]=18212)
RUNTIME_THREADS=2 RUNTIME_LOG_LEVEL=error "$BIN" serve --port 18211 --worker-dirs "$WORK/apps" \
  --state-dir "$WORK/state-s" 2>"$WORK/marina-s.log" & PIDS+=($!); PID_OF[shared]=$!
RUNTIME_SCHEDULER=per-thread RUNTIME_THREADS=2 RUNTIME_LOG_LEVEL=error "$BIN" serve --port 18212 \
  --worker-dirs "$WORK/apps" --state-dir "$WORK/state-p" 2>"$WORK/marina-p.log" & PIDS+=($!); PID_OF[pthread]=$!
for side in shared pthread; do
  u="http://127.0.0.1:${PORT_OF[$side]}"
  wait_ok "$u/site/f1k.bin"
  verify_file "$u/site/f1k.bin" "$WORK/apps/site/f1k.bin"
  code=$(curl -s -o /dev/null -w '%{http_code}' "$u/spin/loop")
  [ "$code" = 504 ] || { echo "FAIL: $u/spin/loop answered $code, not 504 (the guest's endless loop cut at 1 s)" >&2; exit 1; }
done

# The spinners: SPINNERS clients asking for /spin/loop again as soon as each is cut.
SPIN_PIDS=()
spin() { # start|stop side
  if [ "$1" = start ]; then
    local i
    for i in $(seq "$SPINNERS"); do
      (while :; do curl -s -o /dev/null "http://127.0.0.1:${PORT_OF[$2]}/spin/loop"; done) &
      SPIN_PIDS+=($!) PIDS+=($!) # PIDS: stopped by the exit's cleanup too
    done
    sleep 0.2 # the guests are computing before the measured run starts
  else
    local p
    # The loop first, then its curl (none between two requests: pkill finding nothing is fine).
    for p in "${SPIN_PIDS[@]}"; do kill "$p" 2>/dev/null || true; pkill -P "$p" 2>/dev/null || true; done
    SPIN_PIDS=()
    sleep 1.2 # a guest whose client left computes until its 1 s timeout: not into the next run
  fi
}

printf 'function delay() return 2 end\n' > "$WORK/pause.lua"
steal_mark
S=http://127.0.0.1:18211/site/f1k.bin P=http://127.0.0.1:18212/site/f1k.bin
WRK_SCRIPT="$WORK/pause.lua" compare 8 shared "$S" pthread "$P"
quiet="| alone | $(rps_of shared) | $(p50_of shared) / $(p99_of shared) | $(rps_of pthread) | $(p50_of pthread) / $(p99_of pthread) |"
AROUND=spin WRK_SCRIPT="$WORK/pause.lua" compare 8 shared "$S" pthread "$P"
busy="| beside $SPINNERS computing guest(s) | $(rps_of shared) | $(p50_of shared) / $(p99_of shared) | $(rps_of pthread) | $(p50_of pthread) / $(p99_of pthread) |"
{
  echo "Light static requests (1 KiB, 8 connections, 2 ms pause each) beside a computing WebAssembly guest, \`wrk -t1 -c8 -d$DURATION\`, $ROUNDS alternating rounds (median), $(date -u '+%Y-%m-%d %H:%M UTC'); $(load_line)."
  echo "Command: \`SPINNERS=$SPINNERS bench/no-steal.sh\`. The same binary, both sides on two threads; marina at \`error\`."
  echo
  echo "| static requests | shared req/s | shared p50 / p99 ms | per-thread req/s | per-thread p50 / p99 ms |"
  echo "|---|---|---|---|---|"
  echo "$quiet"
  echo "$busy"
  echo
  echo "CPU steal during the run: $(steal_since) of the cores' time."
} | tee /dev/stderr > "${OUT:-/dev/null}"
