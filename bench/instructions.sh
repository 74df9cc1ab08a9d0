#!/usr/bin/env bash
# Instructions the worker executes per strict-proxy request, counted by callgrind: repeatable
# to a fraction of a percent whatever else the machine does, so it shows the effect of a change
# to the request path where wrk's req/s on 2 shared cores cannot.
# Usage: bash bench/instructions.sh [BINARY [PROXY FLAGS...]]
#   (default target/release/codex-responses-api-proxy; the flags are added to the proxy's, e.g.
#   --metrics-socket /tmp/DIR/metrics.sock with DIR root's and 0700, as from mktemp -d)
# Needs valgrind and a release build of the examples (cargo build --release --examples --bins).
# Runs the proxy twice under callgrind (200 and 2,200 requests on one keep-alive connection to
# the bench mock, 9-event responses) and prints the difference / 2,000. Ports 19300-19301.
set -euo pipefail
cd "$(dirname "$0")/.."
KEY=sk-bench-key-0123456789
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/codex-responses-api-proxy}
[ $# -gt 0 ] && shift
EXTRA=("$@")
MOCK=${CARGO_TARGET_DIR:-target}/release/examples/bench_mock_upstream
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
"$MOCK" 19300 "$KEY" 9 >/dev/null 2>&1 &
mock=$!
WORK=$(mktemp -d)
chmod 777 "$WORK" # the worker, unprivileged, writes its own profile there
trap 'kill $mock 2>/dev/null; rm -rf "$WORK"' EXIT

worker_instructions() { # REQUESTS
	local supervisor worker
	printf '%s\n' "$KEY" | valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" "$BIN" \
		--port 19301 --upstream-url http://127.0.0.1:19300/v1/responses --no-syscall-filter \
		"${EXTRA[@]}" 2>"$WORK/valgrind.log" &
	supervisor=$!
	for _ in $(seq 1 100); do
		curl -s -o /dev/null http://127.0.0.1:19301/ && break
		sleep 0.2
	done
	worker=$(pgrep -P $supervisor | head -1)
	python3 - "$1" <<'PY'
import socket, sys
body = b'{"model":"gpt-bench","input":"hello","stream":true}'
request = (b"POST /v1/responses HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
with socket.create_connection(("127.0.0.1", 19301)) as s:
    for _ in range(int(sys.argv[1])):
        s.sendall(request)
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            more = s.recv(65536)
            if not more:
                sys.exit("the proxy closed the connection")
            answer += more
        if not answer.startswith(b"HTTP/1.1 200"):
            sys.exit("not a 200: %r" % answer[:80])
PY
	kill -TERM $supervisor
	wait $supervisor 2>/dev/null || true
	callgrind_annotate "$WORK/cg.$worker" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}

few=$(worker_instructions 200)
many=$(worker_instructions 2200)
echo "worker instructions per request: $(((many - few) / 2000)) (200 requests: $few, 2,200: $many)"
