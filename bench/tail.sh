#!/usr/bin/env bash
# The latency tail at concurrency 1, nginx against one or more configurations of ours, with
# more percentiles than the suite prints (p90 … p99.9), rotating the order every round.
# Usage: bash bench/tail.sh ROUNDS SECONDS NAME:ARGS...
#   e.g. bash bench/tail.sh 3 5 "ours:" "quiet:--log-level warn"
# Needs a release build (cargo build --release --examples --bins), wrk and nginx-light (as
# bench/run.sh installs them). Ports 19600-19620.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:?usage: bash bench/tail.sh ROUNDS SECONDS NAME:ARGS...}
secs=${2:?usage: bash bench/tail.sh ROUNDS SECONDS NAME:ARGS...}
shift 2
BASE=19600
# shellcheck source=bench/side-by-side.sh
source bench/side-by-side.sh
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
