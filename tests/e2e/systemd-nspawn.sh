#!/usr/bin/env bash
# End-to-end test of marketprism-broker under a real systemd.
#
# Boots a minimal Debian bookworm in systemd-nspawn (systemd as PID 1 in the
# container, its own network namespace) and tests the service there, in one
# of two modes:
#
# Binary mode (E2E_DEB unset): installs the daemon binary, the tree's unit,
# sysusers entry, config/broker.yaml and man page by hand, the way a package
# would, with nats-server from the rootfs's local apt archive, and checks:
#   a. `systemctl start` returns 0 only once /health says healthy (Type=notify)
#   b. `systemctl status` shows the daemon's STATUS= text
#   c. the journal tells the daemon's lines (-t marketprism-broker) from
#      nats-server's (-t nats-server)
#   d. `systemctl reload` returns 0 and keeps the same MainPID
#   e. kill -9 of nats-server: the daemon restarts its child within 5 s,
#      systemd does not restart the daemon
#   f. `systemctl stop` returns 0 and leaves no process behind
#   g. `systemd-analyze verify` is clean for the unit; prints the
#      `systemd-analyze security` exposure figure
#
# Package mode (E2E_DEB=path/to/marketprism-broker_<ver>_<arch>.deb): installs
# the package with apt inside the booted container (no network there:
# nats-server, a real dependency, comes from the rootfs's local archive) and
# checks:
#   i0. `apt-get install ./the.deb`: exit 0; the unit is enabled, active and
#       healthy as soon as apt returns; account, conffile, state directory,
#       generated nats-server.conf, man page, examples; nats-server pulled in
#       as a dependency
#   a-g as above, against the installed package (a restarts the running unit)
#   i1. upgrade to a repacked higher version: a locally edited conffile is
#       kept without a prompt, the service is restarted and healthy, streams
#       and stored messages survive
#   i2. `apt-get remove`: nothing left running; conffile, state and account
#       stay
#   i3. `apt-get purge`: conffile and state gone, the account stays
# Debian's own nats-server.service is masked before anything is installed, so
# it never takes port 4222.
#
# Runs as root on Debian 12; installs debootstrap and systemd-container when
# missing. Usage:
#   tests/e2e/systemd-nspawn.sh
#   E2E_DEB=../marketprism-broker_0.1.0_amd64.deb tests/e2e/systemd-nspawn.sh
# Environment:
#   E2E_DEB          the package to test (package mode); unset: binary mode
#   MPB_BINARY       binary mode: daemon binary
#                    (default: <repo>/target/release/marketprism-broker)
#   E2E_CACHE        where the pristine rootfs is kept between runs
#                    (default: /var/cache/marketprism-broker-e2e)
#   E2E_REFRESH=1    rebuild the cached rootfs
#   E2E_KEEP_GOING=1 run every check even after a failure (default: stop at
#                    the first one); the exit status is non-zero either way
#   E2E_MIRROR       Debian mirror for debootstrap (default: debootstrap's own)
#   E2E_TMPFS=0      copy the working rootfs onto disk instead of a tmpfs
#
# The cached rootfs is debootstrap's minbase plus systemd, dbus, procps and
# man-db (systemd-analyze verify runs man(1) for Documentation=man:...), with
# apt's package lists and nats-server's .deb (and whatever it needs) in
# /var/cache/apt/archives, fetched while the cache is built; the container
# itself has no network.
#
# Works on a host without systemd as PID 1 and with the cgroup v1 "hybrid"
# layout (name=systemd v1 hierarchy + cgroup2 at /sys/fs/cgroup/unified):
# nspawn is started from a cgroup of its own, and commands are run inside the
# container with nsenter (systemctl -M needs a host systemd).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

E2E_DEB=${E2E_DEB:-}
MPB_BINARY=${MPB_BINARY:-$REPO_ROOT/target/release/marketprism-broker}
E2E_CACHE=${E2E_CACHE:-/var/cache/marketprism-broker-e2e}
E2E_REFRESH=${E2E_REFRESH:-0}
E2E_KEEP_GOING=${E2E_KEEP_GOING:-0}
E2E_MIRROR=${E2E_MIRROR:-}
E2E_TMPFS=${E2E_TMPFS:-1}

