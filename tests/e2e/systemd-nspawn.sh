#!/usr/bin/env bash
# End-to-end test of marketprism-broker under a real systemd.
#
# Boots a minimal Debian bookworm (or, with E2E_SUITE=trixie, Debian 13) in
# systemd-nspawn (systemd as PID 1 in the container, its own network
# namespace) and tests the service there, in one of two modes:
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
#   a-g as above, against the installed package (a restarts the running unit,
#       while a loop inside asks GET /health on a new connection every 20 ms:
#       none may be refused, the socket waits in systemd's fd store)
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
#   E2E_SUITE        the container's Debian release, with its own
#                    nats-server: bookworm (default, 2.9.10) or trixie (2.10.27)
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

T0=${EPOCHREALTIME/./}
# The rootfs cache, containers, phases and checks (and the E2E_* defaults).
# shellcheck source=tests/e2e/lib.sh
. "$SCRIPT_DIR/lib.sh"

readonly CONF=/etc/marketprism-broker/broker.yaml
readonly STATE_DIR=/var/lib/marketprism-broker
readonly HTTP_PORT=8085          # config/broker.yaml
if [[ -n $E2E_DEB ]]; then
    readonly MODE=package
    readonly UNIT_PATH=/lib/systemd/system/$UNIT   # as shipped by the package
else
    readonly MODE=binary
    readonly UNIT_PATH=/etc/systemd/system/$UNIT   # as installed by hand
fi

# Run state, read by cleanup.
RUN_DIR=""        # per-run folder: rootfs/ and nspawn.log
ROOTFS=""

# Results.
INTERRUPTED=""
EXPOSURE="?"
DEB_VERSION=""    # package mode: the version of E2E_DEB
DEB_NAME=""       # ... and its file name

# --- helpers -----------------------------------------------------------------

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

diagnostics() {
    echo "---- systemctl status $UNIT"
    in_ct systemctl status --no-pager -l "$UNIT" 2>&1 || true
    echo "---- journalctl -u $UNIT | tail -80"
    in_ct journalctl -u "$UNIT" --no-pager 2>&1 | tail -80 || true
    echo "----"
}

# --- phases ------------------------------------------------------------------

host_tools() {
    ensure_host_tools
    if [[ $MODE == package ]]; then
        check_deb
        log "package: $E2E_DEB ($PKG $DEB_VERSION, $(dpkg-deb -f "$E2E_DEB" Architecture))"
    else
        [[ -x $MPB_BINARY ]] || die "no daemon binary at $MPB_BINARY (cargo build --release, or set MPB_BINARY)"
        log "binary: $MPB_BINARY ($("$MPB_BINARY" --version 2>&1 | head -1))"
    fi
}

# A fresh copy of it per run (on a tmpfs, see new_rootfs).
copy_rootfs() {
    reap_killed_runs
    RUN_DIR=$(mktemp -d "$E2E_CACHE/run.$$.XXXXXX")
    ROOTFS=$RUN_DIR/rootfs
    new_rootfs "$ROOTFS"
}

# Binary mode: install the daemon like a package would, while the container
# is down.
install_broker() {
    mask_nats_unit "$ROOTFS"
    # nats-server from the rootfs's local archive (no network needed).
    local out
    if ! out=$(chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-download nats-server </dev/null 2>&1); then
        echo "$out" | tail -20 >&2
        die "apt-get install nats-server in the rootfs failed"
    fi
    chroot "$ROOTFS" systemctl --quiet disable nats-server.service
    install -m 0755 "$MPB_BINARY" "$ROOTFS/usr/bin/marketprism-broker"
    install -m 0644 "$REPO_ROOT/systemd/marketprism-broker.service" "$ROOTFS$UNIT_PATH"
    install -D -m 0644 "$REPO_ROOT/systemd/marketprism-broker.sysusers" \
        "$ROOTFS/usr/lib/sysusers.d/marketprism-broker.conf"
    chroot "$ROOTFS" systemd-sysusers /usr/lib/sysusers.d/marketprism-broker.conf
    install -d -m 0755 "$ROOTFS/etc/marketprism-broker"
    install -m 0640 "$REPO_ROOT/config/broker.yaml" "$ROOTFS$CONF"
    chroot "$ROOTFS" chown root:marketprism-broker "$CONF"
    # The unit's Documentation=man:marketprism-broker(8), for check g.
    install -d -m 0755 "$ROOTFS/usr/share/man/man8"
    gzip -9n <"$REPO_ROOT/doc/marketprism-broker.8" >"$ROOTFS/usr/share/man/man8/marketprism-broker.8.gz"
    # Ours is started explicitly by check a, so that `systemctl start` is
    # the real start.
    log "installed: $(chroot "$ROOTFS" id marketprism-broker); $(chroot "$ROOTFS" dpkg-query -W nats-server)"
}

