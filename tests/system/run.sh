#!/bin/bash
# System test of the Debian package: build the .deb from the repository,
# boot a real systemd (Debian bookworm) with systemd-nspawn, install the
# package there and check, as an unprivileged user, what the package
# promises. Run as root on a Debian bookworm host:
#
#   bash tests/system/run.sh              # builds from a clone of HEAD
#   bash tests/system/run.sh --worktree   # builds from the working tree
#
# Prints PASS/FAIL per check and ends with "N passed, M failed"; exits
# non-zero on any failure. See tests/system/README.md.

set -euo pipefail
# Note: with pipefail, `cmd | grep -q` fails when grep exits early and cmd gets SIGPIPE, so
# output is captured into a variable first wherever a match decides a check.

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(git -C "$SELF_DIR" rev-parse --show-toplevel)
PKG=codex-responses-api-proxy
CACHE=${CODEX_SYSTEST_CACHE:-/var/cache/codex-proxy-systest}
ROOTFS_TAR=$CACHE/bookworm-root.tar.zst
ROOTFS_MAX_AGE_DAYS=${CODEX_SYSTEST_ROOTFS_MAX_AGE_DAYS:-14}
MIRROR=${CODEX_SYSTEST_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${CODEX_SYSTEST_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PORT=8719
MOCK_PORT=18080
TESTUSER=alice
SOURCE=head
KEEP=no

for arg in "$@"; do
    case $arg in
        --worktree) SOURCE=worktree ;;
        --keep) KEEP=yes ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

T0=$(date +%s)
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

PASSED=0
FAILED=0
FAILED_NAMES=()
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$1"; }
fail() {
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); printf 'FAIL: %s\n' "$1"
    if [ $# -gt 1 ] && [ -n "$2" ]; then printf '%s\n' "$2" | sed 's/^/      /' | head -n 40; fi
}
# check NAME COMMAND...: PASS if the command succeeds; its output is shown on failure.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

finish() {
    local rc=$?
    set +e
    cleanup
    echo
    if [ "$FAILED" -gt 0 ]; then
        echo "Failed checks:"
        printf '  - %s\n' "${FAILED_NAMES[@]}"
    fi
    log "total run time"
    echo "$PASSED passed, $FAILED failed"
    if [ "$FAILED" -gt 0 ] || [ "$PASSED" -eq 0 ]; then exit 1; fi
    exit "$rc"
}

[ "$(id -u)" -eq 0 ] || { echo "run.sh must run as root" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/codex-systest.XXXXXX)
NSPAWN_PID=
LEADER=
CGROUP_DIR=

cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        if [ "$KEEP" = yes ]; then
            echo "--keep: container left running; leader pid $LEADER, nspawn pid $NSPAWN_PID, root $WORK/root"
            return
        fi
        kill -TERM "$NSPAWN_PID" 2>/dev/null
        for _ in $(seq 1 100); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    if [ -n "$CGROUP_DIR" ] && [ -d "$CGROUP_DIR" ]; then
        # Anything left in the container's cgroup tree is ended, then the tree removed.
        find "$CGROUP_DIR" -depth -type d | while read -r d; do
            if [ -f "$d/cgroup.kill" ]; then echo 1 >"$d/cgroup.kill" 2>/dev/null; fi
        done
        sleep 0.2
        find "$CGROUP_DIR" -depth -type d -exec rmdir {} + 2>/dev/null
    fi
    if [ -d "$WORK" ]; then
        # Never follow into a mount that is still there.
        if ! grep -q " $WORK/" /proc/self/mounts; then rm -rf "$WORK"; fi
    fi
}
trap finish EXIT
trap 'exit 130' INT TERM HUP

# --------------------------------------------------------------------------
# 1. Tools on the host
# --------------------------------------------------------------------------
NEED_PKGS=(systemd-container mmdebstrap debhelper lintian zstd dpkg-dev fakeroot git)
missing=()
for p in "${NEED_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; exit 1; }
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$WORK/apt.log" 2>&1 \
        || { tail -n 30 "$WORK/apt.log"; exit 1; }
fi
mkdir -p "$CACHE"
log "cache: $CACHE"

# --------------------------------------------------------------------------
# 2. Build the package
# --------------------------------------------------------------------------
# A fixed path under the cache: cargo's fingerprints stay valid between runs.
BUILD=$CACHE/build
SRC=$BUILD/src
rm -rf "$BUILD"
mkdir -p "$BUILD"
if [ "$SOURCE" = head ]; then
    log "cloning HEAD of $REPO"
    git clone -q --no-hardlinks "$REPO" "$SRC"
    log "building $(git -C "$SRC" log -1 --format='%h %s')"
else
    log "copying the working tree of $REPO"
    mkdir -p "$SRC"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$SRC"
fi
if [ ! -f "$SRC/debian/control" ]; then
    fail "package builds" "no debian/ in the source (use --worktree for uncommitted packaging)"
    exit 1
fi
# The cargo target directory is kept in the cache: a second run builds in seconds.
export CARGO_TARGET_DIR=$CACHE/target
if (cd "$SRC" && dpkg-buildpackage -b -us -uc) >"$WORK/build.log" 2>&1; then
    pass "package builds (dpkg-buildpackage -b -us -uc)"
else
    fail "package builds (dpkg-buildpackage -b -us -uc)" "$(tail -n 40 "$WORK/build.log")"
    exit 1
