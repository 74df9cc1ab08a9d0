#!/usr/bin/env bash
# Where the time of a c1 request goes inside our worker: from the system call that reads the
# client's request to the one that writes its response, less the upstream's part (from writing
# the request upstream to reading its answer), per request, from syscall tracepoints recorded
# with `perf record` while `wrk -t1 -c1` runs. Tracing slows every request, so compare the
# percentiles with each other, not with the suite's latencies.
# Usage: bash bench/own-time.sh [SECONDS]   (as root; needs perf, wrk and a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
KEY=sk-bench-key-0123456789
EX=${CARGO_TARGET_DIR:-target}/release/examples
BIN=${CARGO_TARGET_DIR:-target}/release/codex-responses-api-proxy
SECS=${1:-4}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
"$EX/bench_mock_upstream" 19700 "$KEY" 9 >/dev/null 2>&1 &
PIDS+=($!)
printf '%s\n' "$KEY" | "$BIN" --port 19701 --upstream-url http://127.0.0.1:19700/v1/responses \
	2>"$WORK/ours.log" &
PIDS+=($!)
sleep 1
worker=$(pgrep -P "${PIDS[1]}" | head -1)
URL=http://127.0.0.1:19701/v1/responses
wrk -t1 -c1 -d1s -s bench/tail.lua "$URL" >/dev/null
wrk -t1 -c1 -d"$((SECS + 2))s" -s bench/tail.lua "$URL" >"$WORK/wrk.out" &
load=$!
sleep 1
perf record -q -o "$WORK/perf.data" -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev \
	-p "$worker" -- sleep "$SECS" >/dev/null 2>&1
wait $load
perf script -i "$WORK/perf.data" -F time,event,trace 2>/dev/null >"$WORK/calls.txt"
python3 - "$WORK/calls.txt" <<'PY'
import re, sys
calls = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+):\s+syscalls:sys_enter_(\w+):.*?fd: (0x[0-9a-f]+)", line)
    if m:
        calls.append((float(m.group(1)), m.group(2), int(m.group(3), 16)))
# The client's socket is the one read just before the first write to another socket (the
# upstream's); after that, each request is: read client, write upstream, read upstream, write
# client.
client = upstream = None
for (t0, c0, f0), (t1, c1, f1) in zip(calls, calls[1:]):
    if c0 == "recvfrom" and c1 == "writev" and f1 != f0:
        client, upstream = f0, f1
        break
own, total = [], []
start = sent = answered = None
for t, call, fd in calls:
    if call == "recvfrom" and fd == client:
        start, sent, answered = t, None, None
    elif call == "writev" and fd == upstream and start is not None:
        sent = t
    elif call == "recvfrom" and fd == upstream and sent is not None and answered is None:
        answered = t
    elif call == "writev" and fd == client and start is not None and answered is not None:
        total.append((t - start) * 1e6)
        own.append(((t - start) - (answered - sent)) * 1e6)
        start = None
def pct(a, p):
    a = sorted(a)
    return a[min(len(a) - 1, int(len(a) * p / 100))]
if not own:
    sys.exit("no complete requests traced")
print("requests traced: %d" % len(own))
for name, a in (("in the worker, less the upstream", own), ("in the worker, with the upstream", total)):
    print("%-34s p50 %5.0f us  p90 %5.0f  p99 %5.0f  p99.9 %5.0f" % (name, pct(a, 50), pct(a, 90), pct(a, 99), pct(a, 99.9)))
PY
