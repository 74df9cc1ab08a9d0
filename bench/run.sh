#!/bin/bash
# The benchmark suite: `bash bench/run.sh` (as root; see BENCHMARKS.md).
#
# In one run, on loopback, with the same mock upstream (examples/bench_mock_upstream.rs) and the
# same load generator (wrk): direct to the mock, our strict proxy, nginx configured as the same
# strict proxy, a bare hyper+reqwest forwarder (examples/bench_bare_forwarder.rs) and the
# reference `codex responses-api-proxy`; rounds rotate the order of the targets and the table
# shows medians and ratios. Then: streaming time to first/last byte, translation throughput
# (conversion alone and end to end), memory idle and with 1,000 open streams, cold start under
# systemd-socket-activate. The table is printed and written to bench/results-latest.md.
#
# Environment (all optional):
#   BENCH_SECONDS=3       seconds per wrk run
#   BENCH_ROUNDS=5        rounds of the strict-proxy comparison (order rotated every round)
#   BENCH_E2E_ROUNDS=3    rounds of the end-to-end translation comparison
#   BENCH_ALT_SECONDS=4   seconds per round of the alternating c1 latency comparison
#   BENCH_STREAM_ROUNDS=30  requests per target in the streaming test
#   BENCH_STREAMS=1000    open streams in the memory test
#   BENCH_COLD_RUNS=10    cold starts
#   BENCH_PORT_BASE=18700 first of the ~20 loopback ports used
#   BENCH_SKIP_INSTALL=1  do not apt-get/npm install anything
#   BENCH_NO_BUILD=1      use the binaries already built
#   BENCH_SKIP_REFERENCE=1  leave out the reference proxy
#   CARGO_TARGET_DIR      where cargo builds (default: target/)
#   BENCH_OUT             where the table goes (default: bench/results-latest.md)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_RUN=${BENCH_SECONDS:-3}
ROUNDS=${BENCH_ROUNDS:-5}
E2E_ROUNDS=${BENCH_E2E_ROUNDS:-3}
ALT_SECONDS=${BENCH_ALT_SECONDS:-4}
STREAM_ROUNDS=${BENCH_STREAM_ROUNDS:-30}
STREAMS=${BENCH_STREAMS:-1000}
COLD_RUNS=${BENCH_COLD_RUNS:-10}
BASE=${BENCH_PORT_BASE:-18700}
OUT=${BENCH_OUT:-$ROOT/bench/results-latest.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KEY=sk-bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')

log() { echo "bench: $*" >&2; }
die() {
	log "FAILED: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (the proxy's supervisor drops privileges for its worker)"

# ---- what the run needs ---------------------------------------------------------------------
if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
	need=()
	command -v wrk >/dev/null || need+=(wrk)
	command -v nginx >/dev/null || need+=(nginx-light)
	command -v systemd-socket-activate >/dev/null || need+=(systemd)
	command -v curl >/dev/null || need+=(curl)
	command -v python3 >/dev/null || need+=(python3)
	if [ ${#need[@]} -gt 0 ]; then
		log "apt-get install ${need[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
	fi
fi
for tool in wrk nginx systemd-socket-activate curl python3; do
	command -v $tool >/dev/null || die "$tool is missing"
done
CODEX=""
if [ -z "${BENCH_SKIP_REFERENCE:-}" ]; then
	CODEX=$(bash tests/install-codex.sh) || die "could not install the reference (tests/install-codex.sh)"
fi

if [ -z "${BENCH_NO_BUILD:-}" ]; then
	log "cargo build --release --examples --bins"
	cargo build --release --examples --bins >&2
fi
BIN=$TARGET_DIR/release/codex-responses-api-proxy
EX=$TARGET_DIR/release/examples
for f in "$BIN" "$EX/bench_mock_upstream" "$EX/bench_bare_forwarder" "$EX/bench_bridge" "$EX/bench_wrapper" \
	"$EX/bench_alternating_client"; do
	[ -x "$f" ] || die "$f not built"
done

# ---- processes and clean-up -----------------------------------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/codex-proxy-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	sleep 0.3
	for pid in "${PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	if [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # PORT [what]
	local i
	for i in $(seq 1 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	die "${2:-something} never listened on 127.0.0.1:$1"
}

# PID and all its descendants, comma separated.
family() {
	local all=$1 frontier=$1 next kid
	while [ -n "$frontier" ]; do
		next=""
		for kid in $(pgrep -P "$(echo "$frontier" | tr ' ' ',')" 2>/dev/null || true); do
			all="$all $kid"
			next="$next $kid"
		done
		frontier=$(echo $next)
	done
	echo $all | tr ' ' ','
}

# Ports.
P_MOCK=$BASE           # 9 events (~2 KB), the load test's upstream
P_MOCK1K=$((BASE + 1)) # 1,000 events, paced (one write per event)
P_MOCKHOLD=$((BASE + 2))
P_MOCKCHAT=$((BASE + 3))
P_OURS=$((BASE + 10))
P_NGINX=$((BASE + 11))
P_BARE=$((BASE + 12))
P_REF=$((BASE + 13))
P_OURS1K=$((BASE + 14))
P_NGINX1K=$((BASE + 15))
P_BRIDGE=$((BASE + 16))
P_WRAPPER=$((BASE + 17))
P_HOLD=$((BASE + 18))
P_COLD=$((BASE + 19))
URL() { echo "http://127.0.0.1:$1/v1/${2:-responses}"; }

declare -A MOCKPID
start_mock() { # PORT EVENTS ARGS...
	local port=$1 events=$2
	shift 2
	"$EX/bench_mock_upstream" "$port" "$KEY" "$events" "$@" >"$WORK/mock-$port.out" 2>"$WORK/mock-$port.err" &
	PIDS+=($!)
	MOCKPID[$port]=$!
	wait_port "$port" "mock upstream"
}

declare -A ROOTPID
start_ours() { # NAME PORT UPSTREAM_URL ARGS...
	local name=$1 port=$2 url=$3
	shift 3
	printf '%s\n' "$KEY" | "$BIN" --port "$port" --upstream-url "$url" --server-info "$WORK/$name.json" \
		"$@" 2>"$WORK/$name.log" &
	local pid=$!
	PIDS+=($pid)
	ROOTPID[$name]=$pid
	wait_port "$port" "$name"
}

start_nginx() { # NAME PORT UPSTREAM_PORT
	local name=$1 dir=$WORK/$1
	mkdir -p "$dir"
	sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$2|g" -e "s|@UPSTREAM_PORT@|$3|g" -e "s|@KEY@|$KEY|g" \
		bench/nginx.conf.template >"$dir/nginx.conf"
	nginx -c "$dir/nginx.conf" -p "$dir" 2>"$dir/stderr" &
	local pid=$!
	PIDS+=($pid)
	ROOTPID[$name]=$pid
	wait_port "$2" "$name"
}

log "work directory $WORK; starting the mocks and the targets"
start_mock $P_MOCK 9
start_mock $P_MOCK1K 1000 --paced
start_mock $P_MOCKHOLD 9 --hold 120
start_mock $P_MOCKCHAT 1000 --chat
start_ours ours $P_OURS "$(URL $P_MOCK)"
start_nginx nginx $P_NGINX $P_MOCK
"$EX/bench_bare_forwarder" $P_BARE "$(URL $P_MOCK)" "$KEY" 2>"$WORK/bare.log" &
PIDS+=($!)
ROOTPID[bare]=$!
wait_port $P_BARE bare
TARGETS=(direct ours nginx bare)
if [ -n "$CODEX" ]; then
	printf '%s\n' "$KEY" | "$CODEX" responses-api-proxy --port $P_REF --upstream-url "$(URL $P_MOCK)" \
		2>"$WORK/reference.log" &
	PIDS+=($!)
	ROOTPID[reference]=$!
	wait_port $P_REF reference
	TARGETS+=(reference)
fi
start_ours ours1k $P_OURS1K "$(URL $P_MOCK1K)"
start_nginx nginx1k $P_NGINX1K $P_MOCK1K
start_ours bridge $P_BRIDGE "$(URL $P_MOCKCHAT chat/completions)" --bridge-to-chat
start_ours wrapper $P_WRAPPER "$(URL $P_MOCK1K)" --wrapper-routes
start_ours hold $P_HOLD "$(URL $P_MOCKHOLD)"
sleep 0.5
IDLE_PIDS=$(family "${ROOTPID[hold]}")
IDLE_JSON=$(python3 bench/clients.py mem --pids "$IDLE_PIDS")
echo "{\"kind\":\"idle\",\"pids\":\"$IDLE_PIDS\",\"memory\":$IDLE_JSON}" >>"$WORK/results.jsonl"

port_of() {
	case $1 in
	direct) echo $P_MOCK ;; ours) echo $P_OURS ;; nginx) echo $P_NGINX ;; bare) echo $P_BARE ;;
	reference) echo $P_REF ;; direct1k) echo $P_MOCK1K ;; ours1k) echo $P_OURS1K ;;
	nginx1k) echo $P_NGINX1K ;; bridge) echo $P_BRIDGE ;; wrapper) echo $P_WRAPPER ;;
	esac
}

