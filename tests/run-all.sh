#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine, as root or as a user with sudo:
# installs what the tests need, checks formatting and lints, runs `cargo test` (unit and
# black-box tests, the real Codex CLI included), then the system test of the Debian package
# in a booted systemd container.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v systemd-socket-activate >/dev/null || need_apt+=(systemd)
command -v curl >/dev/null || need_apt+=(curl)
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing: ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  # shellcheck disable=SC1091
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi

echo "== installing the Codex CLI used by the end-to-end tests"
CODEX_BIN="$(bash tests/install-codex.sh)"
export CODEX_BIN

echo "== installing the official openai Python SDK used as a real client"
venv=/var/cache/codex-proxy-tests/venv
[ "$(id -u)" -eq 0 ] || venv="$HOME/.cache/codex-proxy-tests/venv"
if ! "$venv/bin/python" -c 'import openai, websockets, prometheus_client' 2>/dev/null; then
  python3 -m venv "$venv"
  # `realtime` brings the websockets package that client.responses.connect() needs;
  # prometheus_client's text parser reads the metrics socket in tests/metrics.rs.
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'openai[realtime]' prometheus_client
fi
export OPENAI_SDK_PYTHON="$venv/bin/python"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --all-targets

if [ -x tests/system/run.sh ] && [ "${SKIP_SYSTEM_TEST:-0}" != 1 ]; then
  echo "== system test (Debian package in a booted systemd)"
  as_root bash tests/system/run.sh
fi
