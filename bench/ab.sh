#!/usr/bin/env bash
# A quick side-by-side of nginx and one or more configurations of our strict proxy, for trying a
# change without the whole suite: the mock upstream, nginx (bench/nginx.conf.template) and each
# configuration run at once; every round runs wrk c64 then c1 against each, rotating the order.
# Usage: bash bench/ab.sh ROUNDS NAME:ARGS [NAME:ARGS ...]
#   e.g. bash bench/ab.sh 3 "ours:" "one-thread:--worker-threads 1" "before@/tmp/old-build:"
# Needs a release build (cargo build --release --examples --bins), wrk and nginx-light (as
# bench/run.sh installs them). BENCH_SECONDS per wrk run (default 3); ports 19000-19020.
set -u
cd "$(dirname "$0")/.."
rounds=${1:?usage: bash bench/ab.sh ROUNDS NAME:ARGS ...}
shift
SECS=${BENCH_SECONDS:-3}
BASE=19000
# shellcheck source=bench/side-by-side.sh
source bench/side-by-side.sh
BODY='{"model":"gpt-bench","input":"hello","stream":true}'
# shellcheck source=bench/lib.sh
. bench/lib.sh
for name in "${NAMES[@]}"; do
	BENCH_BODY=$BODY wrk -t2 -c64 -d1s -s bench/wrk.lua "http://127.0.0.1:${PORT[$name]}/v1/responses" >/dev/null
done
for round in $(seq 1 "$rounds"); do
	for name in "${NAMES[@]}"; do
		url="http://127.0.0.1:${PORT[$name]}/v1/responses"
		c64=$(BENCH_BODY=$BODY wrk -t2 -c64 -d"${SECS}s" -s bench/wrk.lua "$url" | summary)
		c1=$(BENCH_BODY=$BODY wrk -t1 -c1 -d"${SECS}s" -s bench/wrk.lua "$url" | summary)
		printf 'round %s %-12s c64 %s | c1 %s\n' "$round" "$name" "$c64" "$c1"
	done
	NAMES=("${NAMES[@]:1}" "${NAMES[0]}")
done