# shellcheck source=bench/lib.sh
. bench/lib.sh

# One wrk run, checked against the mock's counters (and timed in CPU for the target's
# processes); appends a JSON line to results.jsonl.
run_wrk() { # KIND TARGET CONNECTIONS ROUND MOCK_PORT PATH BODY [KEY]
	local kind=$1 target=$2 conns=$3 round=$4 mock=$5 path=$6 body=$7 key=${8:-}
	local port threads before after out line
	port=$(port_of "$target")
	threads=$((conns < 2 ? 1 : 2))
	local pids cpu_before cpu_after
	pids=$(family "${ROOTPID[$target]:-${MOCKPID[$port]:-}}")
	before=$(curl -sf "http://127.0.0.1:$mock/stats") || die "mock $mock /stats"
	pids=${pids//,/ }
	# shellcheck disable=SC2086 # one argument per pid
	cpu_before=$(cpu_ticks $pids)
	out=$(BENCH_BODY=$body BENCH_KEY=$key wrk -t$threads -c"$conns" -d"${SECONDS_PER_RUN}s" \
		--timeout 10s -s bench/wrk.lua "http://127.0.0.1:$port$path") || die "wrk against $target"
	# shellcheck disable=SC2086 # one argument per pid
	cpu_after=$(cpu_ticks $pids)
	after=$(curl -sf "http://127.0.0.1:$mock/stats") || die "mock $mock /stats"
	line=$(echo "$out" | sed -n 's/^WRKJSON //p')
	[ -n "$line" ] || die "no summary from wrk: $out"
	echo "{\"kind\":\"$kind\",\"target\":\"$target\",\"conns\":$conns,\"round\":$round,\"wrk\":$line,\"mock_before\":$before,\"mock_after\":$after,\"cpu_ticks\":$((cpu_after - cpu_before)),\"clk_tck\":$CLK_TCK}" >>"$WORK/results.jsonl"
	log "$(printf '%-8s %-10s c%-3s round %s: %s' "$kind" "$target" "$conns" "$round" \
		"$(echo "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f req/s p50 %.2f ms p99 %.2f ms non2xx %d" % (d["rps"], d["p50_us"]/1e3, d["p99_us"]/1e3, d["non2xx"]))')")"
}

RESPONSES_BODY='{"model":"gpt-bench","input":"hello","stream":true}'
CHAT_BODY='{"model":"gpt-bench","messages":[{"role":"user","content":"hello"}],"stream":true}'

# ---- 1. strict proxy: throughput and latency at c1 and c64 -----------------------------------
log "strict proxy comparison: ${#TARGETS[@]} targets x $ROUNDS rounds x (c64, c1) x ${SECONDS_PER_RUN}s"
for t in "${TARGETS[@]}"; do # warm-up: connections, pools, caches
	k=""
	[ "$t" = direct ] && k=$KEY
	BENCH_BODY=$RESPONSES_BODY BENCH_KEY=$k wrk -t2 -c64 -d1s -s bench/wrk.lua \
		"http://127.0.0.1:$(port_of "$t")/v1/responses" >/dev/null
done
for round in $(seq 1 "$ROUNDS"); do
	n=${#TARGETS[@]}
	for i in $(seq 0 $((n - 1))); do
		t=${TARGETS[$(((i + round - 1) % n))]}
		k=""
		[ "$t" = direct ] && k=$KEY
		run_wrk strict "$t" 64 "$round" $P_MOCK /v1/responses "$RESPONSES_BODY" "$k"
		run_wrk strict "$t" 1 "$round" $P_MOCK /v1/responses "$RESPONSES_BODY" "$k"
	done
done
for t in ours nginx bare reference; do
	[ -n "${ROOTPID[$t]:-}" ] || continue
	pids=$(family "${ROOTPID[$t]}")
	echo "{\"kind\":\"peak\",\"target\":\"$t\",\"memory\":$(python3 bench/clients.py mem --pids "$pids")}" >>"$WORK/results.jsonl"
done

# ---- 1b. latency at c1 with the targets' requests interleaved ---------------------------------
# wrk measures one target after another, so a moment when the whole machine stalls lands on
# one target only; here one client alternates between them request by request (a new random
# order every cycle), so such moments fall on all of them alike.
ALT=("direct=$P_MOCK:$KEY" "ours=$P_OURS" "nginx=$P_NGINX" "bare=$P_BARE")
log "c1 latency, one client alternating request by request between ${#ALT[@]} targets: $ROUNDS rounds x ${ALT_SECONDS}s"
for round in $(seq 1 "$ROUNDS"); do
	before=$(curl -sf "http://127.0.0.1:$P_MOCK/stats") || die "mock $P_MOCK /stats"
	out=$("$EX/bench_alternating_client" "$ALT_SECONDS" "$RESPONSES_BODY" "${ALT[@]}") ||
		die "bench_alternating_client"
	after=$(curl -sf "http://127.0.0.1:$P_MOCK/stats") || die "mock $P_MOCK /stats"
	echo "{\"kind\":\"alternating\",\"round\":$round,\"result\":$out,\"mock_before\":$before,\"mock_after\":$after}" >>"$WORK/results.jsonl"
	log "alternating round $round: $(echo "$out" | python3 -c 'import json,sys; print("; ".join("%s p50 %.0f p99 %.0f us" % (t["name"], t["p50_us"], t["p99_us"]) for t in json.load(sys.stdin)["targets"]))')"
done

# ---- 2. streaming: first and last byte of a 1,000-event stream --------------------------------
log "streaming: time to first/last byte of a 1,000-event stream, $STREAM_ROUNDS requests per target"
echo "{\"kind\":\"stream\",\"result\":$(python3 bench/clients.py stream --rounds "$STREAM_ROUNDS" \
	"direct=$P_MOCK1K:$KEY" "ours=$P_OURS1K" "nginx=$P_NGINX1K")}" >>"$WORK/results.jsonl"

# ---- 3. translation: conversion alone, and end to end through the proxy -----------------------
log "translation: conversion alone (examples bench_bridge, bench_wrapper)"
"$EX/bench_bridge" >"$WORK/bench_bridge.out"
"$EX/bench_wrapper" >"$WORK/bench_wrapper.out"
cat "$WORK/bench_bridge.out" "$WORK/bench_wrapper.out" >&2
log "translation end to end: 1,000-event streams, $E2E_ROUNDS rounds"
E2E=(direct1k ours1k bridge wrapper)
for round in $(seq 1 "$E2E_ROUNDS"); do
	for i in 0 1 2 3; do
		t=${E2E[$(((i + round - 1) % 4))]}
		case $t in
		direct1k) run_wrk e2e $t 4 "$round" $P_MOCK1K /v1/responses "$RESPONSES_BODY" "$KEY" ;;
		ours1k) run_wrk e2e $t 4 "$round" $P_MOCK1K /v1/responses "$RESPONSES_BODY" ;;
		bridge) run_wrk e2e $t 4 "$round" $P_MOCKCHAT /v1/responses "$RESPONSES_BODY" ;;
		wrapper) run_wrk e2e $t 4 "$round" $P_MOCK1K /v1/chat/completions "$CHAT_BODY" ;;
		esac
	done
