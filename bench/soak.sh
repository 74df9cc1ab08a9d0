#!/usr/bin/env bash
# Soak (issue: hostile input and faults, "load"): STREAMS streams held open through our strict
# proxy for SECONDS seconds while the proxy's memory (supervisor + worker) is sampled every
# 10 s; then every stream must finish with response.completed. A benchmark-style run, not a
# test: it prints one JSON line (samples, min/max RSS, completed, errors).
#   bash bench/soak.sh [SECONDS=180] [STREAMS=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_HELD=${1:-180}
STREAMS=${2:-1000}
KEY=sk-bench-soak-0123456789
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release/codex-responses-api-proxy
EX=$TARGET_DIR/release/examples
MOCK_PORT=${SOAK_MOCK_PORT:-18790}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bins --examples
"$EX/bench_mock_upstream" "$MOCK_PORT" "$KEY" 9 --hold $((SECONDS_HELD + 5)) --threads 1 \
	>"$WORK/mock.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$MOCK_PORT) 2>/dev/null && break; sleep 0.05; done
printf '%s\n' "$KEY" | "$BIN" --server-info "$WORK/info" \
	--upstream-url "http://127.0.0.1:$MOCK_PORT/v1/responses" 2>"$WORK/proxy.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/info" ] && break; sleep 0.05; done
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$WORK/info")
supervisor=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$WORK/info")
worker=$(cat "/proc/$supervisor/task/$supervisor/children" | awk '{print $1}')
python3 bench/clients.py soak --port "$port" --streams "$STREAMS" --seconds "$SECONDS_HELD" \
	--pids "$supervisor,$worker"