# Package mode: only put the .deb into the rootfs; check i0 installs it with
# apt in the running container.
stage_package() {
    mask_nats_unit "$ROOTFS"
    install -m 0644 "$E2E_DEB" "$ROOTFS$CT_DEB_DIR/$DEB_NAME"
    log "staged $CT_DEB_DIR/$DEB_NAME; nats-server.service masked"
}

# probe_http_during CMD...: runs CMD while, inside the container, a loop
# asks GET /health on a new connection every 20 ms; prints "ANSWERED
# UNANSWERED" (a refused, reset or silent connection is unanswered).
probe_http_during() {
    local out="$RUN_DIR/prober.out" rc=0
    in_ct rm -f /run/mpb-prober.stop
    # shellcheck disable=SC2016 # expanded by the inner bash
    in_ct bash -c '
        answered=0 unanswered=0
        while [ ! -e /run/mpb-prober.stop ]; do
            if (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET /health HTTP/1.0\r\n\r\n" >&3 &&
                timeout 15 head -c 9 <&3) 2>/dev/null | grep -q "^HTTP/1"; then
                answered=$((answered + 1))
            else
                unanswered=$((unanswered + 1))
            fi
            sleep 0.02
        done
        echo "$answered $unanswered"' _ "$HTTP_PORT" >"$out" &
    local prober=$!
    sleep 0.5
    "$@" || rc=$?
    sleep 0.5
    in_ct touch /run/mpb-prober.stop
    wait "$prober" || true
    cat "$out"
    return $rc
}

boot() {
    boot_container "mpb-e2e-$$" "$ROOTFS" "$RUN_DIR/nspawn.log" --private-network
}

# --- checks ------------------------------------------------------------------

