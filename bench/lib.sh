# Helpers the bench scripts share (sourced, not run): the process family of a target, its CPU
# time, and the one-line summary of a wrk run (bench/wrk.lua prints it as WRKJSON).

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
