# Helpers the bench scripts share (sourced, not run): the process family of a target, its CPU
# time, the one-line summary of a wrk run (bench/wrk.lua prints it as WRKJSON), a throw-away
# CA with a server certificate, and the check and warm-up of a target.

# PID and its descendants (nginx's workers, our supervisor's worker).
family() {
	local all=$1 kid
	for kid in $(pgrep -P "$1" 2>/dev/null || true); do all="$all $(family "$kid")"; done
	echo "$all"
}

# CPU time (user + system, clock ticks) used so far by the processes given, all threads.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
	local total=0 pid stat
	for pid in "$@"; do
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		stat=${stat##*) }
		# shellcheck disable=SC2086 # split the fields
		set -- $stat
		total=$((total + ${12} + ${13}))
	done
	echo $total
}

# "req/s, p50, p99, non-2xx" of a wrk run's output on standard input.
summary() { sed -n 's/^WRKJSON //p' | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%6.0f req/s p50 %.3f ms p99 %.2f ms non2xx %d" % (d["rps"], d["p50_us"]/1e3, d["p99_us"]/1e3, d["non2xx"]))'; }

# A throw-away CA (DIR/ca.pem, readable by all) and a certificate for localhost and 127.0.0.1
# issued by it (DIR/server.pem, DIR/server.key).
make_throwaway_pki() {
	local dir=$1
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
		-keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
		-keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/ext"
	openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
		-CAcreateserial -days 1 -extfile "$dir/ext" -out "$dir/server.pem" 2>/dev/null
	chmod 644 "$dir/ca.pem"
}

# Checks that the target NAME on PORT answers a POST of BODY with 200 (else prints the logs in
# $WORK and exits), then warms it up with a second of wrk at c64.
check_and_warm() {
	local name=$1 port=$2 body=$3 status
	status=$(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' -X POST -d "$body" \
		"http://127.0.0.1:$port/v1/responses")
	[ "$status" = 200 ] || { echo "$name answered $status; logs in $WORK" >&2; cat "$WORK"/*.log >&2; exit 1; }
	BENCH_BODY=$body wrk -t2 -c64 -d1s -s bench/wrk.lua "http://127.0.0.1:$port/v1/responses" >/dev/null
}
