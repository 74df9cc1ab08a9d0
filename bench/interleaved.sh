#!/usr/bin/env bash
# Latency at c1 of nginx and one or more configurations of ours, their requests interleaved:
# one client alternates between direct-to-the-mock, nginx and each configuration request by
# request, in a new random order every cycle (examples/bench_alternating_client.rs), so a
# stall of the machine falls on all of them alike. Prints p50 ... p99.9 per target for each
# round; fails if any request failed or a target relayed a different body.
# Usage: bash bench/interleaved.sh ROUNDS SECONDS NAME:ARGS...
#   e.g. bash bench/interleaved.sh 3 10 "ours:" "quiet:--log-level warn"
# Needs a release build (cargo build --release --examples --bins) and nginx-light (as
# bench/run.sh installs it). Ports 19640-19660.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:?usage: bash bench/interleaved.sh ROUNDS SECONDS NAME:ARGS...}
secs=${2:?usage: bash bench/interleaved.sh ROUNDS SECONDS NAME:ARGS...}
shift 2
BASE=19640
# shellcheck source=bench/side-by-side.sh
source bench/side-by-side.sh
targets=("direct=$BASE:$KEY")
for name in "${NAMES[@]}"; do
	targets+=("$name=${PORT[$name]}")
done
body='{"model":"gpt-bench","input":"hello","stream":true}'
for round in $(seq 1 "$rounds"); do
	"$EX/bench_alternating_client" "$secs" "$body" "${targets[@]}" | python3 -c '
import json, sys
round = sys.argv[1]
targets = json.load(sys.stdin)["targets"]
for t in targets:
    print("round %s %-10s n=%d errors=%d p50=%.0f p90=%.0f p99=%.0f p99.9=%.0f max=%.0f us" % (
        round, t["name"], t["requests"], t["errors"], t["p50_us"], t["p90_us"], t["p99_us"],
        t["p999_us"], t["max_us"]))
sizes = {(t["body_min"], t["body_max"]) for t in targets}
if any(t["errors"] or not t["requests"] for t in targets) or len(sizes) != 1:
    sys.exit("FAILED: errors, or bodies of different sizes %s" % sorted(sizes))' "$round"
done