readonly SUITE=bookworm
readonly INCLUDE=systemd,systemd-sysv,dbus,procps,man-db
# Downloaded into the rootfs's /var/cache/apt/archives, not installed.
readonly ARCHIVED=nats-server
# Changes whenever the way the cache is built changes.
readonly CACHE_RECIPE="include=$INCLUDE archived=$ARCHIVED apt-lists"
readonly PKG=marketprism-broker
readonly UNIT=$PKG.service
readonly CONF=/etc/marketprism-broker/broker.yaml
readonly STATE_DIR=/var/lib/marketprism-broker
readonly CT_DEB_DIR=/var/tmp/mpb-e2e  # where the .debs are put in the container
readonly HTTP_PORT=8085          # config/broker.yaml
readonly CT_PATH=/usr/sbin:/usr/bin:/sbin:/bin
if [[ -n $E2E_DEB ]]; then
    readonly MODE=package
    readonly UNIT_PATH=/lib/systemd/system/$UNIT   # as shipped by the package
else
    readonly MODE=binary
    readonly UNIT_PATH=/etc/systemd/system/$UNIT   # as installed by hand
fi

# Run state, read by cleanup.
PRISTINE=""       # the cached rootfs
RUN_DIR=""        # per-run folder: rootfs/ and nspawn.log
ROOTFS=""
NSPAWN_PID=""
CT_PID=""         # the container's PID 1 (systemd), as seen from the host
CGROUP_DIRS=()

# Results and timings.
T0=${EPOCHREALTIME/./}
PHASES=()
RESULTS=()
PASSED=0
FAILED=0
ROOTFS_SOURCE="?"
CURRENT_PHASE=""
PHASE_START=0
INTERRUPTED=""
EXPOSURE="?"
DEB_VERSION=""    # package mode: the version of E2E_DEB
DEB_NAME=""       # ... and its file name

# --- helpers -----------------------------------------------------------------

now_us() { echo "${EPOCHREALTIME/./}"; }

# fmt_us MICROSECONDS -> "12.3s"
fmt_us() { printf '%d.%01ds' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); }

log() { printf '[e2e +%s] %s\n' "$(fmt_us $(($(now_us) - T0)))" "$*"; }

die() {
    printf '[e2e] ERROR: %s\n' "$*" >&2
    exit 1
}

# phase NAME FUNCTION: runs FUNCTION and records how long it took.
phase() {
    local name=$1 fn=$2
    CURRENT_PHASE=$name
    PHASE_START=$(now_us)
    log "== $name"
    "$fn"
    PHASES+=("$name $(($(now_us) - PHASE_START))")
    CURRENT_PHASE=""
}

# in_ct CMD...: run CMD inside the container, with a clean environment.
in_ct() {
    nsenter -t "$CT_PID" -a env -i PATH="$CT_PATH" LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# http_get PATH: the raw HTTP/1.0 response of the daemon's API, from inside
# the container (which has no curl).
http_get() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    in_ct timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$2" >&3
        cat <&3' _ "$HTTP_PORT" "$1"
}

# http_post_json PATH BODY: the raw response to a POST of the JSON BODY.
http_post_json() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    in_ct timeout 5 env LC_ALL=C bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf "POST %s HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" \
            "$2" "${#3}" "$3" >&3
        cat <&3' _ "$HTTP_PORT" "$1" "$2"
}