fi
grep "^debian/rules: man page from" "$WORK/build.log" | sed 's/^/  /' || true
if grep -q "^debian/rules: WARNING: .*--man-page" "$WORK/build.log"; then
    echo "NOTE: the binary has no --man-page yet; the package used the fallback man page"
fi
DEB=$(ls "$BUILD"/${PKG}_*.deb)
log "built $(basename "$DEB") ($(du -h "$DEB" | cut -f1))"

# --------------------------------------------------------------------------
# 3. lintian
# --------------------------------------------------------------------------
lintian_out=$(lintian -I -E --pedantic "$DEB" 2>&1) && lintian_rc=0 || lintian_rc=$?
echo "lintian -I -E --pedantic $(basename "$DEB"): rc=$lintian_rc"
if [ -n "$lintian_out" ]; then printf '%s\n' "$lintian_out" | sed 's/^/  /'; else echo "  (no tags)"; fi
if [ "$lintian_rc" -eq 0 ] && ! printf '%s\n' "$lintian_out" | grep -qE '^[EWIXP]: '; then
    pass "lintian -I -E --pedantic is clean"
else
    fail "lintian -I -E --pedantic is clean"
fi
lintian --show-overrides -I -E --pedantic "$DEB" 2>/dev/null | grep '^O: ' | sed 's/^/  override: /' || true

# --------------------------------------------------------------------------
# 4. A minimal bookworm root with systemd (cached as tar.zst)
# --------------------------------------------------------------------------
if [ -f "$ROOTFS_TAR" ] && [ -n "$(find "$ROOTFS_TAR" -mtime -"$ROOTFS_MAX_AGE_DAYS" 2>/dev/null)" ]; then
    log "using cached root $ROOTFS_TAR"
else
    log "bootstrapping bookworm into $ROOTFS_TAR"
    mmdebstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,libnss-systemd,curl,python3,ca-certificates \
        bookworm "$ROOTFS_TAR.tmp.tar.zst" \
        "deb $MIRROR bookworm main" \
        "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY_MIRROR bookworm-security main" >"$WORK/mmdebstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/mmdebstrap.log"; fail "bootstrap bookworm root"; exit 1; }
    mv "$ROOTFS_TAR.tmp.tar.zst" "$ROOTFS_TAR"
fi
ROOT=$WORK/root
mkdir -p "$ROOT"
tar --zstd -xf "$ROOTFS_TAR" -C "$ROOT"
# No host identity inside; a fresh machine-id makes a new host key per run.
rm -f "$ROOT/etc/machine-id" "$ROOT/var/lib/systemd/credential.secret"
install -m 0644 "$DEB" "$ROOT/root/"
install -m 0755 "$SELF_DIR/mock_upstream.py" "$ROOT/root/mock_upstream.py"

