#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for N seconds each, one after another, and prints
# one summary line per target. Usage: bash fuzz/run.sh [SECONDS] [TARGET...]
#   Installs cargo-fuzz if missing, seeds fuzz/corpus/ from the fixtures (fuzz/seed.sh), and
#   builds on the stable toolchain with RUSTC_BOOTSTRAP=1. Logs: fuzz/logs/<target>.log;
#   crashes: fuzz/artifacts/<target>/. Exits 1 when any target crashed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(key_intake sse_reader bridge_request bridge_stream wrapper_request wrapper_stream framing_scanner usage_tap upstream_response upstream_httparse)
fi
export RUSTC_BOOTSTRAP=1
unset FUZZ_STRICT
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 2
fi
bash ./seed.sh >/dev/null || exit 2
cargo fuzz build -O >/dev/null 2>&1 || { cargo fuzz build -O; exit 2; }
mkdir -p logs
status=0
summary=()
for target in "${targets[@]}"; do
    case "$target" in
        key_intake) max_len=2100 ;;
        sse_reader) max_len=8192 ;;
        wrapper_request) max_len=8192 ;;
        *) max_len=65536 ;;
    esac
    mkdir -p "artifacts/$target"
    before=$(ls "artifacts/$target" | wc -l)
    cargo fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"logs/$target.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$' | tail -1)
    [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "logs/$target.log" | tail -1 | tr -d '#')
    after=$(ls "artifacts/$target" | wc -l)
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        newest=$(ls -t "artifacts/$target" | head -1)
        line="$target: ${execs:-0} execs in ${seconds}s, CRASH (exit $rc) fuzz/artifacts/$target/$newest"
        status=1
    else
        line="$target: ${execs:-0} execs in ${seconds}s, no crash"
    fi
    echo "$line"
    summary+=("$line")
done
echo "--- summary"
printf '%s\n' "${summary[@]}"
exit $status