# http_code RESPONSE: its status code.
http_code() {
    local first=${1%%$'\n'*}
    first=${first#* }
    echo "${first%% *}"
}

# apt_ct ARGS...: apt-get inside the container, non-interactive, with no
# standard input (a dpkg prompt fails instead of waiting).
apt_ct() {
    in_ct env DEBIAN_FRONTEND=noninteractive apt-get "$@" </dev/null
}

health_ok() {
    local body
    body=$(http_get /health 2>/dev/null || true)
    [[ $body == *'"status":"healthy"'* ]]
}

unit_prop() { in_ct systemctl show -p "$1" --value "$UNIT"; }

# The nats-server process whose parent is the daemon (container pid).
child_pid() {
    local main
    main=$(unit_prop MainPID)
    [[ $main != 0 ]] || return 1
    in_ct pgrep -P "$main" -x nats-server
}

ok() { printf '      ok: %s\n' "$*"; }

# fail_check MESSAGE: ends the running check (they run in a subshell).
fail_check() {
    printf '      FAILED: %s\n' "$*"
    exit 1
}

diagnostics() {
    echo "---- systemctl status $UNIT"
    in_ct systemctl status --no-pager -l "$UNIT" 2>&1 || true
    echo "---- journalctl -u $UNIT | tail -80"
    in_ct journalctl -u "$UNIT" --no-pager 2>&1 | tail -80 || true
    echo "----"
}

# run_check ID DESCRIPTION FUNCTION
run_check() {
    local id=$1 desc=$2 fn=$3 rc start
    start=$(now_us)
    log "-- check $id: $desc"
    set +e
    (
        set -eE
        trap 'printf "      FAILED: command failed (exit %s): %s\n" "$?" "$BASH_COMMAND"' ERR
        "$fn"
    )
    rc=$?
    set -e
    local took
    took=$(fmt_us $(($(now_us) - start)))
    if ((rc == 0)); then
        PASSED=$((PASSED + 1))
        RESULTS+=("PASS  $id. $desc ($took)")
        echo "PASS  $id. $desc ($took)"
    else
        FAILED=$((FAILED + 1))
        RESULTS+=("FAIL  $id. $desc ($took)")
        echo "FAIL  $id. $desc ($took)"
        diagnostics
        return 1
    fi
}

# umount_under DIR: lazily unmount whatever is mounted at or below DIR
# (debootstrap mounts /proc and /sys in its target; an interrupted run can
# leave them).
umount_under() {
    local dir=$1 m
    [[ -n $dir ]] || return 0
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
        sort -r | while read -r m; do umount -l "$m" || true; done
}

# --- phases ------------------------------------------------------------------

host_tools() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        local out
        if ! out=$(apt-get update -qq 2>&1 &&
            apt-get install -y -qq --no-install-recommends debootstrap systemd-container 2>&1); then
            echo "$out" | tail -20 >&2
            die "apt-get install failed"
        fi
    fi
    local t
    for t in debootstrap systemd-nspawn nsenter setsid flock; do
        command -v "$t" >/dev/null || die "$t not found"
    done
    [[ -x $MPB_BINARY ]] || die "no daemon binary at $MPB_BINARY (cargo build --release, or set MPB_BINARY)"
    [[ -d /sys/fs/cgroup/systemd || -d /sys/fs/cgroup/unified || -f /sys/fs/cgroup/cgroup.procs ]] ||
        die "no usable cgroup hierarchy under /sys/fs/cgroup"
    log "binary: $MPB_BINARY ($("$MPB_BINARY" --version 2>&1 | head -1))"
}