# --------------------------------------------------------------------------
# 5. Boot it
# --------------------------------------------------------------------------
# nspawn runs in a cgroup of its own, below the host's cgroup v2 hierarchy.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG_BASE=/sys/fs/cgroup
elif [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
    CG_BASE=/sys/fs/cgroup/unified
else
    fail "host has a cgroup v2 hierarchy"; exit 1
fi
CGROUP_DIR=$CG_BASE/codex-systest-$$
mkdir -p "$CGROUP_DIR"
log "booting systemd in $ROOT"
(
    echo "$BASHPID" >"$CGROUP_DIR/cgroup.procs"
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
    exec systemd-nspawn -D "$ROOT" --machine="codex-systest-$$" \
        --register=no --keep-unit --console=read-only \
        --capability=CAP_IPC_LOCK,CAP_BPF --system-call-filter=bpf \
        --private-network -b </dev/null >"$WORK/console.log" 2>&1
) &
NSPAWN_PID=$!

for _ in $(seq 1 150); do
    LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd 2>/dev/null | head -n 1) || true
    [ -n "$LEADER" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.2
done
if [ -z "$LEADER" ]; then
    fail "container boots" "$(tail -n 30 "$WORK/console.log")"
    exit 1
fi

# Run a command inside the container as root, with a clean environment.
ct() {
    nsenter -t "$LEADER" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@" </dev/null
}
# Same, with the caller's standard input (to feed a key in).
ct_in() {
    nsenter -t "$LEADER" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
# Run a command inside the container as the unprivileged test user.
ct_user() {
    ct setpriv --reuid="$TESTUSER" --regid="$TESTUSER" --init-groups --reset-env "$@"
}

# PID 1 needs a moment before systemctl can talk to it; then wait for boot.
state=
for _ in $(seq 1 300); do
    state=$(ct timeout 60 systemctl is-system-running --wait 2>&1) || true
    case $state in running|degraded|maintenance|stopping) break ;; esac
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.2
done
if [ "$state" = running ] || [ "$state" = degraded ]; then
    pass "container boots a real systemd ($(ct systemctl --version | head -n 1)), state $state"
else
    fail "container boots a real systemd" "state: $state"$'\n'"$(tail -n 20 "$WORK/console.log")"
    exit 1
fi
[ "$state" = degraded ] && ct systemctl --failed --no-legend || true

# --------------------------------------------------------------------------
# Helpers for requests made by the unprivileged user
# --------------------------------------------------------------------------
BASE=http://127.0.0.1:$PORT
RESP_BODY=
RESP_STATUS=
# req METHOD PATH [BODY]: sets RESP_STATUS and RESP_BODY.
req() {
    local method=$1 path=$2 body=${3-} out
    local args=(curl -sS -N --max-time 30 -X "$method" -o - -w '\n%{http_code}')
    if [ -n "$body" ]; then
        args+=(-H 'Content-Type: application/json' -H 'Accept: text/event-stream' --data-binary "$body")
    fi
    # A client-supplied Authorization must never reach the upstream.
    args+=(-H 'Authorization: Bearer client-supplied-token' "$BASE$path")
    out=$(ct_user "${args[@]}" 2>&1) || true
    RESP_STATUS=${out##*$'\n'}
    RESP_BODY=${out%$'\n'*}
}
RESPONSES_BODY='{"model":"gpt-5","instructions":"test","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":true,"store":false}'
mock_count() { ct sh -c "wc -l </run/mock-upstream/requests.jsonl" 2>/dev/null || echo 0; }
# mock_field NAME: that field of the last request the mock upstream recorded.
mock_field() {
    ct python3 -c 'import json,sys; print(json.loads(open("/run/mock-upstream/requests.jsonl").read().splitlines()[-1])[sys.argv[1]])' "$1" 2>&1 || true
}
svc_show() { ct systemctl show -p "$1" --value "$PKG.service"; }
wait_service_state() { # wait_service_state STATE SECONDS
    local i
    for i in $(seq 1 $(($2 * 5))); do
        [ "$(svc_show ActiveState)" = "$1" ] && return 0
        sleep 0.2
    done
    return 1
}
journal_unit() { ct journalctl -u "$PKG" --no-pager -o cat "$@"; }

# --------------------------------------------------------------------------
# 6. Install the package
# --------------------------------------------------------------------------
log "apt install ./$(basename "$DEB")"
if out=$(ct sh -c "cd /root && apt-get install -y ./$(basename "$DEB")" 2>&1); then
    pass "apt install ./$(basename "$DEB") (no network in the container)"
else
    fail "apt install ./$(basename "$DEB")" "$out"
    exit 1
fi
check "system user $PKG exists (sysusers.d)" ct getent passwd "$PKG"
check "socket is enabled" ct systemctl is-enabled --quiet "$PKG.socket"
check "socket is active after install" ct systemctl is-active --quiet "$PKG.socket"
state=$(svc_show ActiveState)
if [ "$state" = inactive ]; then pass "service not started by the install"; else fail "service not started by the install" "ActiveState=$state"; fi
check "/etc/default/$PKG is a conffile" ct sh -c "dpkg-query -W -f='\${Conffiles}' $PKG | grep -q /etc/default/$PKG"

ct useradd -m -s /bin/sh "$TESTUSER"

# Mock upstream and settings
ct mkdir -p /run/mock-upstream
ct systemd-run --quiet --unit=mock-upstream --property=Type=simple \
    python3 /root/mock_upstream.py --port "$MOCK_PORT" --record /run/mock-upstream/requests.jsonl
for _ in $(seq 1 50); do
    ct curl -s -o /dev/null "http://127.0.0.1:$MOCK_PORT/ready" && break
    sleep 0.2
done
ct sh -c "cat >>/etc/default/$PKG <<EOF

# Added by tests/system/run.sh
CODEX_PROXY_UPSTREAM_URL=http://127.0.0.1:$MOCK_PORT/v1/responses
CODEX_PROXY_HTTP_SHUTDOWN=true
EOF"
# The readiness probe above is in the record: start it afresh.
ct sh -c ': >/run/mock-upstream/requests.jsonl'

# --------------------------------------------------------------------------
# 7. No key installed yet
# --------------------------------------------------------------------------
log "no key installed"
req POST /v1/responses "$RESPONSES_BODY"
if [ "$RESP_STATUS" = 503 ] && printf '%s' "$RESP_BODY" | grep -q "$PKG-install-key" \
    && printf '%s' "$RESP_BODY" | ct python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert isinstance(d["error"]["message"], str)' "$RESP_BODY"; then
    pass "no key: POST /v1/responses answers 503 with an OpenAI-style error naming $PKG-install-key"
else
    fail "no key: POST /v1/responses answers 503 with an OpenAI-style error naming $PKG-install-key" "status=$RESP_STATUS body=$RESP_BODY"
fi
for _ in 1 2 3 4 5 6; do req POST /v1/responses "$RESPONSES_BODY"; done
if [ "$RESP_STATUS" = 503 ] && ct systemctl is-active --quiet "$PKG.socket" && ! ct systemctl is-failed --quiet "$PKG.socket"; then
    pass "no key: after 7 requests the socket is still listening, not failed (service $(svc_show ActiveState))"
else
    fail "no key: after 7 requests the socket is still listening, not failed" \
        "last status=$RESP_STATUS socket=$(ct systemctl is-active "$PKG.socket") service=$(svc_show ActiveState)/$(svc_show Result)"
fi
journal_now=$(journal_unit)
if printf '%s\n' "$journal_now" | grep -q "$PKG-install-key"; then
    pass "no key: the journal says how to install the key"
else
    fail "no key: the journal says how to install the key" "$(journal_unit | tail -n 15)"
fi
n=$(mock_count)
if [ "$n" = 0 ]; then pass "no key: nothing reached the upstream"; else fail "no key: nothing reached the upstream" "$n requests recorded"; fi

# --------------------------------------------------------------------------
# 8. Install a key with the admin command
# --------------------------------------------------------------------------
KEY="sk-systest-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
log "installing a key"
out=$(ct "$PKG-install-key" "$KEY" 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ] && ! printf '%s' "$out" | grep -q "$KEY"; then
    pass "install-key refuses a key given as an argument (and does not echo it)"
else
    fail "install-key refuses a key given as an argument (and does not echo it)" "rc=$rc"
fi
out=$(ct sh -c "printf '%s\n' 'bad key!' | $PKG-install-key" 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ] && ! printf '%s' "$out" | grep -q 'bad key'; then
    pass "install-key rejects a key with invalid characters without echoing it"
else
    fail "install-key rejects a key with invalid characters without echoing it" "rc=$rc out=$out"
fi
out=$(ct "$PKG-install-key" 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ]; then pass "install-key fails on empty standard input"; else fail "install-key fails on empty standard input" "$out"; fi

# The key goes in through stdin from a root-only file.
ct_in sh -c "umask 077; cat >/root/key.txt" <<<"$KEY"
out=$(ct sh -c "$PKG-install-key </root/key.txt" 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && ! printf '%s' "$out" | grep -q "$KEY"; then
    pass "install-key stores the key from stdin (output does not contain it)"
else
    fail "install-key stores the key from stdin (output does not contain it)" "rc=$rc out=$out"
fi
ct rm -f /root/key.txt
perm=$(ct stat -c '%U %a' /etc/$PKG/openai-api-key.cred 2>&1) || true
if [ "$perm" = "root 600" ] && [ "$(ct stat -c '%a' /etc/$PKG)" = 700 ] \
    && ! ct grep -q "$KEY" /etc/$PKG/openai-api-key.cred; then
    pass "key stored encrypted (/etc/$PKG/openai-api-key.cred, root 0600, dir 0700, no plaintext)"
else
    fail "key stored encrypted (/etc/$PKG/openai-api-key.cred, root 0600, dir 0700, no plaintext)" "$perm"
fi

# --------------------------------------------------------------------------
# 9. Requests as the unprivileged user
# --------------------------------------------------------------------------
log "requests as $TESTUSER"
before=$(mock_count)
req POST /v1/responses "$RESPONSES_BODY"
after=$(mock_count)
if [ "$RESP_STATUS" = 200 ] && printf '%s' "$RESP_BODY" | grep -q 'Hello from the mock upstream' \
    && printf '%s' "$RESP_BODY" | grep -q 'response.completed'; then
    pass "POST /v1/responses as $TESTUSER: 200 with the upstream's SSE stream"
else
    fail "POST /v1/responses as $TESTUSER: 200 with the upstream's SSE stream" "status=$RESP_STATUS body=$(printf '%s' "$RESP_BODY" | head -c 600)"
fi
auth=$(mock_field authorization)
if [ "$after" -gt "$before" ] && [ "$auth" = "Bearer $KEY" ]; then
    pass "the upstream saw exactly 'Authorization: Bearer <installed key>' (client's header replaced)"
else
    fail "the upstream saw exactly 'Authorization: Bearer <installed key>' (client's header replaced)" "requests before=$before after=$after authorization=${auth//$KEY/<KEY>}"
fi
mock_path=$(mock_field path)
if [ "$mock_path" = /v1/responses ]; then pass "forwarded to the configured upstream URL path"; else fail "forwarded to the configured upstream URL path" "$mock_path"; fi

before=$(mock_count)
for route in "GET /v1/models" "POST /v1/chat/completions" "POST /v1/completions" "GET /v1/responses" "GET /" "POST /v1/responses/extra" "DELETE /v1/responses"; do
    set -- $route
    if [ "$1" = POST ]; then req "$1" "$2" '{"model":"gpt-5"}'; else req "$1" "$2"; fi
    if [ "$RESP_STATUS" = 403 ]; then
        pass "$route as $TESTUSER: 403"
    else
        fail "$route as $TESTUSER: 403" "status=$RESP_STATUS body=$(printf '%s' "$RESP_BODY" | head -c 300)"
    fi
done
after=$(mock_count)
if [ "$after" = "$before" ]; then pass "refused routes never reached the upstream"; else fail "refused routes never reached the upstream" "$((after - before)) recorded"; fi

# --------------------------------------------------------------------------
# 10. Processes, privileges and secrets
# --------------------------------------------------------------------------
MAIN_PID=$(svc_show MainPID)
WORKER_PID=$(ct sh -c "for s in /proc/[0-9]*/status; do awk -v p=$MAIN_PID '/^PPid:/ && \$2==p {split(FILENAME,a,\"/\"); print a[3]}' \$s 2>/dev/null; done" | head -n 1)
echo "  supervisor pid $MAIN_PID, worker pid ${WORKER_PID:-none}"
if [ -n "$WORKER_PID" ] && [ "$MAIN_PID" != 0 ]; then
    st=$(ct cat "/proc/$WORKER_PID/status")
    echo "$st" | grep -E '^(Name|Uid|Gid|Groups|Cap|NoNewPrivs|Seccomp):' | sed 's/^/  worker /'
    ct grep -E '^(Uid|Cap(Prm|Eff|Bnd)|NoNewPrivs):' "/proc/$MAIN_PID/status" | sed 's/^/  supervisor /'
    uids=$(echo "$st" | awk '/^Uid:/{print $2,$3,$4,$5}')
    gids=$(echo "$st" | awk '/^Gid:/{print $2,$3,$4,$5}')
    want_uid=$(ct id -u "$PKG")
    if [ "$uids" = "$want_uid $want_uid $want_uid $want_uid" ] && ! echo " $gids " | grep -q ' 0 ' \
        && ! echo "$st" | awk '/^Groups:/' | grep -qw 0; then
        pass "worker runs as $PKG (uid $want_uid: real/effective/saved/fs), no root group"
    else
        fail "worker runs as $PKG (uid $want_uid: real/effective/saved/fs), no root group" "Uid: $uids Gid: $gids"
    fi
    caps_ok=yes
    for c in CapPrm CapEff CapBnd CapAmb; do
        v=$(echo "$st" | awk -v c="$c:" '$1==c{print $2}')
        [ "$v" = 0000000000000000 ] || caps_ok="no ($c=$v)"
    done
    if [ "$caps_ok" = yes ]; then pass "worker CapPrm/CapEff/CapBnd/CapAmb are all 0"; else fail "worker CapPrm/CapEff/CapBnd/CapAmb are all 0" "$caps_ok"; fi
    if echo "$st" | grep -qE '^NoNewPrivs:[[:space:]]+1$'; then pass "worker NoNewPrivs 1"; else fail "worker NoNewPrivs 1" "$(echo "$st" | grep NoNewPrivs)"; fi
    for p in "$MAIN_PID:supervisor" "$WORKER_PID:worker"; do
        if ct_user cat "/proc/${p%%:*}/environ" >/dev/null 2>&1; then
            fail "$TESTUSER cannot read the ${p#*:}'s /proc/PID/environ"
        else
            pass "$TESTUSER cannot read the ${p#*:}'s /proc/PID/environ"
        fi
        proc_text=$(ct sh -c "tr '\0' '\n' </proc/${p%%:*}/environ; tr '\0' ' ' </proc/${p%%:*}/cmdline")
        if printf '%s\n' "$proc_text" | grep -q "$KEY"; then
            fail "the key is not in the ${p#*:}'s environment or command line"
        else
            pass "the key is not in the ${p#*:}'s environment or command line"
        fi
    done
else
    fail "worker process found (child of the service's main PID)" "MainPID=$MAIN_PID; $(ct ps -ef 2>/dev/null || true)"
fi
leaks=
for f in /etc/$PKG/openai-api-key.cred "/run/credentials/$PKG.service/openai-api-key" /var/lib/systemd/credential.secret; do
    if ct_user cat "$f" >/dev/null 2>&1; then leaks+="$f "; fi
done
for d in /etc/$PKG "/run/credentials/$PKG.service"; do
    if ct_user ls "$d/" >/dev/null 2>&1; then leaks+="$d/ (listable) "; fi
done
if [ -z "$leaks" ]; then
    pass "$TESTUSER cannot read the credential (file, directory, /run/credentials, host key)"
else
    fail "$TESTUSER cannot read the credential (file, directory, /run/credentials, host key)" "readable: $leaks"
fi

# --------------------------------------------------------------------------
# 11. Journal
# --------------------------------------------------------------------------
ct journalctl --sync 2>/dev/null || true
jr=$(journal_unit)
if printf '%s\n' "$jr" | grep -E 'POST' | grep -E '/v1/responses' | grep -qw 200 \
    && printf '%s\n' "$jr" | grep -E 'GET' | grep -E '/v1/models' | grep -qw 403; then
    pass "journalctl -u $PKG has a line per request (method, path, status)"
    printf '%s\n' "$jr" | grep -E '/v1/(responses|models)' | tail -n 3 | sed 's/^/  journal: /'
else
    fail "journalctl -u $PKG has a line per request (method, path, status)" "$(printf '%s\n' "$jr" | tail -n 20)"
fi
# Who is calling: the caller's uid and name are structured journal fields.
alice_uid=$(ct id -u "$TESTUSER")
by_alice=$(ct journalctl -u "$PKG" --no-pager -o cat F_CLIENT_USER="$TESTUSER" F_CLIENT_UID="$alice_uid")
if printf '%s\n' "$by_alice" | grep -q '/v1/responses'; then
    pass "journalctl -u $PKG F_CLIENT_USER=$TESTUSER selects $TESTUSER's requests"
else
    fail "journalctl -u $PKG F_CLIENT_USER=$TESTUSER selects $TESTUSER's requests" "$(ct journalctl -u "$PKG" --no-pager -o verbose | grep -E 'F_CLIENT|MESSAGE=' | tail -n 10)"
fi
usage_json=$(ct "$PKG" usage --json)
if printf '%s\n' "$usage_json" | grep -q "\"user\": *\"$TESTUSER\""; then
    pass "$PKG usage reports $TESTUSER's requests from the state directory"
else
    fail "$PKG usage reports $TESTUSER's requests from the state directory" "$(ct "$PKG" usage 2>&1 | tail -n 5)"
fi
journal_all=$(ct journalctl --no-pager -o verbose)
if printf '%s\n' "$journal_all" | grep -qF "$KEY"; then
    fail "the key appears nowhere in the journal (journalctl -o verbose, all units)"
else
    pass "the key appears nowhere in the journal (journalctl -o verbose, all units)"
fi

# --------------------------------------------------------------------------
# 11b. Metrics: root reads the packaged socket, a user is refused by the file system
# --------------------------------------------------------------------------
METRICS_SOCK=/run/$PKG/metrics.sock
sock_stat=$(ct stat -c '%F %U:%G %a' "$METRICS_SOCK" 2>&1) || true
if [ "$sock_stat" = "socket root:root 660" ]; then
    pass "the metrics socket $METRICS_SOCK is root:root 0660"
else
    fail "the metrics socket $METRICS_SOCK is root:root 0660" "$sock_stat"
fi
metrics=$(ct curl -sS --max-time 10 --unix-socket "$METRICS_SOCK" http://localhost/metrics 2>&1) || true
if printf '%s\n' "$metrics" | grep -q '^codex_proxy_requests_total{route="responses",status="200"} [1-9]' \
    && printf '%s\n' "$metrics" | grep -q "^codex_proxy_tokens_total{user=\"$TESTUSER\",uid=\"$alice_uid\",model=\"[^\"]*\",kind=\"output\"} [1-9]" \
    && printf '%s\n' "$metrics" | grep -q '^# TYPE codex_proxy_requests_in_flight gauge'; then
    pass "root scrapes GET /metrics: requests by route and status, $TESTUSER's tokens"
    printf '%s\n' "$metrics" | grep -E '^codex_proxy_(requests|tokens)_total' | head -n 4 | sed 's/^/  metrics: /'
else
    fail "root scrapes GET /metrics: requests by route and status, $TESTUSER's tokens" "$(printf '%s\n' "$metrics" | head -n 30)"
fi
refused=$(ct_user python3 -c 'import socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(e.errno)' "$METRICS_SOCK" 2>&1) || true
if [ "$refused" = 13 ]; then
    pass "$TESTUSER's connect(2) to the metrics socket is refused with EACCES"
else
    fail "$TESTUSER's connect(2) to the metrics socket is refused with EACCES" "$refused"
fi

# --------------------------------------------------------------------------
# 12. GET /shutdown and re-activation
# --------------------------------------------------------------------------
log "GET /shutdown"
req GET /shutdown
if wait_service_state inactive 20; then
    res="ExecMainStatus=$(svc_show ExecMainStatus) ActiveState=$(svc_show ActiveState) Result=$(svc_show Result)"
    if [ "$res" = "ExecMainStatus=0 ActiveState=inactive Result=success" ]; then
        pass "GET /shutdown ($RESP_STATUS) stops the service cleanly: $res"
    else
        fail "GET /shutdown stops the service cleanly" "$res"
    fi
else
    fail "GET /shutdown stops the service cleanly" "status=$RESP_STATUS; service still $(svc_show ActiveState) after 20 s"
fi
check "socket still listening after /shutdown" ct systemctl is-active --quiet "$PKG.socket"
# Whatever happened above, start the next checks from a stopped service.
if [ "$(svc_show ActiveState)" != inactive ]; then
    ct systemctl kill --signal=SIGKILL "$PKG.service" >/dev/null 2>&1 || true
    wait_service_state inactive 10 || wait_service_state failed 10 || true
    ct systemctl reset-failed "$PKG.service" >/dev/null 2>&1 || true
fi
before=$(mock_count)
req POST /v1/responses "$RESPONSES_BODY"
if [ "$RESP_STATUS" = 200 ] && [ "$(mock_count)" -gt "$before" ] && [ "$(svc_show ActiveState)" = active ]; then
    pass "the next request re-activates the service (200, reached the upstream)"
else
    fail "the next request re-activates the service" "status=$RESP_STATUS service=$(svc_show ActiveState)"
fi

# --------------------------------------------------------------------------
# 13. Sandbox score
# --------------------------------------------------------------------------
sec=$(ct systemd-analyze security "$PKG.service" 2>&1) || true
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "  systemd-analyze security $PKG.service: exposure ${score:-?}"
printf '%s\n' "$sec" | grep '^✗' | sed 's/  */ /g; s/^/  /' || true
if [ -n "$score" ] && awk -v s="$score" 'BEGIN{exit !(s <= 2.0)}'; then
    pass "systemd-analyze security exposure $score <= 2.0"
else
    fail "systemd-analyze security exposure <= 2.0" "score=${score:-none}"
fi

# --------------------------------------------------------------------------
# 14. Upgrade (reinstall) keeps the key; the service comes back lazily
# --------------------------------------------------------------------------
log "reinstall (upgrade path)"
if out=$(ct sh -c "cd /root && dpkg -i ./$(basename "$DEB")" 2>&1); then
    st=$(svc_show ActiveState)
    if ct test -f /etc/$PKG/openai-api-key.cred && ct systemctl is-active --quiet "$PKG.socket" && [ "$st" = inactive ]; then
        pass "upgrade keeps the key, restarts the socket, leaves the service to the next connection"
    else
        fail "upgrade keeps the key, restarts the socket, leaves the service to the next connection" "service=$st"
    fi
else
    fail "upgrade (dpkg -i of the same version)" "$out"
fi
before=$(mock_count)
req POST /v1/responses "$RESPONSES_BODY"
auth=$(mock_field authorization)
if [ "$RESP_STATUS" = 200 ] && [ "$(mock_count)" -gt "$before" ] && [ "$auth" = "Bearer $KEY" ]; then
    pass "after the upgrade the first request starts the service with the same key"
else
    fail "after the upgrade the first request starts the service with the same key" "status=$RESP_STATUS"
fi

# --------------------------------------------------------------------------
# 14b. An HTTPS upstream whose CA is installed in the system store
# --------------------------------------------------------------------------
log "HTTPS upstream, company CA installed with update-ca-certificates"
# By address: the minimal image has no /etc/hosts and the container no DNS.
TLS_PORT=$((MOCK_PORT + 1))
ct sh -c 'cd /root && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=systest company CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca.key -out ca.crt \
  && openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr \
  && printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n" >server.ext \
  && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.crt' >/dev/null 2>&1 || fail "make a CA and a server certificate with openssl"
ct systemd-run --quiet --unit=mock-upstream-tls --property=Type=simple \
    python3 /root/mock_upstream.py --port "$TLS_PORT" --record /run/mock-upstream/requests.jsonl \
    --tls-cert /root/server.crt --tls-key /root/server.key
for _ in $(seq 1 50); do
    ct curl -sk -o /dev/null "https://127.0.0.1:$TLS_PORT/ready" && break
    sleep 0.2
done
ct sed -i "s|^CODEX_PROXY_UPSTREAM_URL=.*|CODEX_PROXY_UPSTREAM_URL=https://127.0.0.1:$TLS_PORT/v1/responses|" /etc/default/$PKG
ct systemctl stop "$PKG.service"
before=$(mock_count)
req POST /v1/responses "$RESPONSES_BODY"
if [ "$RESP_STATUS" = 502 ] && printf '%s' "$RESP_BODY" | grep -q 'issuer is unknown' && [ "$(mock_count)" = "$before" ]; then
    pass "an HTTPS upstream from an unknown CA: 502 saying the issuer is unknown"
else
    fail "an HTTPS upstream from an unknown CA: 502 saying the issuer is unknown" "status=$RESP_STATUS body=$RESP_BODY"
fi
ct cp /root/ca.crt /usr/local/share/ca-certificates/systest-company-ca.crt
ct update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates"
ct systemctl stop "$PKG.service"
before=$(mock_count)
req POST /v1/responses "$RESPONSES_BODY"
auth=$(mock_field authorization)
if [ "$RESP_STATUS" = 200 ] && [ "$(mock_count)" -gt "$before" ] && [ "$auth" = "Bearer $KEY" ]; then
    pass "after update-ca-certificates the HTTPS upstream is trusted (200, with the key)"
else
    fail "after update-ca-certificates the HTTPS upstream is trusted" "status=$RESP_STATUS body=$RESP_BODY"
fi
# Back to the plain-HTTP mock for the checks below.
ct sed -i "s|^CODEX_PROXY_UPSTREAM_URL=.*|CODEX_PROXY_UPSTREAM_URL=http://127.0.0.1:$MOCK_PORT/v1/responses|" /etc/default/$PKG
ct systemctl stop "$PKG.service" mock-upstream-tls.service

# --------------------------------------------------------------------------
# 14b. Key rotation during a live stream: install-key → systemctl reload
# --------------------------------------------------------------------------
log "key rotation with a live stream"
KEY3="sk-rotated-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
HOLD_BODY='{"model":"hold","input":"a long answer","stream":true}'
ct rm -f /run/mock-upstream/RELEASE /tmp/held.out /tmp/held.status
before=$(mock_count)
# alice's stream, held open by the mock until RELEASE exists; it also starts the service.
ct systemd-run --quiet --unit=held-stream --property=Type=simple --uid="$TESTUSER" \
    sh -c "curl -sS -N --max-time 120 -H 'Content-Type: application/json' --data-binary '$HOLD_BODY' -o /tmp/held.out -w '%{http_code}' $BASE/v1/responses >/tmp/held.status 2>&1"
for _ in $(seq 1 100); do
    [ "$(mock_count)" -gt "$before" ] && ct grep -q response.created /tmp/held.out 2>/dev/null && break
    sleep 0.2
done
held_auth=$(mock_field authorization)
MAIN_BEFORE=$(svc_show MainPID)
out=$(ct_in sh -c "$PKG-install-key 2>&1" <<<"$KEY3") && rc=0 || rc=$?
MAIN_AFTER=$(svc_show MainPID)
if [ "$rc" = 0 ] && printf '%s' "$out" | grep -q "now uses the new key" && [ "$MAIN_BEFORE" = "$MAIN_AFTER" ] \
    && [ "$MAIN_AFTER" != 0 ] && ! printf '%s' "$out" | grep -qF "$KEY3"; then
    pass "install-key hands the new key to the running service with systemctl reload (same main PID $MAIN_AFTER)"
else
    fail "install-key hands the new key to the running service with systemctl reload" "rc=$rc pid $MAIN_BEFORE→$MAIN_AFTER out=${out//$KEY3/<KEY3>}"$'\n'"$(journal_unit -n 15)"
fi
req POST /v1/responses "$RESPONSES_BODY"
auth=$(mock_field authorization)
if [ "$RESP_STATUS" = 200 ] && [ "$auth" = "Bearer $KEY3" ]; then
    pass "after the reload a new request reaches the upstream with the new key"
else
    fail "after the reload a new request reaches the upstream with the new key" "status=$RESP_STATUS auth=${auth//$KEY3/<KEY3>}"
fi
if ct systemctl is-active --quiet held-stream.service && ! ct grep -q response.completed /tmp/held.out; then
    pass "the stream started before the reload is still open"
else
    fail "the stream started before the reload is still open" "$(ct cat /tmp/held.out /tmp/held.status 2>&1 | head -n 5)"
fi
ct touch /run/mock-upstream/RELEASE
for _ in $(seq 1 100); do
    ct systemctl is-active --quiet held-stream.service || break
    sleep 0.2
done
if [ "$(ct cat /tmp/held.status 2>/dev/null)" = 200 ] && ct grep -q response.completed /tmp/held.out \
    && ct grep -q 'Hello from the mock upstream' /tmp/held.out && [ "$held_auth" = "Bearer $KEY" ]; then
    pass "the held stream completes intact after the rotation (with the old key upstream)"
else
    fail "the held stream completes intact after the rotation" "status=$(ct cat /tmp/held.status 2>&1) held_auth=${held_auth//$KEY/<KEY>}"$'\n'"$(ct cat /tmp/held.out 2>&1 | head -c 600)"
fi
workers_left=""
for _ in $(seq 1 50); do
    workers_left=$(ct sh -c "cat /proc/$MAIN_AFTER/task/$MAIN_AFTER/children" 2>/dev/null | wc -w)
    [ "$workers_left" = 1 ] && break
    sleep 0.2
done
jr=$(journal_unit)
if [ "$workers_left" = 1 ] && printf '%s\n' "$jr" | grep -q 'key rotated' \
    && printf '%s\n' "$jr" | grep -q 'replaced worker finished'; then
    pass "the replaced worker exits once drained; the journal says 'key rotated'"
else
    fail "the replaced worker exits once drained" "workers=$workers_left"$'\n'"$(journal_unit -n 15)"
fi
perm=$(ct stat -c '%U %a' /run/$PKG/control.sock 2>&1) || true
dperm=$(ct stat -c '%U %a' /run/$PKG 2>&1) || true
out=$(ct_user sh -c "echo sk-user-attempt | $PKG rotate-key" 2>&1) && rc=0 || rc=$?
# The directory is 0755: the metrics socket beside it must be reachable by --metrics-group.
if [ "$perm" = "root 600" ] && [ "$dperm" = "root 755" ] && [ "$rc" = 3 ]; then
    pass "the control socket is root's (0600, in root's 0755 directory); $TESTUSER cannot rotate the key"
else
    fail "the control socket is root's; $TESTUSER cannot rotate the key" "socket=$perm dir=$dperm rc=$rc out=$out"
fi
if out=$(ct systemctl reload "$PKG.service" 2>&1) && [ "$(svc_show MainPID)" = "$MAIN_AFTER" ] \
    && journal_unit -n 20 | grep -c 'the key is unchanged' >/dev/null; then
    pass "systemctl reload with the same key changes nothing"
else
    fail "systemctl reload with the same key changes nothing" "$out"$'\n'"$(journal_unit -n 10)"
fi
KEY1=$KEY
KEY=$KEY3
ct systemctl stop held-stream.service >/dev/null 2>&1 || true

# --------------------------------------------------------------------------
# 15. --plain and --remove
# --------------------------------------------------------------------------
KEY2="sk-plain-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
ct_in sh -c "$PKG-install-key --plain >/dev/null 2>&1" <<<"$KEY2" && rc=0 || rc=$?
req POST /v1/responses "$RESPONSES_BODY"
auth=$(mock_field authorization)
perm=$(ct stat -c '%U %a' /etc/$PKG/openai-api-key 2>&1) || true
if [ "$rc" = 0 ] && [ "$RESP_STATUS" = 200 ] && [ "$auth" = "Bearer $KEY2" ] && [ "$perm" = "root 600" ] \
    && ! ct test -e /etc/$PKG/openai-api-key.cred; then
    pass "install-key --plain replaces the key (root 0600 file, handed to the running service)"
else
    fail "install-key --plain replaces the key" "rc=$rc status=$RESP_STATUS perm=$perm auth=${auth//$KEY2/<KEY2>}"
fi
ct "$PKG-install-key" --remove >/dev/null 2>&1 || true
req POST /v1/responses "$RESPONSES_BODY"
if [ "$RESP_STATUS" = 503 ] && ! ct test -e /etc/$PKG/openai-api-key && ! ct test -e "/etc/systemd/system/$PKG.service.d/50-plain-key.conf"; then
    pass "install-key --remove: key files gone, the service answers 503 again"
else
    fail "install-key --remove: key files gone, the service answers 503 again" "status=$RESP_STATUS"
fi
journal_all=$(ct journalctl --no-pager -o verbose)
if printf '%s\n' "$journal_all" | grep -qF -e "$KEY1" -e "$KEY" -e "$KEY2"; then
    fail "no key appears in the journal after all of the above"
else
    pass "no key appears in the journal after all of the above"
fi

# --------------------------------------------------------------------------
# 16. Purge
# --------------------------------------------------------------------------
log "apt purge"
ct_in sh -c "$PKG-install-key >/dev/null 2>&1" <<<"$KEY" || true
req POST /v1/responses "$RESPONSES_BODY"   # a running service and worker to be removed
if out=$(ct apt-get purge -y "$PKG" 2>&1); then
    pass "apt purge $PKG"
else
    fail "apt purge $PKG" "$out"
fi
left=$(ct sh -c "ls -d /etc/$PKG /var/lib/$PKG /etc/default/$PKG /lib/systemd/system/$PKG.* /etc/systemd/system/$PKG.* /etc/systemd/system/sockets.target.wants/$PKG.socket /usr/lib/sysusers.d/$PKG.conf /usr/bin/$PKG /usr/sbin/$PKG-install-key 2>/dev/null" || true)
if [ -z "$left" ]; then pass "purge leaves no files (key, state, config, units)"; else fail "purge leaves no files" "$left"; fi
if ct getent passwd "$PKG" >/dev/null || ct getent group "$PKG" >/dev/null; then
    fail "purge removes the $PKG user and group"
else
    pass "purge removes the $PKG user and group"
fi
procs=$(ct sh -c "grep -l -E '^Name:.*codex-respons' /proc/[0-9]*/status 2>/dev/null" || true)
if [ -z "$procs" ] && [ "$(svc_show ActiveState)" != active ]; then
    pass "purge leaves no process"
else
    fail "purge leaves no process" "$procs"
fi
if ct_user curl -s -o /dev/null --max-time 5 "$BASE/v1/responses"; then
    fail "nothing listens on 127.0.0.1:$PORT after purge"
else
    pass "nothing listens on 127.0.0.1:$PORT after purge"
fi
