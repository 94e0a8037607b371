#!/usr/bin/env bash
# ttl: 0 (a fresh JS worker per request), cold start and marina's own memory.
#
# 1. ttl: 0 hello world under `wrk -c10`: requests/s, p50/p99, and CPU per request measured
#    from /proc: utime+stime of marina and every descendant (exited children through
#    cutime/cstime, live ones directly), before and after the run. Compared with the CPU of a
#    bare `bun -e 0` start. Then `wrk -c1`: the latency of one ttl: 0 request at a time.
# 2. Cold start (bench/startup.sh): spawning `marina serve` with a fresh, empty state dir (a new SQLite database
#    created and migrated) until the first 200 on a static file; 20 runs, median.
# 3. marina's RSS idle after start, after the ttl: 0 churn once the workers are gone, and after
#    a second churn as long (flat means the first one's growth was one-time warm-up), each in
#    MiB and MB with its anonymous and file-backed parts (/proc/<pid>/status).
#
# Usage: bench/ttl0.sh   (DURATION=10s; EPH_CONCURRENCY=2)
# Needs: wrk, bun, python3, curl.
DURATION="${DURATION:-10s}"   # before lib.sh, whose default is 5s
source "$(dirname "$0")/lib.sh"
need bun "npm i -g bun"
EPH_CONCURRENCY="${EPH_CONCURRENCY:-2}"
build_marina
load_line

mkdir -p "$WORK/apps/eph" "$WORK/apps/site"
cat > "$WORK/apps/eph/index.js" <<'JS'
export default { fetch: () => new Response("hello world\n", { headers: { "content-type": "text/plain" } }) };
JS
printf 'ttl: 0\n' > "$WORK/apps/eph/manifest.yaml"
printf 'entrypoint: index.html\n' > "$WORK/apps/site/manifest.yaml"
printf '<!doctype html><title>cold</title>\n' > "$WORK/apps/site/index.html"
chmod -R a+rX "$WORK"

# CPU seconds of a process and all its descendants (exited ones through cutime/cstime).
cat > "$WORK/treecpu.py" <<'PY'
import os, sys
tck = os.sysconf("SC_CLK_TCK")
def stat(pid):
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return int(f[1]), sum(int(x) for x in f[11:15]), sum(int(x) for x in f[11:13])   # ppid, all, own
root = int(sys.argv[1])
procs = {}
for p in os.listdir("/proc"):
    if p.isdigit() and (st := stat(int(p))):
        procs[int(p)] = st
kids = {}
for pid, (ppid, _, _) in procs.items():
    kids.setdefault(ppid, []).append(pid)
total, stack = 0, [root]
while stack:
    p = stack.pop()
    if p in procs:
        total += procs[p][1]
        stack.extend(kids.get(p, []))
print(total / tck, procs[root][2] / tck)   # marina and workers, marina alone
PY
# "23.9 MiB = 25.1 MB (anon 3.4, file 20.5 MiB)" from /proc/<pid>/status (kB there is KiB).
rss() {
  awk '/^VmRSS:/ {t = $2} /^RssAnon:/ {a = $2} /^RssFile:/ {f = $2}
       END {printf "%.1f MiB = %.1f MB (anon %.1f, file %.1f MiB)", t / 1024, t * 1.024 / 1000, a / 1024, f / 1024}' "/proc/$1/status"
}
# Wait until marina has no worker process left (the churn is over), then a second for clean-up.
workers_gone() {
  for _ in $(seq 200); do [ -z "$(cat /proc/$MPID/task/*/children 2>/dev/null | tr -d ' \n')" ] && break; sleep 0.05; done
  sleep 1
}

RUNTIME_LOG_LEVEL=error "$BIN" serve --port 18195 --worker-dirs "$WORK/apps" --state-dir "$WORK/state" \
  --ephemeral-concurrency "$EPH_CONCURRENCY" 2>"$WORK/marina.log" & MPID=$!; PIDS+=($MPID)
wait_ok "http://127.0.0.1:18195/site/"
sleep 1
idle_rss=$(rss "$MPID")
verify_text "http://127.0.0.1:18195/eph/" $'hello world\n'
DURATION=2s wrk_run 10 "http://127.0.0.1:18195/eph/" >/dev/null   # warm-up (page cache, Bun's cache)
read -r cpu0 own0 <<<"$(python3 "$WORK/treecpu.py" "$MPID")"
read -r rps p50 p99 _ errors _ <<<"$(wrk_run 10 "http://127.0.0.1:18195/eph/")"
read -r cpu1 own1 <<<"$(python3 "$WORK/treecpu.py" "$MPID")"
read -r rps1 p50_1 p99_1 _ errors1 _ <<<"$(wrk_run 1 "http://127.0.0.1:18195/eph/")"
secs=${DURATION%s}
cpu_per_req=$(python3 -c "print(f'{($cpu1 - $cpu0) * 1000 / ($rps * $secs):.1f}')")
own_per_req=$(python3 -c "print(f'{($own1 - $own0) * 1000 / ($rps * $secs):.1f}')")
workers_gone
churn_rss=$(rss "$MPID")
wrk_run 10 "http://127.0.0.1:18195/eph/" >/dev/null   # the second churn
workers_gone
churn2_rss=$(rss "$MPID")
kill "$MPID"; wait "$MPID" 2>/dev/null || true

bun_cpu=$(python3 - <<'PY'
import resource, subprocess
before = resource.getrusage(resource.RUSAGE_CHILDREN)
for _ in range(20):
    subprocess.run(["bun", "-e", "0"], check=True)
after = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000 / 20:.1f}")
PY
)

# Cold start: bench/startup.sh's fresh starts (a new SQLite database each), serving these apps.
cold=$(APPS="$WORK/apps" SUMMARY=1 RUNS=20 MARINA_BIN="$BIN" bench/startup.sh)

{
  echo "ttl: 0 and start-up, $(date -u '+%Y-%m-%d %H:%M UTC'); $(load_line)."
  echo "Command: \`bench/ttl0.sh\` (ttl: 0 hello world under bun $(bun --version), \`wrk -t1 -c10 -d$DURATION\`, RUNTIME_EPHEMERAL_CONCURRENCY=$EPH_CONCURRENCY)."
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| ttl: 0 requests/s | $rps (errors: $errors) |"
  echo "| ttl: 0 p50 / p99 | $p50 ms / $p99 ms |"
  echo "| ttl: 0 one at a time (\`wrk -c1\`): requests/s, p50 / p99 | $rps1 (errors: $errors1), $p50_1 ms / $p99_1 ms |"
  echo "| CPU per ephemeral request (marina + workers, /proc) | $cpu_per_req ms (marina itself: $own_per_req ms) |"
  echo "| CPU of a bare \`bun -e 0\` | $bun_cpu ms |"
  echo "| cold start, fresh SQLite (spawn → first 200, 20 runs) | $cold |"
  echo "| marina RSS idle after start | $idle_rss |"
  echo "| marina RSS after the ttl: 0 churn, workers gone | $churn_rss |"
  echo "| marina RSS after a second churn ($DURATION of \`wrk -c10\`), workers gone | $churn2_rss |"
} | tee /dev/stderr > "${OUT:-/dev/null}"