# The pristine rootfs, built once by debootstrap and kept in E2E_CACHE.
cached_rootfs() {
    local key pristine
    key=$(printf '%s %s' "$SUITE" "$INCLUDE" | sha256sum | cut -c1-12)
    pristine=$E2E_CACHE/$SUITE-minbase-$key
    PRISTINE=$pristine
    mkdir -p "$E2E_CACHE"
    (
        flock 9
        # Left by a killed run (debootstrap may have left /proc mounted).
        local stale
        for stale in "$E2E_CACHE"/build.*; do
            [[ -d $stale ]] || continue
            umount_under "$stale"
            rm -rf --one-file-system "$stale"
        done
        if [[ $E2E_REFRESH == 1 && -d $pristine ]]; then
            log "E2E_REFRESH=1: dropping $pristine"
            rm -rf --one-file-system "$pristine"
        fi
        [[ -d $pristine ]] && exit 0
        local build
        build=$(mktemp -d "$E2E_CACHE/build.XXXXXX")
        # shellcheck disable=SC2064 # $build is fixed by now
        trap "umount_under '$build'; rm -rf --one-file-system '$build'" EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        log "debootstrap $SUITE into $build (about a minute)"
        local args=(--variant=minbase "--include=$INCLUDE" "$SUITE" "$build/rootfs")
        [[ -n $E2E_MIRROR ]] && args+=("$E2E_MIRROR")
        if ! timeout 420 debootstrap "${args[@]}" >"$build/debootstrap.log" 2>&1; then
            tail -30 "$build/debootstrap.log" >&2
            [[ -f $build/rootfs/debootstrap/debootstrap.log ]] &&
                tail -30 "$build/rootfs/debootstrap/debootstrap.log" >&2
            die "debootstrap failed"
        fi
        # Older caches (another package list) are of no further use.
        find "$E2E_CACHE" -mindepth 1 -maxdepth 1 -name "$SUITE-minbase-*" \
            -exec rm -rf --one-file-system {} +
        mv "$build/rootfs" "$pristine"
        touch "$E2E_CACHE/.built-$key"
    ) 9>"$E2E_CACHE/.lock"
    if [[ -f $E2E_CACHE/.built-$key ]]; then
        ROOTFS_SOURCE="debootstrap (cached as $pristine)"
        rm -f "$E2E_CACHE/.built-$key"
    else
        ROOTFS_SOURCE="cache ($pristine)"
    fi
}

# A fresh copy of it per run, so that each run starts clean. On a tmpfs of
# its own by default: cp -a of the ~250 MB, 8000 files onto this machine's
# ext4 took 5-10 s of system time, onto tmpfs 0.6 s.
copy_rootfs() {
    reap_killed_runs
    RUN_DIR=$(mktemp -d "$E2E_CACHE/run.$$.XXXXXX")
    ROOTFS=$RUN_DIR/rootfs
    mkdir "$ROOTFS"
    local where="disk"
    if [[ $E2E_TMPFS == 1 ]] && mount -t tmpfs -o mode=0755,size=2g tmpfs "$ROOTFS"; then
        where="tmpfs"
    fi
    log "copying $PRISTINE to $ROOTFS ($where)"
    cp -a --reflink=auto "$PRISTINE/." "$ROOTFS/"
}

# Install the daemon like a package would, while the container is down.
install_broker() {
    install -m 0755 "$MPB_BINARY" "$ROOTFS/usr/bin/marketprism-broker"
    install -m 0644 "$REPO_ROOT/systemd/marketprism-broker.service" "$ROOTFS$UNIT_PATH"
    install -D -m 0644 "$REPO_ROOT/systemd/marketprism-broker.sysusers" \
        "$ROOTFS/usr/lib/sysusers.d/marketprism-broker.conf"
    chroot "$ROOTFS" systemd-sysusers /usr/lib/sysusers.d/marketprism-broker.conf
    install -d -m 0755 "$ROOTFS/etc/marketprism-broker"
    install -m 0640 "$REPO_ROOT/config/broker.yaml" "$ROOTFS/etc/marketprism-broker/broker.yaml"
    chroot "$ROOTFS" chown root:marketprism-broker /etc/marketprism-broker/broker.yaml
    # Debian's nats-server package enables its own unit on port 4222.
    chroot "$ROOTFS" systemctl --quiet disable nats-server.service
    chroot "$ROOTFS" systemctl --quiet mask nats-server.service
    # Ours is started explicitly by check a, so that `systemctl start` is
    # the real start.
    log "installed: $(chroot "$ROOTFS" id marketprism-broker)"
}

