#!/usr/bin/env bash
# WebSocket mode: the time the proxy adds to a turn over a WebSocket (relayed to a WebSocket
# upstream, or served by the proxy over an HTTP upstream), next to the same turns straight to
# the upstreams and over HTTP POST, and the worker's memory per open socket; once plain and once
# with permessage-deflate negotiated. The driver is examples/bench_websocket.rs (its header says
# what it measures).
# Usage: bash bench/websocket.sh [TURNS] [SOCKETS]   (defaults 2000 and 500). Run as root (the
# proxy's supervisor drops privileges for its worker); needs the open-files limit above
# 2 x SOCKETS + 100.
set -euo pipefail
cd "$(dirname "$0")/.."
TURNS=${1:-2000}
SOCKETS=${2:-500}
cargo build --release --quiet --bin codex-responses-api-proxy --example bench_websocket
ulimit -n 65536 2>/dev/null || true
"${CARGO_TARGET_DIR:-target}/release/examples/bench_websocket" \
	"${CARGO_TARGET_DIR:-target}/release/codex-responses-api-proxy" "$TURNS" "$SOCKETS"