done

# ---- 4. memory with open streams ------------------------------------------------------------
log "memory: $STREAMS streams held open through our proxy"
echo "{\"kind\":\"hold\",\"result\":$(python3 bench/clients.py hold --port $P_HOLD --streams "$STREAMS" \
	--pids "$(family "${ROOTPID[hold]}")")}" >>"$WORK/results.jsonl"

# ---- 5. cold start under socket activation --------------------------------------------------
log "cold start: $COLD_RUNS launches by systemd-socket-activate"
mkdir -p "$WORK/credentials"
printf '%s\n' "$KEY" >"$WORK/credentials/openai-api-key"
chmod 600 "$WORK/credentials/openai-api-key"
echo "{\"kind\":\"cold\",\"result\":$(python3 bench/clients.py coldstart --port $P_COLD --runs "$COLD_RUNS" -- \
	systemd-socket-activate -l 127.0.0.1:$P_COLD --fdname=http \
	-E "CREDENTIALS_DIRECTORY=$WORK/credentials" "$BIN" --upstream-url "$(URL $P_MOCK)")}" >>"$WORK/results.jsonl"

# ---- the table --------------------------------------------------------------------------------
rc=0
python3 bench/report.py "$WORK/results.jsonl" "$WORK/bench_bridge.out" "$WORK/bench_wrapper.out" \
	--seconds "$SECONDS_PER_RUN" --rounds "$ROUNDS" >"$OUT" || rc=$?
cp "$WORK/results.jsonl" "${OUT%.md}.jsonl"
cat "$OUT"
log "written to $OUT (raw measurements: ${OUT%.md}.jsonl)"
[ $rc = 0 ] || die "some runs failed their checks (see the report)"