# Create a cgroup for nspawn in every hierarchy it uses, so that it does not
# put its supervisor/payload groups at the hierarchy's root.
make_cgroups() {
    local name=mpb-e2e-$$ h
    if [[ -d /sys/fs/cgroup/systemd || -d /sys/fs/cgroup/unified ]]; then
        for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
            [[ -d $h ]] && CGROUP_DIRS+=("$h/$name")
        done
    else
        CGROUP_DIRS+=("/sys/fs/cgroup/$name")
    fi
    for h in "${CGROUP_DIRS[@]}"; do mkdir "$h"; done
}

boot() {
    make_cgroups
    local log_file=$RUN_DIR/nspawn.log
    (
        for cg in "${CGROUP_DIRS[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
        [[ -d /sys/fs/cgroup/unified ]] && export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
        exec setsid systemd-nspawn -D "$ROOTFS" -b --register=no --keep-unit \
            --private-network --console=pipe </dev/null >"$log_file" 2>&1
    ) &
    NSPAWN_PID=$!
    local deadline=$(($(now_us) + 30000000)) pid
    while [[ -z $CT_PID ]]; do
        kill -0 "$NSPAWN_PID" 2>/dev/null || { tail -40 "$log_file" >&2; die "systemd-nspawn exited"; }
        for pid in $(pgrep -P "$NSPAWN_PID" || true); do
            [[ $(cat "/proc/$pid/comm" 2>/dev/null) == systemd ]] && CT_PID=$pid
        done
        (($(now_us) < deadline)) || { tail -40 "$log_file" >&2; die "no systemd in the container after 30 s"; }
        [[ -n $CT_PID ]] || sleep 0.05
    done
    [[ $(cat "/proc/$NSPAWN_PID/comm") == systemd-nspawn ]] ||
        die "pid $NSPAWN_PID is not systemd-nspawn (did setsid fork?)"
    log "nspawn pid $NSPAWN_PID, container systemd pid $CT_PID"
    local state=""
    deadline=$(($(now_us) + 60000000))
    until [[ $state == running || $state == degraded ]]; do
        (($(now_us) < deadline)) || { tail -40 "$log_file" >&2; die "container not up after 60 s (state: $state)"; }
        sleep 0.1
        state=$(in_ct systemctl is-system-running 2>/dev/null || true)
    done
    log "container systemd is $state ($(in_ct systemctl --version | head -1))"
    if [[ $state == degraded ]]; then
        in_ct systemctl --failed --no-pager --no-legend || true
    fi
}

# --- checks ------------------------------------------------------------------

check_start() {
    local rc=0
    in_ct timeout 120 systemctl start "$UNIT" || rc=$?
    # Probed at once, no retry: READY=1 must mean healthy.
    local active health
    active=$(unit_prop ActiveState)
    health=$(http_get /health 2>&1 || true)
    ((rc == 0)) || fail_check "systemctl start exited $rc"
    ok "systemctl start returned 0"
    [[ $active == active ]] || fail_check "ActiveState=$active right after start"
    ok "ActiveState=active right after start"
    grep -q '"status":"healthy"' <<<"$health" ||
        fail_check "/health right after start: $(tail -1 <<<"$health")"
    ok "/health at once: $(grep -o '"status":"[a-z]*"' <<<"$health")"
}

check_status() {
    local status child
    status=$(in_ct systemctl status --no-pager "$UNIT" || true)
    child=$(child_pid)
    local line
    line=$(grep -E '^ *Status: ' <<<"$status" || true)
    [[ -n $line ]] || fail_check "no Status: line in systemctl status"
    ok "${line#"${line%%[! ]*}"}"
    grep -qE "Status: \"nats-server pid $child healthy, [0-9]+ streams" <<<"$line" ||
        fail_check "expected 'nats-server pid $child healthy, N streams'"
    ok "names the running nats-server (pid $child)"
}

# journal_has IDENTIFIER TEXT: a line of the unit's journal logged under
# SYSLOG_IDENTIFIER=IDENTIFIER contains TEXT (waits up to 5 s: stream logging
# may lag).
journal_has() {
    local _ lines
    for _ in $(seq 50); do
        lines=$(in_ct journalctl -u "$UNIT" -t "$1" -o cat --no-pager 2>/dev/null || true)
        [[ $lines == *"$2"* ]] && return 0
        sleep 0.1
    done
    return 1
}

