#!/usr/bin/env bash
# Where marina's cold start goes (#13: cold start ≤ 10 ms with a fresh SQLite): RUNS fresh starts
# of `marina serve` (a new, empty state dir each time, so a new SQLite database is created and
# migrated), each until the first 200 on a static file and then stopped with SIGTERM, and RUNS
# runs of `marina --version` (the binary loaded, its relocations applied, clap, exit: no start-up
# code of marina's own). For each, from the kernel:
#   - wall time from spawn to the first 200 (serve only; polled every 0.2 ms over loopback);
#   - CPU time (user + system) of the whole run, from wait4's rusage (µs resolution; for serve
#     this includes answering one request and the shutdown);
#   - minor page faults: at the first 200 (/proc/PID/stat) and over the whole run (rusage).
# Medians are printed, min and max beside them. STATE_BASE: where the fresh state dirs go (default
# a temporary dir; /dev/shm to take the disk out). APPS: the worker dir to serve (it must hold a
# static app `site` whose /site/ is its index.html, checked byte for byte; default a one-page
# static app). SUMMARY=1: only the serve
# runs, and only "<median> ms median, <min> min, <max> max" of their wall time (what
# bench/ttl0.sh reports as its cold start).
#
# Usage: bench/startup.sh   (RUNS=20; MARINA_BIN=path: that binary instead of a release build)
# Needs: python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-20}"
if [ -n "${MARINA_BIN:-}" ]; then BIN="$MARINA_BIN"; else
  cargo build --release -q -p marina
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/marina"
fi
WORK="$(mktemp -d /tmp/marina-startup.XXXXXX)"
trap 'rm -rf "$WORK" "${STATE_BASE:+$STATE_BASE/marina-startup-states}"' EXIT
if [ -z "${APPS:-}" ]; then
  APPS="$WORK/apps"
  mkdir -p "$APPS/site"
  printf '<!doctype html><title>cold</title>\n' > "$APPS/site/index.html"
fi
STATES="${STATE_BASE:+$STATE_BASE/marina-startup-states}"
STATES="${STATES:-$WORK/states}"

[ "${SUMMARY:-}" = 1 ] || echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"
python3 - "$BIN" "$APPS" "$STATES" "$RUNS" "${SUMMARY:-}" <<'PY'
import http.client, os, signal, socket, statistics, subprocess, sys, time

bin, apps, states, runs, summary = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
os.makedirs(states, exist_ok=True)
page = open(f"{apps}/site/index.html", "rb").read()
env = dict(os.environ, RUNTIME_LOG_LEVEL="error")
PORT = 18310


def minflt(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])


def cpu_ms(ru):
    return (ru.ru_utime + ru.ru_stime) * 1000


serve, version = [], []
for i in range(runs):
    state = f"{states}/s{i}"
    t0 = time.perf_counter()
    p = subprocess.Popen([bin, "serve", "--port", str(PORT), "--worker-dirs", apps, "--state-dir", state],
                         env=env, stderr=subprocess.DEVNULL)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=1)
            c.request("GET", "/site/")
            r = c.getresponse()
            if r.status == 200:
                body = r.read()
                if body != page:
                    p.kill()
                    raise SystemExit(f"/site/ answered 200 with {len(body)} bytes, not its index.html's {len(page)}")
                break
        except (ConnectionRefusedError, socket.timeout, http.client.RemoteDisconnected, ConnectionResetError):
            pass
        if time.perf_counter() - t0 > 10:
            p.kill()
            raise SystemExit("marina did not answer within 10 s")
        time.sleep(0.0002)
    wall = (time.perf_counter() - t0) * 1000
    faults_ready = minflt(p.pid)
    assert os.path.exists(f"{state}/marina.db"), "no fresh database was created"
    p.send_signal(signal.SIGTERM)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = status
    serve.append((wall, cpu_ms(ru), faults_ready, ru.ru_minflt))
if summary:
    walls = [r[0] for r in serve]
    print(f"{statistics.median(walls):.1f} ms median, {min(walls):.1f} min, {max(walls):.1f} max")
    sys.exit(0)
for _ in range(runs):
    p = subprocess.Popen([bin, "--version"], env=env, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = status
    version.append((cpu_ms(ru), ru.ru_minflt))


def col(rows, k, fmt):
    xs = [r[k] for r in rows]
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"


ms = lambda x: f"{x:.1f} ms"
n = lambda x: f"{x:.0f}"
print(f"Command: `bench/startup.sh` ({runs} runs each; medians, min–max in brackets).")
print()
print("| run | wall to the first 200 | CPU, whole run | minor faults at the first 200 | minor faults, whole run |")
print("|---|---|---|---|---|")
print(f"| `marina serve`, fresh SQLite, one request, SIGTERM | {col(serve, 0, ms)} | {col(serve, 1, ms)} "
      f"| {col(serve, 2, n)} | {col(serve, 3, n)} |")
print(f"| `marina --version` | – | {col(version, 0, ms)} | – | {col(version, 1, n)} |")
PY
