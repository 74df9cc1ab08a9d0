# Sourced by bench/ab.sh, bench/tail.sh and bench/interleaved.sh: starts the bench mock
# upstream on port $BASE, nginx as the strict proxy on $BASE+1 and one instance of ours per
# NAME:ARGS argument (NAME@BINARY:ARGS for another build) from $BASE+10, fills PORT[name] and
# NAMES (nginx first), and stops them all on exit. Needs a release build
# (cargo build --release --examples --bins), wrk and nginx-light (as bench/run.sh installs them).
KEY=sk-bench-key-0123456789
EX=${CARGO_TARGET_DIR:-target}/release/examples
BIN=${CARGO_TARGET_DIR:-target}/release/codex-responses-api-proxy
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
"$EX/bench_mock_upstream" "$BASE" "$KEY" 9 >/dev/null 2>&1 &
PIDS+=($!)
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$((BASE + 1))|g" -e "s|@UPSTREAM_PORT@|$BASE|g" \
	-e "s|@KEY@|$KEY|g" bench/nginx.conf.template >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" 2>/dev/null &
PIDS+=($!)
declare -A PORT=([nginx]=$((BASE + 1)))
NAMES=(nginx)
port=$((BASE + 10))
for spec in "$@"; do
	name=${spec%%:*}
	binary=$BIN
	if [[ $name == *@* ]]; then
		# NAME@BINARY:ARGS runs another build of ours (e.g. one saved before a change).
		binary=${name#*@}
		name=${name%%@*}
	fi
	# shellcheck disable=SC2086 # the arguments are meant to split
	printf '%s\n' "$KEY" | "$binary" --port $port --upstream-url "http://127.0.0.1:$BASE/v1/responses" \
		${spec#*:} 2>"$WORK/$name.log" &
	PIDS+=($!)
	PORT[$name]=$port
	NAMES+=("$name")
	port=$((port + 1))
done
sleep 1
