#!/usr/bin/env bash
# The latency tail at concurrency 1, nginx against one or more configurations of ours, with
# more percentiles than the suite prints (p90 … p99.9), rotating the order every round.
# Usage: bash bench/tail.sh ROUNDS SECONDS NAME:ARGS...
#   e.g. bash bench/tail.sh 3 5 "ours:" "quiet:--log-level warn"
# Needs a release build (cargo build --release --examples --bins), wrk and nginx-light (as
# bench/run.sh installs them). Ports 19600-19620.
set -euo pipefail
cd "$(dirname "$0")/.."
KEY=sk-bench-key-0123456789
EX=${CARGO_TARGET_DIR:-target}/release/examples
BIN=${CARGO_TARGET_DIR:-target}/release/codex-responses-api-proxy
rounds=${1:?usage: bash bench/tail.sh ROUNDS SECONDS NAME:ARGS...}
secs=${2:?usage: bash bench/tail.sh ROUNDS SECONDS NAME:ARGS...}
shift 2
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
"$EX/bench_mock_upstream" 19600 "$KEY" 9 >/dev/null 2>&1 &
PIDS+=($!)
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|19601|g" -e "s|@UPSTREAM_PORT@|19600|g" -e "s|@KEY@|$KEY|g" \
	bench/nginx.conf.template >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" 2>/dev/null &
PIDS+=($!)
declare -A PORT=([nginx]=19601)
NAMES=(nginx)
port=19610
for spec in "$@"; do
	name=${spec%%:*}
	# shellcheck disable=SC2086 # the arguments are meant to split
	printf '%s\n' "$KEY" | "$BIN" --port $port --upstream-url http://127.0.0.1:19600/v1/responses \
		${spec#*:} 2>"$WORK/$name.log" &
	PIDS+=($!)
	PORT[$name]=$port
	NAMES+=("$name")
	port=$((port + 1))
done
sleep 1
for name in "${NAMES[@]}"; do
	wrk -t1 -c1 -d1s -s bench/tail.lua "http://127.0.0.1:${PORT[$name]}/v1/responses" >/dev/null
done
for round in $(seq 1 "$rounds"); do
	for name in "${NAMES[@]}"; do
		line=$(wrk -t1 -c1 -d"${secs}s" -s bench/tail.lua "http://127.0.0.1:${PORT[$name]}/v1/responses" | grep '^TAIL')
		printf 'round %s %-10s %s\n' "$round" "$name" "${line#TAIL }"
	done
	NAMES=("${NAMES[@]:1}" "${NAMES[0]}")
done