# The package started the unit when it was installed: there check a
# restarts it.
check_start() {
    local verb=start rc=0 before=""
    if [[ $MODE == package ]]; then
        verb=restart
        before=$(unit_prop MainPID)
    fi
    local probed=""
    if [[ $verb == restart ]]; then
        # No refused connection while the daemon restarts: the HTTP socket
        # waits in systemd's fd store (FDSTORE=1) for the next daemon.
        probed=$(probe_http_during in_ct timeout 120 systemctl "$verb" "$UNIT") || rc=$?
    else
        in_ct timeout 120 systemctl "$verb" "$UNIT" || rc=$?
    fi
    # Probed at once, no retry: READY=1 must mean healthy.
    local active health
    active=$(unit_prop ActiveState)
    health=$(http_get /health 2>&1 || true)
    ((rc == 0)) || fail_check "systemctl $verb exited $rc"
    ok "systemctl $verb returned 0"
    [[ $active == active ]] || fail_check "ActiveState=$active right after $verb"
    ok "ActiveState=active right after $verb"
    grep -q '"status":"healthy"' <<<"$health" ||
        fail_check "/health right after $verb: $(tail -1 <<<"$health")"
    ok "/health at once: $(grep -o '"status":"[a-z]*"' <<<"$health")"
    if [[ -n $probed ]]; then
        local answered unanswered
        read -r answered unanswered <<<"$probed"
        ((answered > 0 && unanswered == 0)) ||
            fail_check "HTTP during the restart: $answered connections answered, $unanswered refused or unanswered"
        ok "HTTP during the restart: all $answered connections answered (the socket stayed in systemd's fd store)"
    fi
    if [[ -n $before ]]; then
        local after
        after=$(unit_prop MainPID)
        [[ $after != "$before" ]] || fail_check "MainPID $after unchanged by restart"
        ok "new MainPID $after (was $before)"
    fi
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
        echo "      note: Documentation=man:... is checked by running man(1) (man-db is in the"
        echo "            rootfs): the page is not installed, or man cannot read it"
    fi
    local docs
    docs=$(unit_prop Documentation)
    echo "      Documentation=${docs:-(none)} in the unit under test ($UNIT_PATH)"
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

# --- package checks ------------------------------------------------------------

# stat_is PATH "MODE OWNER[ GROUP]": PATH's octal mode, owner and group.
stat_is() {
    local got want=$2
    got=$(in_ct stat -c '%a %U %G' "$1") || fail_check "$1 does not exist"
    [[ "$got " == "$want "* ]] || fail_check "$1 is '$got', not '$want'"
    ok "$1: $got"
}

# stream_messages NAME: the "messages" count of GET /api/v1/streams/NAME.
stream_messages() {
    local resp n
    resp=$(http_get "/api/v1/streams/$1") || return 1
    [[ $(http_code "$resp") == 200 ]] || return 1
    n=$(grep -o '"messages":[0-9]*' <<<"$resp" | head -1)
    [[ -n $n ]] || return 1
    echo "${n#*:}"
}

# no_daemon_left: no marketprism-broker or nats-server process in the
# container.
no_daemon_left() {
    local left
    left=$(in_ct pgrep -a -f '(^|/)(marketprism-broker|nats-server)( |$)' || true)
    [[ -z $left ]] || fail_check "processes left: $left"
    ok "no marketprism-broker or nats-server process left"
}

# nats_unit_masked: Debian's nats-server.service is masked and not running.
nats_unit_masked() {
    local enabled active
    enabled=$(in_ct systemctl is-enabled nats-server.service 2>/dev/null || true)
    active=$(in_ct systemctl is-active nats-server.service 2>/dev/null || true)
    [[ $enabled == masked && $active != active ]] ||
        fail_check "nats-server.service is '$enabled' and '$active'"
    ok "nats-server.service: $enabled, $active"
}

check_install() {
    local st
    st=$(pkg_status nats-server)
    [[ $st == not-installed ]] || fail_check "nats-server is '$st' before $PKG is installed"
    ok "before: nats-server not installed"
    nats_unit_masked
    local rc=0 out=$RUN_DIR/apt-install.log start took
    start=$(now_us)
    apt_ct install -y --no-download "$CT_DEB_DIR/$DEB_NAME" >"$out" 2>&1 || rc=$?
    took=$(fmt_us $(($(now_us) - start)))
    # Probed at once, no retry: the package's start must wait for READY.
    local active enabled health
    active=$(unit_prop ActiveState)
    enabled=$(in_ct systemctl is-enabled "$UNIT" 2>/dev/null || true)
    health=$(http_get /health 2>&1 || true)
    show_log "$out"
    ((rc == 0)) || fail_check "apt-get install exited $rc"
    ok "apt-get install -y --no-download $CT_DEB_DIR/$DEB_NAME returned 0 after $took"
    [[ $enabled == enabled ]] || fail_check "$UNIT is '$enabled' after install"
    [[ $active == active ]] || fail_check "ActiveState=$active as soon as apt-get returned"
    ok "$UNIT enabled and active as soon as apt-get returned"
    grep -q '"status":"healthy"' <<<"$health" ||
        fail_check "/health as soon as apt-get returned: $(tail -1 <<<"$health")"
    ok "/health at once: $(grep -o '"status":"[a-z]*"' <<<"$health")"

    local user group
    user=$(in_ct getent passwd "$PKG") || fail_check "no user $PKG"
    group=$(in_ct getent group "$PKG") || fail_check "no group $PKG"
    ok "user $user; group $group"
    pkg_field "$PKG" Conffiles | grep -q "^ $CONF " ||
        fail_check "$CONF is not a conffile of $PKG"
    ok "$CONF is a conffile"
    stat_is "$CONF" "640 root $PKG"
    stat_is "$STATE_DIR" "750 $PKG"
    stat_is "$STATE_DIR/nats-server.conf" "600 $PKG"
    local f
    for f in /usr/share/man/man8/marketprism-broker.8.gz /usr/share/doc/marketprism-broker/examples; do
        in_ct test -e "$f" || fail_check "$f missing"
    done
    ok "man page and examples installed ($(in_ct ls /usr/share/doc/marketprism-broker/examples | tr '\n' ' '))"

    st=$(pkg_status nats-server)
    [[ $st == installed ]] || fail_check "nats-server is '$st' after the install"
    in_ct apt-mark showauto nats-server | grep -qx nats-server ||
        fail_check "nats-server is installed but not marked as automatically installed"
    ok "nats-server $(pkg_field nats-server Version) installed as a dependency"
    nats_unit_masked
    # As in binary mode. A no-op here: the mask made its postinst's enable
    # (systemctl preset) fail, and deb-systemd-invoke then skips the start.
    in_ct systemctl --quiet disable nats-server.service 2>/dev/null || true
}

check_upgrade() {
    if [[ $(unit_prop ActiveState) != active ]]; then
        in_ct timeout 120 systemctl start "$UNIT" || fail_check "systemctl start failed"
        ok "started again"
    fi
    health_ok || fail_check "/health not healthy before the upgrade"

    # Messages stored before the upgrade.
    local i n=5 resp before
    for ((i = 1; i <= n; i++)); do
        resp=$(http_post_json /api/v1/publish \
            "{\"subject\":\"market.binance.BTCUSDT.trade\",\"message\":{\"i\":$i}}")
        [[ $resp == *'"persisted":true'* ]] ||
            fail_check "publish $i: $(head -1 <<<"$resp") $(tail -1 <<<"$resp")"
    done
    before=$(stream_messages MARKET_DATA) || fail_check "GET /api/v1/streams/MARKET_DATA failed"
    ((before >= n)) || fail_check "MARKET_DATA holds $before messages after $n publishes"
    ok "published $n messages, each persisted; MARKET_DATA holds $before"

    # A local change of the conffile: one more stream.
    in_ct grep -qx '  streams: {}' "$CONF" || fail_check "no '  streams: {}' line in $CONF"
    in_ct sed -i 's/^  streams: {}$/  streams:\n    UPGRADE_TEST:\n      subjects: ["upgrade.>"]/' "$CONF"
    in_ct timeout 60 systemctl reload "$UNIT" || fail_check "systemctl reload of the edited $CONF failed"
    resp=$(http_get /api/v1/streams/UPGRADE_TEST)
    [[ $(http_code "$resp") == 200 ]] ||
        fail_check "GET /api/v1/streams/UPGRADE_TEST after reload: $(head -1 <<<"$resp")"
    ok "edited $CONF (stream UPGRADE_TEST), reloaded: the stream exists"

    # The same package with a higher version.
    local version=$DEB_VERSION+e2e1 newer
    newer=${PKG}_${version#*:}_$(dpkg-deb -f "$E2E_DEB" Architecture).deb
    repack_deb "$E2E_DEB" "$version" "$ROOTFS$CT_DEB_DIR/$newer"
    ok "repacked as $newer"

    local pid rc=0 out=$RUN_DIR/apt-upgrade.log start took
    pid=$(unit_prop MainPID)
    start=$(now_us)
    apt_ct install -y --no-download "$CT_DEB_DIR/$newer" >"$out" 2>&1 || rc=$?
    took=$(fmt_us $(($(now_us) - start)))
    local active health new_pid
    active=$(unit_prop ActiveState)
    health=$(http_get /health 2>&1 || true)
    new_pid=$(unit_prop MainPID)
    show_log "$out"
    ((rc == 0)) || fail_check "apt-get install of $newer exited $rc"
    ok "apt-get install -y --no-download $CT_DEB_DIR/$newer returned 0 after $took"
    local installed
    installed=$(pkg_field "$PKG" Version)
    [[ $installed == "$version" ]] || fail_check "installed version is $installed"
    ok "$PKG $installed installed"

    in_ct grep -q UPGRADE_TEST "$CONF" || fail_check "the local edit of $CONF is gone"
    local stray
    stray=$(in_ct find /etc/marketprism-broker -name '*.dpkg-*')
    [[ -z $stray ]] || fail_check "dpkg left: $stray"
    ok "local edit of $CONF kept, no prompt, no .dpkg-* file"
    stat_is "$CONF" "640 root $PKG"

    [[ $new_pid != "$pid" && $new_pid != 0 ]] || fail_check "MainPID $pid -> $new_pid: not restarted"
    [[ $active == active ]] || fail_check "ActiveState=$active as soon as apt-get returned"
    grep -q '"status":"healthy"' <<<"$health" ||
        fail_check "/health as soon as apt-get returned: $(tail -1 <<<"$health")"
    ok "restarted (MainPID $pid -> $new_pid), active and healthy at once"

    resp=$(http_get /api/v1/streams/UPGRADE_TEST)
    [[ $(http_code "$resp") == 200 ]] ||
        fail_check "GET /api/v1/streams/UPGRADE_TEST after the upgrade: $(head -1 <<<"$resp")"
    local after
    after=$(stream_messages MARKET_DATA) || fail_check "GET /api/v1/streams/MARKET_DATA failed"
    ((after >= before)) || fail_check "MARKET_DATA holds $after messages, $before before the upgrade"
    ok "UPGRADE_TEST exists; MARKET_DATA holds $after messages ($before before)"
}

check_remove() {
    local rc=0 out=$RUN_DIR/apt-remove.log
    apt_ct remove -y "$PKG" >"$out" 2>&1 || rc=$?
    show_log "$out"
    ((rc == 0)) || fail_check "apt-get remove exited $rc"
    local st
    st=$(pkg_status "$PKG")
    [[ $st == config-files ]] || fail_check "$PKG is '$st' after remove"
    ok "apt-get remove returned 0; $PKG is $st"
    no_daemon_left
    st=$(pkg_status nats-server)
    [[ $st == installed ]] || fail_check "nats-server is '$st'"
    ok "nats-server still installed"
    nats_unit_masked
    in_ct test -f "$CONF" || fail_check "$CONF is gone"
    in_ct test -d "$STATE_DIR" || fail_check "$STATE_DIR is gone"
    in_ct getent passwd "$PKG" >/dev/null || fail_check "user $PKG is gone"
    ok "$CONF, $STATE_DIR and user $PKG are still there"
}

check_purge() {
    local rc=0 out=$RUN_DIR/apt-purge.log
    apt_ct purge -y "$PKG" >"$out" 2>&1 || rc=$?
    show_log "$out"
    ((rc == 0)) || fail_check "apt-get purge exited $rc"
    local st
    st=$(pkg_status "$PKG")
    [[ $st == not-installed ]] || fail_check "$PKG is '$st' after purge"
    ok "apt-get purge returned 0; $PKG is $st"
    local d
    for d in /etc/marketprism-broker "$STATE_DIR"; do
        if in_ct test -e "$d"; then
            fail_check "$d still exists: $(in_ct ls -la "$d" | tr '\n' ';')"
        fi
    done
    ok "/etc/marketprism-broker and $STATE_DIR are gone"
    local user
    user=$(in_ct getent passwd "$PKG") || fail_check "user $PKG is gone"
    in_ct getent group "$PKG" >/dev/null || fail_check "group $PKG is gone"
    ok "user and group $PKG stay: $user"
}

checks() {
    local all=(
        "a|systemctl start: active and healthy at once (READY only when healthy)|check_start"
        "b|systemctl status shows the daemon's STATUS text|check_status"
        "c|journal: daemon and nats-server lines under their own identifiers|check_journal"
        "d|systemctl reload: exit 0, same MainPID; a broken config fails it and changes nothing|check_reload"
        "e|kill -9 nats-server: the daemon restarts it within 5 s|check_child_restart"
        "f|systemctl stop: exit 0, nothing left|check_stop"
        "g|systemd-analyze verify clean; security exposure|check_analyze"
    )
    if [[ $MODE == package ]]; then
        all=(
            "i0|apt-get install of the .deb: started, healthy, files and account right, nats-server as a dependency|check_install"
            "${all[@]}"
            "i1|upgrade to a higher version: local conffile edit kept, restarted, streams and messages kept|check_upgrade"
            "i2|apt-get remove: stopped; conffile, state and account stay|check_remove"
            "i3|apt-get purge: conffile and state gone, account stays|check_purge"
        )
        all[1]="a|systemctl restart: no HTTP connection refused meanwhile; active and healthy at once (READY only when healthy)|check_start"
    fi
    local c id desc fn
    for c in "${all[@]}"; do
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

# --- teardown and summary (on_exit, in lib.sh, calls both) -------------------

remove_rootfs() {
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        umount_under "$RUN_DIR"
        rm -rf --one-file-system "$RUN_DIR"
    fi
    RUN_DIR=""
}

teardown() {
    [[ -n $RUN_DIR && -f $RUN_DIR/exposure ]] && EXPOSURE=$(<"$RUN_DIR/exposure")
    stop_container
    remove_rootfs
}

summary() {
    echo
    echo "==== systemd-nspawn e2e summary"
    if [[ $MODE == package ]]; then
        echo "package: $E2E_DEB ($PKG ${DEB_VERSION:-?})"
    else
        echo "binary:  $MPB_BINARY"
    fi
    echo "rootfs:  $ROOTFS_SOURCE"
    local r
    for r in "${RESULTS[@]}"; do echo "$r"; done
    echo "systemd-analyze security --offline=yes exposure: $EXPOSURE"
    print_timings
    echo "e2e: $PASSED passed, $FAILED failed"
}

main() {
    trap on_exit EXIT
    trap 'INTERRUPTED=SIGINT; exit 130' INT
    trap 'INTERRUPTED=SIGTERM; exit 143' TERM
    phase host host_tools
    phase debootstrap cached_rootfs
    phase copy copy_rootfs
    if [[ $MODE == package ]]; then
        phase stage stage_package
    else
        phase install install_broker
    fi
    phase boot boot
    phase checks checks
}

main "$@"