check_journal() {
    journal_has marketprism-broker "ready:" ||
        fail_check "no line with 'ready:' under journalctl -u $UNIT -t marketprism-broker"
    ok "-t marketprism-broker has the daemon's 'ready:' line"
    if ! journal_has nats-server "Server is ready"; then
        echo "      identifiers seen in the unit's journal:"
        in_ct journalctl -u "$UNIT" -o verbose --no-pager | grep -o 'SYSLOG_IDENTIFIER=.*' |
            sort | uniq -c | sed 's/^/        /'
        fail_check "no line with 'Server is ready' under journalctl -u $UNIT -t nats-server"
    fi
    ok "-t nats-server has nats-server's 'Server is ready' line"
    local own
    own=$(in_ct journalctl -u "$UNIT" -t marketprism-broker -o cat --no-pager)
    [[ $own != *"Server is ready"* ]] ||
        fail_check "nats-server's lines are (also) logged as marketprism-broker"
    ok "nats-server's lines are not logged as marketprism-broker"
}

check_reload() {
    local before after rc=0
    before=$(unit_prop MainPID)
    in_ct timeout 60 systemctl reload "$UNIT" || rc=$?
    after=$(unit_prop MainPID)
    ((rc == 0)) || fail_check "systemctl reload exited $rc"
    ok "systemctl reload returned 0"
    [[ $(unit_prop ActiveState) == active ]] || fail_check "not active after reload"
    [[ $after == "$before" ]] || fail_check "MainPID changed: $before -> $after"
    ok "still active, same MainPID $after"
    health_ok || fail_check "/health not healthy after reload"
    ok "/health healthy after reload"

    # A broken config: the reload fails, saying why, and changes nothing.
    local conf=/etc/marketprism-broker/broker.yaml out
    in_ct cp -p "$conf" "$conf.good"
    in_ct sed -i 's/^port: 8085/port: 8085\nprot: 1/' "$conf"
    rc=0
    out=$(in_ct timeout 60 systemctl reload "$UNIT" 2>&1) || rc=$?
    in_ct mv "$conf.good" "$conf"
    ((rc != 0)) || fail_check "systemctl reload of a broken config exited 0"
    ok "systemctl reload of a broken config failed (exit $rc)"
    [[ $(unit_prop StatusText) == *"reload failed"*"prot"* ]] ||
        fail_check "STATUS does not say the reload failed: $(unit_prop StatusText); $out"
    ok "STATUS says: $(unit_prop StatusText)"
    [[ $(unit_prop MainPID) == "$before" && $(unit_prop ActiveState) == active ]] ||
        fail_check "the daemon did not keep running after a refused reload"
    health_ok || fail_check "/health not healthy after a refused reload"
    ok "still active and healthy on the previous config"
    in_ct timeout 60 systemctl reload "$UNIT" || fail_check "reload after restoring the config failed"
}

check_child_restart() {
    local main restarts old new=""
    main=$(unit_prop MainPID)
    restarts=$(unit_prop NRestarts)
    old=$(child_pid)
    in_ct kill -KILL "$old"
    ok "kill -9 nats-server pid $old"
    local start healthy=0
    start=$(now_us)
    while :; do
        new=$(child_pid 2>/dev/null || true)
        if [[ -n $new && $new != "$old" ]] && health_ok; then
            healthy=1
            break
        fi
        (($(now_us) - start < 5000000)) || break
        sleep 0.05
    done
    local took
    took=$(fmt_us $(($(now_us) - start)))
    ((healthy)) || fail_check "after 5 s: nats-server pid '${new}' (was $old), /health: $(http_get /health 2>&1 | tail -1)"
    ok "new nats-server pid $new, /health healthy after $took"
    [[ $(unit_prop ActiveState) == active ]] || fail_check "unit not active"
    [[ $(unit_prop MainPID) == "$main" ]] || fail_check "MainPID changed: $main -> $(unit_prop MainPID)"
    [[ $(unit_prop NRestarts) == "$restarts" ]] || fail_check "systemd restarted the unit"
    ok "unit active, same MainPID $main, NRestarts=$restarts"
}

