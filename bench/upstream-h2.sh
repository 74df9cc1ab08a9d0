#!/usr/bin/env bash
# HTTP/1.1 or HTTP/2 to an upstream that offers both by ALPN (issue 19): one TLS mock upstream
# (examples/bench_mock_upstream.rs --tls --alpn h2,http/1.1: hyper's HTTP/2 server for a
# connection that settles on h2, its HTTP/1.1 server otherwise; the 9-event Responses SSE
# stream of about 2 KB, one body frame per event) behind five forwarders, measured side by side
# in rounds, the order rotating each round:
#   ours       the proxy as it is: the fast path, its own pool of HTTP/1.1 connections over TLS
#              per shard (one single-threaded runtime per core), offering only http/1.1 by ALPN,
#              so the mock speaks HTTP/1.1 to it; with all of the strict route's work;
#   fwd-ours   examples/bench_upstream_client.rs --client ours --shards $(nproc): the same
#              fast-path client (benching::FastPathClient) in a bare forwarder: hyper's
#              HTTP/1.1 server, a thread per core with its own runtime, listener and pool;
#   fwd-h1     the same forwarder, --client h1: hyper's HTTP/1.1 client over tokio-rustls, a
#              pool per shard, one request per connection at a time;
#   fwd-h2     the same forwarder, --client h2: hyper's HTTP/2 client over tokio-rustls
#              offering only h2, every request multiplexed on its shard's one connection;
#   fwd-h2-mt  --client h2 --threads $(nproc): one multi-threaded runtime and one HTTP/2
#              connection for all requests.
# fwd-ours, fwd-h1 and fwd-h2 differ only in the upstream client, so their difference is the
# transport's; ours against fwd-ours is what the rest of the proxy costs.
# Prints, per round, target and concurrency (wrk, c1, c64, c256): req/s, p50, p99, CPU per
# request of the forwarder (user + system time of its processes, all threads, over the run /
# requests) and of the mock upstream (its side of the transport's cost), and the forwarder's
# resident memory after the run and at its peak (VmRSS, VmHWM of its largest process: our
# worker, the forwarder). Then, per round, latency at c1 with one client alternating request by
# request between the targets (examples/bench_alternating_client.rs). Last, the medians over the
# rounds of every column, per target and concurrency.
# Usage: bash bench/upstream-h2.sh [ROUNDS]   (default 3; BENCH_SECONDS per wrk run, default 3)
# Needs release builds (cargo build --release --bins --examples), wrk, openssl and curl. Ports
# 19420-19429. Run as root (the proxy's supervisor drops privileges for its worker).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
SECS=${BENCH_SECONDS:-3}
DIR=${CARGO_TARGET_DIR:-target}/release
BIN=$DIR/codex-responses-api-proxy
MOCK=$DIR/examples/bench_mock_upstream
FWD=$DIR/examples/bench_upstream_client
ALT=$DIR/examples/bench_alternating_client
KEY=sk-bench-key-0123456789
MOCK_PORT=19420
SHARDS=$(nproc) # as many as the proxy has: one per core
for tool in wrk openssl curl; do
	command -v $tool >/dev/null || { echo "bench/upstream-h2.sh needs $tool" >&2; exit 1; }
done
for exe in "$BIN" "$MOCK" "$FWD" "$ALT"; do
	[ -x "$exe" ] || { echo "build first: cargo build --release --bins --examples" >&2; exit 1; }
done

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

make_throwaway_pki "$WORK"

"$MOCK" $MOCK_PORT "$KEY" 9 --tls "$WORK/server.pem" "$WORK/server.key" --alpn h2,http/1.1 \
	2>/dev/null &
PIDS+=($!)
MOCK_PID=$!
UPSTREAM="https://127.0.0.1:$MOCK_PORT/v1/responses"

declare -A ROOT PORT
printf '%s\n' "$KEY" | SSL_CERT_FILE="$WORK/ca.pem" "$BIN" --port 19421 --upstream-url "$UPSTREAM" \
	2>"$WORK/ours.log" &
PIDS+=($!)
ROOT[ours]=$! PORT[ours]=19421
start_fwd() {
	local name=$1 port=$2
	shift 2
	"$FWD" "$port" "$UPSTREAM" "$KEY" "$WORK/ca.pem" "$@" 2>"$WORK/$name.log" &
	PIDS+=($!)
	ROOT[$name]=$! PORT[$name]=$port
}
start_fwd fwd-ours 19422 --client ours --shards "$SHARDS"
start_fwd fwd-h1 19423 --client h1 --shards "$SHARDS"
start_fwd fwd-h2 19424 --client h2 --connections 1 --shards "$SHARDS"
start_fwd fwd-h2-mt 19425 --client h2 --connections 1 --threads "$SHARDS"
NAMES=(ours fwd-ours fwd-h1 fwd-h2 fwd-h2-mt)
sleep 1

