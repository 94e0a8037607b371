#!/usr/bin/env bash
# Where the CPU of one `ttl: 0` JS request goes: marina itself, the worker process, and the
# same worker started by hand without marina, in steps. CPU is utime+stime from the kernel
# (getrusage of waited-for children, /proc/<pid>/stat), not wall time, so it holds on a loaded
# machine; minor page faults are given too, as they do not depend on load at all.
#
# 1. By hand, N runs each (no marina, no sandbox, as the current user):
#    - `bun -e 0`: Bun's own start and exit;
#    - `bun app.mjs` importing the hello app and exiting;
#    - the same plus `Bun.serve` on a Unix socket (the least a worker can do);
#    - marina's shim (the file marina writes) with the hello app, exactly as marina runs it
#      (socket, readiness pipe, token on stdin): start → readiness line → one request → SIGTERM
#      → exit.
# 2. marina serving the ttl: 0 hello app under `wrk -c10` (as bench/ttl0.sh does): CPU per
#    request of marina alone (user and system) and of its worker processes (cutime/cstime), with
#    the default sandbox and again with cgroups off (RUNTIME_CGROUP_PARENT=off).
#
# Usage: bench/ttl0-split.sh   (N=60 runs by hand; DURATION=8s; MARINA_BIN=path as in lib.sh)
# Needs: wrk, bun, python3, curl.
DURATION="${DURATION:-8s}"   # before lib.sh, whose default is 5s
source "$(dirname "$0")/lib.sh"
need bun "npm i -g bun"
N="${N:-60}"
build_marina
load_line

mkdir -p "$WORK/apps/eph" "$WORK/sock"
cat > "$WORK/apps/eph/index.js" <<'JS'
export default { fetch: () => new Response("hello world\n", { headers: { "content-type": "text/plain" } }) };
JS
printf 'ttl: 0\n' > "$WORK/apps/eph/manifest.yaml"
cat > "$WORK/import.mjs" <<JS
await import("$WORK/apps/eph/index.js");
JS
cat > "$WORK/serve.mjs" <<JS
const app = (await import("$WORK/apps/eph/index.js")).default;
Bun.serve({ unix: "$WORK/sock/serve.sock", fetch: app.fetch }).stop(true);
JS
chmod -R a+rX "$WORK"

# marina writes its shim at start: run it once to get the very file its workers run.
RUNTIME_LOG_LEVEL=error "$BIN" serve --port 18197 --worker-dirs "$WORK/apps" --state-dir "$WORK/state" \
  2>"$WORK/marina.log" & MPID=$!; PIDS+=($MPID)
wait_ok "http://127.0.0.1:18197/api/health"
verify_text "http://127.0.0.1:18197/eph/" $'hello world\n'
cp "$WORK/state/shim/host.mjs" "$WORK/host.mjs"
kill "$MPID"; wait "$MPID" 2>/dev/null || true