check_stop() {
    local rc=0
    in_ct timeout 60 systemctl stop "$UNIT" || rc=$?
    ((rc == 0)) || fail_check "systemctl stop exited $rc"
    ok "systemctl stop returned 0"
    local left
    left=$(in_ct pgrep -a -f '(^|/)(marketprism-broker|nats-server)( |$)' || true)
    [[ -z $left ]] || fail_check "processes left: $left"
    ok "no marketprism-broker or nats-server process left"
    local state result
    state=$(unit_prop ActiveState)
    result=$(unit_prop Result)
    [[ $state == inactive && $result == success ]] || fail_check "ActiveState=$state Result=$result"
    ok "ActiveState=inactive Result=success"
}

check_analyze() {
    local err rc=0 line
    err=$(in_ct systemd-analyze verify "$UNIT_PATH" 2>&1 >/dev/null) || rc=$?
    [[ -z $err ]] || while IFS= read -r line; do echo "      verify: $line"; done <<<"$err"
    local ours
    ours=$(grep -F "$UNIT" <<<"$err" || true)
    if grep -q "Command 'man " <<<"$ours"; then
        echo "      note: Documentation=man:... is checked by running man(1); this rootfs has no"
        echo "            man-db and the repo ships no such page"
    fi
    local sec
    sec=$(in_ct systemd-analyze security --offline=yes "$UNIT_PATH" 2>&1 || true)
    EXPOSURE=$(grep -o 'Overall exposure level for .*' <<<"$sec" | sed 's/.*: //' || true)
    grep -E '^✗' <<<"$sec" | sed 's/  */ /g; s/^/      exposed: /' || true
    echo "      systemd-analyze security --offline=yes: overall exposure ${EXPOSURE:-?}"
    echo "${EXPOSURE:-?}" >"$RUN_DIR/exposure" # checks run in a subshell
    local online
    online=$(in_ct systemd-analyze security "$UNIT" 2>&1 | grep -o 'Overall exposure level for .*' | sed 's/.*: //' || true)
    echo "      systemd-analyze security (loaded unit): overall exposure ${online:-?}"
    ((rc == 0)) || fail_check "systemd-analyze verify exited $rc"
    [[ -z $ours ]] || fail_check "systemd-analyze verify complains about $UNIT"
    ok "systemd-analyze verify: exit 0, nothing about $UNIT"
}

checks() {
    local c
    for c in \
        "a|systemctl start: active and healthy at once (READY only when healthy)|check_start" \
        "b|systemctl status shows the daemon's STATUS text|check_status" \
        "c|journal: daemon and nats-server lines under their own identifiers|check_journal" \
        "d|systemctl reload: exit 0, same MainPID; a broken config fails it and changes nothing|check_reload" \
        "e|kill -9 nats-server: the daemon restarts it within 5 s|check_child_restart" \
        "f|systemctl stop: exit 0, nothing left|check_stop" \
        "g|systemd-analyze verify clean; security exposure|check_analyze"; do
        IFS='|' read -r id desc fn <<<"$c"
        if ((FAILED > 0)) && [[ $E2E_KEEP_GOING != 1 ]]; then
            RESULTS+=("SKIP  $id. $desc")
            continue
        fi
        if ! run_check "$id" "$desc" "$fn" && [[ $E2E_KEEP_GOING != 1 ]]; then
            log "stopping at the first failure (E2E_KEEP_GOING=1 runs the rest)"
        fi
    done
}

# --- teardown and summary ----------------------------------------------------