# The mock speaks both: h2 when offered, HTTP/1.1 when only that is.
for version in --http2 --http1.1; do
	echo "mock upstream with curl $version: HTTP/$(curl -s -o /dev/null -w '%{http_version}' \
		--cacert "$WORK/ca.pem" $version -X POST -H "Authorization: Bearer $KEY" -d '{}' "$UPSTREAM")"
done
ALT_TARGETS=()
for name in "${NAMES[@]}"; do ALT_TARGETS+=("$name=${PORT[$name]}"); done
BODY='{"model":"gpt-bench","input":"hello","stream":true}'
for name in "${NAMES[@]}"; do check_and_warm "$name" "${PORT[$name]}" "$BODY"; done
# "RSS/peak" in MiB of the largest of the processes given.
memory() {
	local pid best=0 peak=0 rss hwm
	for pid in "$@"; do
		rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
		hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
		if [ "${rss:-0}" -gt "$best" ]; then best=$rss peak=$hwm; fi
	done
	python3 -c "print('%.1f/%.1f MiB' % ($best / 1024, $peak / 1024))"
}
per_request() { python3 -c "print('%.1f' % (($2 - $1) * 1e6 / $CLK_TCK / max($3, 1)))"; }
for round in $(seq 1 "$ROUNDS"); do
	for name in "${NAMES[@]}"; do
		url="http://127.0.0.1:${PORT[$name]}/v1/responses"
		# shellcheck disable=SC2046 # one argument per pid
		pids=$(family "${ROOT[$name]}")
		for conns in 1 64 256; do
			threads=$((conns > 1 ? 2 : 1))
			# shellcheck disable=SC2086 # one argument per pid
			before=$(cpu_ticks $pids) mock_before=$(cpu_ticks $MOCK_PID)
			out=$(BENCH_BODY=$BODY wrk -t$threads -c$conns -d"${SECS}s" -s bench/wrk.lua "$url")
			# shellcheck disable=SC2086 # one argument per pid
			after=$(cpu_ticks $pids) mock_after=$(cpu_ticks $MOCK_PID)
			json=$(echo "$out" | sed -n 's/^WRKJSON //p')
			requests=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
			# shellcheck disable=SC2086 # one argument per pid
			printf 'round %s %-10s c%-3s %s cpu %5s us/req mock %5s us/req rss %s\n' "$round" "$name" \
				"$conns" "$(echo "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%6.0f req/s p50 %6.3f ms p99 %6.2f ms non2xx %d errors %d" % (d["rps"], d["p50_us"]/1e3, d["p99_us"]/1e3, d["non2xx"], d["connect_errors"]+d["read_errors"]+d["write_errors"]+d["timeouts"]))')" \
				"$(per_request "$before" "$after" "$requests")" \
				"$(per_request "$mock_before" "$mock_after" "$requests")" "$(memory $pids)" |
				tee -a "$WORK/rounds"
		done
	done
	NAMES=("${NAMES[@]:1}" "${NAMES[0]}")
done
for round in $(seq 1 "$ROUNDS"); do
	"$ALT" "$SECS" "$BODY" "${ALT_TARGETS[@]}" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for t in d["targets"]:
    print("interleaved c1 round %s %-10s %6d requests errors %d body %d-%d p50 %.3f ms p90 %.3f ms p99 %.3f ms" % (
        sys.argv[1], t["name"], t["requests"], t["errors"], t["body_min"], t["body_max"],
        t["p50_us"] / 1e3, t["p90_us"] / 1e3, t["p99_us"] / 1e3))' "$round" | tee -a "$WORK/rounds"
done
python3 - "$WORK/rounds" <<'EOF'
import re, statistics, sys
rows, alt = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (\S+) +c(\d+) +(\d+) req/s p50 +([\d.]+) ms p99 +([\d.]+) ms .* cpu +([\d.]+) us/req mock +([\d.]+) us/req rss ([\d.]+)/([\d.]+) MiB", line)
    if m:
        rows.setdefault((m[1], int(m[2])), []).append([float(x) for x in m.groups()[2:]])
    m = re.match(r"interleaved c1 round \d+ (\S+) .* p50 ([\d.]+) ms p90 ([\d.]+) ms p99 ([\d.]+) ms", line)
    if m:
        alt.setdefault(m[1], []).append([float(x) for x in m.groups()[1:]])
def med(rounds, i):
    return statistics.median(r[i] for r in rounds)
for (name, conns), rounds in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print("median %-10s c%-3d %6.0f req/s p50 %6.3f ms p99 %6.2f ms cpu %5.1f us/req mock %5.1f us/req rss %.1f/%.1f MiB" % (
        name, conns, *(med(rounds, i) for i in range(7))))
for name, rounds in alt.items():
    print("median interleaved c1 %-10s p50 %.3f ms p90 %.3f ms p99 %.3f ms" % (name, *(med(rounds, i) for i in range(3))))
EOF