by_hand=$(python3 - "$WORK" "$N" <<'PY'
import os, resource, signal, socket, subprocess, sys
work, n = sys.argv[1], int(sys.argv[2])
env = {"PATH": os.environ["PATH"], "HOME": work, "ENTRYPOINT": f"{work}/apps/eph/index.js"}

def usage():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_minflt

def worker(i):
    """The shim as marina runs it: readiness pipe, token on stdin, one request, SIGTERM."""
    sock = f"{work}/sock/w{i}.sock"
    r, w = os.pipe()
    p = subprocess.Popen(["bun", f"{work}/host.mjs", sock, str(w)], stdin=subprocess.PIPE, env=env,
                         cwd=f"{work}/apps/eph", pass_fds=(w,))
    os.close(w)
    p.stdin.write(b"token\n"); p.stdin.close()
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(r, 64)
        if not chunk:
            raise SystemExit(f"the shim exited before its readiness line ({line!r})")
        line += chunk
    os.close(r)
    s = socket.socket(socket.AF_UNIX); s.connect(sock)
    s.sendall(b"GET / HTTP/1.1\r\nhost: w\r\n\r\n")
    got = b""
    while b"hello world\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"the worker closed without answering ({got!r})")
        got += chunk
    s.close()
    p.send_signal(signal.SIGTERM)
    p.wait()
    os.unlink(sock)

cases = [
    ("`bun -e 0`", lambda i: subprocess.run(["bun", "-e", "0"], check=True, env=env)),
    ("`bun` importing the app", lambda i: subprocess.run(["bun", f"{work}/import.mjs"], check=True, env=env)),
    ("`bun` importing the app + `Bun.serve` on a Unix socket", lambda i: subprocess.run(["bun", f"{work}/serve.mjs"], check=True, env=env)),
    ("marina's shim + the app: ready line, 1 request, SIGTERM", worker),
]
res = {name: [] for name, _ in cases}
for name, run in cases:            # warm-up (page cache)
    for i in range(3):
        run(i)
for rnd in range(3):               # alternating rounds: background load hits every case alike
    for name, run in cases:
        c0, f0 = usage()
        for i in range(n // 3):
            run(i)
        c1, f1 = usage()
        res[name].append(((c1 - c0) * 1000 / (n // 3), (f1 - f0) / (n // 3)))
for name, _ in cases:
    cpu = sorted(x[0] for x in res[name])[1]
    flt = sorted(x[1] for x in res[name])[1]
    print(f"| {name} | {cpu:.1f} | {flt:.0f} |")
PY
)

# CPU of marina alone (user, system) and of everything it started (cutime+cstime of the
# waited-for workers plus the live ones), in seconds.
cat > "$WORK/cpu.py" <<'PY'
import os, sys
tck = os.sysconf("SC_CLK_TCK")
def stat(pid):
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()
root = int(sys.argv[1])
f = stat(root)
user, system, cuser, csys = (int(x) / tck for x in f[11:15])
live = 0.0
kids = {}
for p in os.listdir("/proc"):
    if p.isdigit() and (s := stat(int(p))):
        kids.setdefault(int(s[1]), []).append(int(p))
stack = list(kids.get(root, []))
while stack:
    p = stack.pop()
    if (s := stat(p)):
        live += sum(int(x) for x in s[11:15]) / tck
        stack.extend(kids.get(p, []))
print(user, system, cuser + csys + live)
PY

run_marina() { # label, extra env → a table row
  env RUNTIME_LOG_LEVEL=error "${@:2}" "$BIN" serve --port 18198 --worker-dirs "$WORK/apps" \
    --state-dir "$WORK/state-$1" 2>"$WORK/marina-$1.log" & local pid=$!; PIDS+=($pid)
  wait_ok "http://127.0.0.1:18198/api/health"
  verify_text "http://127.0.0.1:18198/eph/" $'hello world\n'
  DURATION=2s wrk_run 10 "http://127.0.0.1:18198/eph/" >/dev/null
  read -r u0 s0 w0 <<<"$(python3 "$WORK/cpu.py" "$pid")"
  read -r rps p50 p99 _ errors _ <<<"$(wrk_run 10 "http://127.0.0.1:18198/eph/")"
  read -r u1 s1 w1 <<<"$(python3 "$WORK/cpu.py" "$pid")"
  [ "$errors" = 0 ] || echo "WARNING: $errors errors in the $1 run" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$1" "$rps" "${DURATION%s}" "$u0" "$s0" "$w0" "$u1" "$s1" "$w1" "$p50" <<'PY'
import sys
label, rps, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
u0, s0, w0, u1, s1, w1 = map(float, sys.argv[4:10])
n = rps * secs
ms = lambda a, b: (b - a) * 1000 / n
print(f"| {label} | {rps:.0f} | {sys.argv[10]} | {ms(u0, u1) + ms(s0, s1):.2f} ({ms(u0, u1):.2f} + {ms(s0, s1):.2f}) | {ms(w0, w1):.2f} | **{ms(u0, u1) + ms(s0, s1) + ms(w0, w1):.2f}** |")
PY
}
row_default=$(run_marina "default sandbox")
row_nocg=$(run_marina "cgroups off" RUNTIME_CGROUP_PARENT=off)

{
  echo "ttl: 0 CPU split, $(date -u '+%Y-%m-%d %H:%M UTC'); $(load_line); bun $(bun --version)."
  echo "Command: \`bench/ttl0-split.sh\` (N=$N runs by hand, 3 alternating rounds, median; marina: \`wrk -t1 -c10 -d$DURATION\`)."
  echo
  echo "| by hand, no marina | CPU ms per run | minor faults per run |"
  echo "|---|---|---|"
  echo "$by_hand"
  echo
  echo "| marina, ttl: 0 hello | req/s | p50 ms | marina ms (user + sys) per request | workers ms per request | total ms per request |"
  echo "|---|---|---|---|---|---|"
  echo "$row_default"
  echo "$row_nocg"
} | tee /dev/stderr > "${OUT:-/dev/null}"