# remove_cgroups DIR...: SIGKILL whatever is left in these cgroups (a killed
# nspawn leaves its payload running), then remove them.
remove_cgroups() {
    local cg pid _ left
    for _ in $(seq 50); do
        left=0
        for cg in "$@"; do
            [[ -d $cg ]] || continue
            while read -r pid; do
                left=1
                kill -KILL "$pid" 2>/dev/null || true
            done < <(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)
        done
        ((left)) || break
        sleep 0.1
    done
    for cg in "$@"; do
        [[ -d $cg ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
        [[ -d $cg ]] && log "warning: could not remove cgroup $cg"
    done
    return 0
}

# What a run killed with SIGKILL leaves (its cgroups mpb-e2e-PID with the
# container still running, its folder run.PID.* with the tmpfs mounted),
# for a PID that no longer exists.
reap_killed_runs() {
    local path pid
    for path in /sys/fs/cgroup/*/mpb-e2e-* /sys/fs/cgroup/mpb-e2e-* "$E2E_CACHE"/run.*.*; do
        [[ -d $path ]] || continue
        pid=${path##*/}
        pid=${pid#mpb-e2e-}
        pid=${pid#run.}
        pid=${pid%%.*}
        [[ $pid =~ ^[0-9]+$ ]] || continue
        ! kill -0 "$pid" 2>/dev/null || continue
        log "removing $path, left by killed run $pid"
        if [[ $path == /sys/fs/cgroup/* ]]; then
            remove_cgroups "$path"
        else
            umount_under "$path"
            rm -rf --one-file-system "$path"
        fi
    done
}

stop_container() {
    if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        local _
        for _ in $(seq 300); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$NSPAWN_PID" 2>/dev/null; then
            log "nspawn still running after 30 s: SIGKILL"
            kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        fi
        wait "$NSPAWN_PID" 2>/dev/null || true
    fi
    NSPAWN_PID=""
    remove_cgroups "${CGROUP_DIRS[@]}"
    CGROUP_DIRS=()
}

remove_rootfs() {
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        umount_under "$RUN_DIR"
        rm -rf --one-file-system "$RUN_DIR"
    fi
    RUN_DIR=""
}

teardown() {
    stop_container
    remove_rootfs
}

summary() {
    echo
    echo "==== systemd-nspawn e2e summary"
    echo "binary:  $MPB_BINARY"
    echo "rootfs:  $ROOTFS_SOURCE"
    local r p
    for r in "${RESULTS[@]}"; do echo "$r"; done
    echo "systemd-analyze security --offline=yes exposure: $EXPOSURE"
    echo "timings:"
    for p in "${PHASES[@]}"; do
        printf '  %-12s %s\n' "${p% *}" "$(fmt_us "${p##* }")"
    done
    printf '  %-12s %s\n' total "$(fmt_us $(($(now_us) - T0)))"
    [[ -z $INTERRUPTED ]] || echo "interrupted by $INTERRUPTED${CURRENT_PHASE:+ in phase $CURRENT_PHASE}"
    [[ -n $INTERRUPTED || -z $CURRENT_PHASE ]] || echo "aborted in phase $CURRENT_PHASE"
    echo "e2e: $PASSED passed, $FAILED failed"
}

on_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $RUN_DIR && -f $RUN_DIR/exposure ]] && EXPOSURE=$(<"$RUN_DIR/exposure")
    if [[ -n $CURRENT_PHASE ]]; then
        PHASES+=("$CURRENT_PHASE $(($(now_us) - PHASE_START))")
    fi
    local start
    start=$(now_us)
    teardown
    PHASES+=("teardown $(($(now_us) - start))")
    summary
    if ((rc == 0 && FAILED > 0)); then rc=1; fi
    ((rc == 0 && PASSED == 0)) && rc=1
    exit "$rc"
}

main() {
    trap on_exit EXIT
    trap 'INTERRUPTED=SIGINT; exit 130' INT
    trap 'INTERRUPTED=SIGTERM; exit 143' TERM
    phase host host_tools
    phase debootstrap cached_rootfs
    phase copy copy_rootfs
    phase install install_broker
    phase boot boot
    phase checks checks
}

main "$@"
