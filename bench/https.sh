#!/usr/bin/env bash
# The strict proxy in front of an HTTPS upstream, side by side with nginx doing the same job over
# TLS (proxy_ssl_verify on, the same throw-away CA, upstream keep-alive, TLS session reuse), and
# with our proxy in front of the same mock over plain HTTP for comparison. The CA is trusted the
# way an admin trusts a company CA: ours through the system store (SSL_CERT_FILE, which the
# proxy's rustls-native-certs reads), nginx through proxy_ssl_trusted_certificate.
# Prints, per round and target: c64 req/s, p50, p99 and CPU per request (user + system time of
# the target's processes, all threads, over the c64 run / requests), then c1 req/s and p50;
# then, per round, latency at c1 with one client alternating request by request between the
# three targets (examples/bench_alternating_client.rs: the machine's moments fall on all alike).
# Usage: bash bench/https.sh [ROUNDS]   (default 3; BENCH_SECONDS per wrk run, default 3)
# BENCH_BEFORE_BIN=PATH adds another build of ours in front of the same HTTPS upstream
# ("before-tls"), to compare two builds in one run. BENCH_EGRESS=1 adds ours reaching the same
# upstream through an egress proxy's CONNECT tunnel ("ours-egress"; the proxy is
# examples/bench_connect_proxy.rs, its CPU time not counted in ours).
# Needs release builds (cargo build --release --bins --examples), wrk, nginx-light and openssl
# (bench/run.sh installs the first two). Ports 19400-19412. Run as root (the proxy's
# supervisor drops privileges for its worker).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
SECS=${BENCH_SECONDS:-3}
BIN=${CARGO_TARGET_DIR:-target}/release/codex-responses-api-proxy
MOCK=${CARGO_TARGET_DIR:-target}/release/examples/bench_mock_upstream
ALT=${CARGO_TARGET_DIR:-target}/release/examples/bench_alternating_client
KEY=sk-bench-key-0123456789
TLS_MOCK=19400 NGINX=19401 PLAIN_MOCK=19402 OURS=19410 OURS_PLAIN=19411 BEFORE=19412
EGRESS=19413 OURS_EGRESS=19414
CONNECT_PROXY=${CARGO_TARGET_DIR:-target}/release/examples/bench_connect_proxy
for tool in wrk nginx openssl; do
	command -v $tool >/dev/null || { echo "bench/https.sh needs $tool" >&2; exit 1; }
done
[ -x "$BIN" ] && [ -x "$MOCK" ] || { echo "build first: cargo build --release --bins --examples" >&2; exit 1; }

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

make_throwaway_pki "$WORK"

"$MOCK" $TLS_MOCK "$KEY" 9 --tls "$WORK/server.pem" "$WORK/server.key" 2>/dev/null &
PIDS+=($!)
"$MOCK" $PLAIN_MOCK "$KEY" 9 2>/dev/null &
PIDS+=($!)

# nginx: the strict proxy of bench/nginx.conf.template, its upstream over verified TLS.
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$NGINX|g" -e "s|@UPSTREAM_PORT@|$TLS_MOCK|g" \
	-e "s|@KEY@|$KEY|g" -e "s|proxy_pass http://mock;|proxy_pass https://mock;\n            proxy_ssl_verify on;\n            proxy_ssl_trusted_certificate $WORK/ca.pem;\n            proxy_ssl_name localhost;\n            proxy_ssl_session_reuse on;|" \
	bench/nginx.conf.template >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" 2>/dev/null &
PIDS+=($!)
declare -A ROOT=([nginx-tls]=$!)

printf '%s\n' "$KEY" | SSL_CERT_FILE="$WORK/ca.pem" "$BIN" --port $OURS \
	--upstream-url "https://127.0.0.1:$TLS_MOCK/v1/responses" 2>"$WORK/ours.log" &
PIDS+=($!)
ROOT[ours-tls]=$!
printf '%s\n' "$KEY" | "$BIN" --port $OURS_PLAIN \
	--upstream-url "http://127.0.0.1:$PLAIN_MOCK/v1/responses" 2>"$WORK/ours-plain.log" &
PIDS+=($!)
ROOT[ours-plain]=$!
declare -A PORT=([nginx-tls]=$NGINX [ours-tls]=$OURS [ours-plain]=$OURS_PLAIN)
NAMES=(nginx-tls ours-tls ours-plain)
if [ -n "${BENCH_BEFORE_BIN:-}" ]; then
	printf '%s\n' "$KEY" | SSL_CERT_FILE="$WORK/ca.pem" "$BENCH_BEFORE_BIN" --port $BEFORE \
		--upstream-url "https://127.0.0.1:$TLS_MOCK/v1/responses" 2>"$WORK/before.log" &
	PIDS+=($!)
	ROOT[before-tls]=$!
	PORT[before-tls]=$BEFORE
	NAMES+=(before-tls)
fi
if [ -n "${BENCH_EGRESS:-}" ]; then
	"$CONNECT_PROXY" $EGRESS &
	PIDS+=($!)
	printf '%s\n' "$KEY" | SSL_CERT_FILE="$WORK/ca.pem" CODEX_PROXY_UPSTREAM_PROXY="http://127.0.0.1:$EGRESS" \
		"$BIN" --port $OURS_EGRESS --upstream-url "https://localhost:$TLS_MOCK/v1/responses" 2>"$WORK/egress.log" &
	PIDS+=($!)
	ROOT[ours-egress]=$!
	PORT[ours-egress]=$OURS_EGRESS
	NAMES+=(ours-egress)
fi
sleep 1
ALT_TARGETS=()
for name in "${NAMES[@]}"; do ALT_TARGETS+=("$name=${PORT[$name]}"); done
BODY='{"model":"gpt-bench","input":"hello","stream":true}'
for name in "${NAMES[@]}"; do check_and_warm "$name" "${PORT[$name]}" "$BODY"; done
for round in $(seq 1 "$ROUNDS"); do
	for name in "${NAMES[@]}"; do
		url="http://127.0.0.1:${PORT[$name]}/v1/responses"
		# shellcheck disable=SC2046 # one argument per pid
		pids=$(family "${ROOT[$name]}")
		# shellcheck disable=SC2086 # one argument per pid
		before=$(cpu_ticks $pids)
		out=$(BENCH_BODY=$BODY wrk -t2 -c64 -d"${SECS}s" -s bench/wrk.lua "$url")
		# shellcheck disable=SC2086 # one argument per pid
		after=$(cpu_ticks $pids)
		requests=$(echo "$out" | sed -n 's/^WRKJSON //p' | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
		cpu=$(python3 -c "print('%.1f' % (($after - $before) * 1e6 / $CLK_TCK / max($requests, 1)))")
		c64="$(echo "$out" | summary) cpu ${cpu} us/req"
		c1=$(BENCH_BODY=$BODY wrk -t1 -c1 -d"${SECS}s" -s bench/wrk.lua "$url" | summary)
		printf 'round %s %-11s c64 %s | c1 %s\n' "$round" "$name" "$c64" "$c1"
	done
	NAMES=("${NAMES[@]:1}" "${NAMES[0]}")
done
for round in $(seq 1 "$ROUNDS"); do
	"$ALT" "$SECS" "$BODY" "${ALT_TARGETS[@]}" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for t in d["targets"]:
    print("interleaved c1 round %s %-11s %6d requests errors %d p50 %.3f ms p90 %.3f ms p99 %.3f ms" % (
        sys.argv[1], t["name"], t["requests"], t["errors"], t["p50_us"] / 1e3, t["p90_us"] / 1e3, t["p99_us"] / 1e3))' "$round"
done
