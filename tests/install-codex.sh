#!/bin/bash
# Installs the real Codex CLI (@openai/codex, pinned version) for tests/codex_cli.rs and prints
# the path of its static musl binary on stdout (everything else goes to stderr), e.g.
#   export CODEX_BIN="$(tests/install-codex.sh)"
# Idempotent: a complete install of the pinned version is reused without touching the network.
# Cache directory: $CODEX_CACHE_DIR, else /var/cache/codex-proxy-tests when run as root, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/codex-proxy-tests. Installs nodejs and npm with apt-get when
# they are missing and we are root.
set -euo pipefail

VERSION=0.169.0

case "$(uname -m)" in
x86_64 | amd64) platform=linux-x64 triple=x86_64-unknown-linux-musl ;;
aarch64 | arm64) platform=linux-arm64 triple=aarch64-unknown-linux-musl ;;
*)
	echo "install-codex: unsupported machine $(uname -m)" >&2
	exit 1
	;;
esac

if [ -n "${CODEX_CACHE_DIR:-}" ]; then
	base=$CODEX_CACHE_DIR
elif [ "$(id -u)" = 0 ]; then
	base=/var/cache/codex-proxy-tests
else
	base=${XDG_CACHE_HOME:-$HOME/.cache}/codex-proxy-tests
fi
dir=$base/codex-$VERSION
relative=node_modules/@openai/codex-$platform/vendor/$triple/bin/codex

installed() {
	[ -x "$1/$relative" ] && [ "$("$1/$relative" --version 2>/dev/null)" = "codex-cli $VERSION" ]
}

if installed "$dir"; then
	echo "$dir/$relative"
	exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "install-codex: npm missing, installing nodejs and npm with apt-get" >&2
		DEBIAN_FRONTEND=noninteractive apt-get update >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm >&2
	else
		echo "install-codex: npm is missing; install nodejs and npm first" >&2
		exit 1
	fi
fi

mkdir -p "$base"
# Install next to the final place and rename, so that an interrupted run never leaves a
# half-installed directory that looks complete.
staging=$(mktemp -d "$base/.codex-$VERSION.XXXXXX")
trap 'rm -rf "$staging"' EXIT
echo "install-codex: npm install @openai/codex@$VERSION into $dir" >&2
npm install --prefix "$staging" --no-audit --no-fund --no-save --loglevel=error \
	"@openai/codex@$VERSION" >&2
if ! installed "$staging"; then
	echo "install-codex: $staging/$relative missing or not version $VERSION after npm install" >&2
	exit 1
fi
rm -rf "$dir"
mv "$staging" "$dir"
trap - EXIT
echo "$dir/$relative"
