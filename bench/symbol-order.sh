#!/usr/bin/env bash
# Regenerates crates/cli/startup.order: the functions marina runs in ordinary use, hottest
# first, which crates/cli/build.rs hands to the linker (lld's --symbol-ordering-file) so that
# they sit together in the binary instead of scattered over its 35 MB of code.
#
# Why: the kernel maps a file-backed page together with its neighbours (fault-around, 64 KiB),
# so each first call into a cold part of `.text` makes up to 16 pages of marina's RSS resident.
# Scattered, the ~4 MB of code marina actually runs kept ~13-17 MB of `.text` resident.
#
# How, with one workload (start-up on a fresh SQLite state dir, a static file, a warm JS app,
# `ttl: 0` JS requests one at a time and ten at once, the health endpoint, a 404):
# 1. under `valgrind --tool=callgrind`: every function of the binary that ran, ordered by its
#    own instruction count;
# 2. natively under `perf record -e page-faults` (if perf is there): the functions whose first
#    call faulted a page of `.text` in. Valgrind's CPU lacks SHA-NI and AVX-512 and runs one
#    thread at a time, so native runs take a few paths it never sees; they are appended. Run
#    this again on a binary linked with the new list to catch what hid behind those faults.
# Symbol names carry crate hashes: after a dependency update or a rename the stale lines are
# skipped by the linker (no error), and the layout falls back towards the default until this
# script is re-run.
#
# Usage: bench/symbol-order.sh   (MARINA_BIN=path: that binary instead of a release build)
# Needs: valgrind, bun, wrk, curl, python3; perf for step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
command -v bun >/dev/null || { echo "bun is missing: npm i -g bun" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
if [ -n "${MARINA_BIN:-}" ]; then BIN="$(realpath "$MARINA_BIN")"; else
  cargo build --release -q -p marina
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/marina"
fi
PORT="${PORT:-18297}"
WORK="$(mktemp -d /tmp/marina-order.XXXXXX)"
trap '[ -n "${MPID:-}" ] && kill "$MPID" 2>/dev/null; rm -rf "$WORK"' EXIT

mkdir -p "$WORK/apps/site" "$WORK/apps/eph" "$WORK/apps/hello"
printf 'entrypoint: index.html\n' > "$WORK/apps/site/manifest.yaml"
printf '<!doctype html><title>site</title>\n' > "$WORK/apps/site/index.html"
cat > "$WORK/apps/eph/index.js" <<'JS'
export default { fetch: () => new Response("hello world\n", { headers: { "content-type": "text/plain" } }) };
JS
cp "$WORK/apps/eph/index.js" "$WORK/apps/hello/index.js"
printf 'ttl: 0\n' > "$WORK/apps/eph/manifest.yaml"
printf 'ttl: 5m\n' > "$WORK/apps/hello/manifest.yaml"
chmod -R a+rX "$WORK"

ok() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = "$2" ] || { echo "FAIL $1: expected $2" >&2; exit 1; }; }
# One run of the workload on marina started by "$@" (its pid in MPID once it answers).
workload() { # state-dir-name command...
  local state="$WORK/$1"; shift
  RUNTIME_LOG_LEVEL=error "$@" "$BIN" serve --port "$PORT" --worker-dirs "$WORK/apps" \
    --state-dir "$state" 2>"$WORK/$(basename "$state").log" & MPID=$!
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/site/" || true)" = 200 ] && break
    sleep 0.1
  done
  for _ in $(seq 30); do ok "http://127.0.0.1:$PORT/eph/" 200; done
  # Concurrent ttl: 0 requests queue for the ephemeral slots (another path than one at a time).
  wrk -t1 -c10 -d5s "http://127.0.0.1:$PORT/eph/" >/dev/null
  for _ in $(seq 30); do ok "http://127.0.0.1:$PORT/hello/" 200; done
  for _ in $(seq 30); do ok "http://127.0.0.1:$PORT/site/" 200; done
  ok "http://127.0.0.1:$PORT/api/health" 200
  ok "http://127.0.0.1:$PORT/no-such-app/" 404
  sleep 2   # the last ttl: 0 worker's clean-up
}

workload cg valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file="$WORK/cg.out"
kill -INT "$MPID"; wait "$MPID" || true; MPID=
: > "$WORK/perf.script"
if command -v perf >/dev/null; then
  workload perf perf record -q -e page-faults -c 1 -d -o "$WORK/perf.data" --
  # perf's child is marina: the faults of that pid (not of its workers) count.
  pid=$(pgrep -P "$MPID" -f "$BIN" | head -1)
  kill -INT "$pid"; wait "$MPID" || true; MPID=
  perf script -i "$WORK/perf.data" --show-mmap-events -F pid,addr 2>/dev/null | grep -E "^ *$pid |MMAP2 $pid/" > "$WORK/perf.script" || true
fi

python3 - "$WORK/cg.out" "$BIN" "$WORK/perf.script" > crates/cli/startup.order <<'PY'
import bisect, re, subprocess, sys
cg, binary, perf = sys.argv[1:4]
symbols = []
for line in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    p = line.split()
    if len(p) == 4 and p[2] in "tTwW":
        symbols.append((int(p[0], 16), int(p[1], 16), p[3]))
symbols.sort()
defined = {s[2] for s in symbols}

# 1. callgrind: each function's own cost (the line after calls= is a call's inclusive cost).
names, obs, cost = {}, {}, {}
ob = fn = None
skip = False
for line in open(cg):
    if skip:
        skip = False
        continue
    m = re.match(r"^(c?ob|c?fn|c?fi|c?fe|fl)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, ident, name = m.groups()
        table = obs if kind.endswith("ob") else names if kind.endswith("fn") else None
        if table is not None and name:
            table[ident] = name
        if kind == "ob":
            ob = obs[ident]
        elif kind == "fn":
            fn = re.sub(r"'\d+$", "", names[ident]) if ob == binary else None
        continue
    if line.startswith("calls="):
        skip = True
        continue
    if fn in defined and line[:1] in "0123456789+-*":
        parts = line.split()
        if len(parts) >= 2:
            cost[fn] = cost.get(fn, 0) + int(parts[-1])
order = sorted(cost, key=lambda f: (-cost[f], f))

# 2. perf: the function at each faulting address in the binary's text, in fault order.
base, starts, seen = None, [s[0] for s in symbols], set(order)
for line in open(perf):
    m = re.search(r"MMAP2 \d+/\d+: \[0x([0-9a-f]+)\(0x[0-9a-f]+\) @ 0 .* (\S+)$", line)
    if m:
        if m.group(2) == binary and base is None:
            base = int(m.group(1), 16)
        continue
    p = line.split()
    if base is None or len(p) != 2:
        continue
    addr = int(p[1], 16) - base
    i = bisect.bisect_right(starts, addr) - 1
    if i >= 0 and symbols[i][0] <= addr < symbols[i][0] + symbols[i][1] and symbols[i][2] not in seen:
        seen.add(symbols[i][2])
        order.append(symbols[i][2])
print("\n".join(order))
PY
echo "crates/cli/startup.order: $(wc -l < crates/cli/startup.order) functions" >&2
