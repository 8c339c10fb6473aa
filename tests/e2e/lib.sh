# shellcheck shell=bash
# shellcheck disable=SC2034 # globals used by the scripts that source this file
# What the systemd-nspawn end-to-end tests share: the cached debootstrap
# rootfs (with nats-server and apt's lists archived for offline apt inside
# the container), booting a container under systemd-nspawn from a cgroup of
# its own, running commands in it with nsenter, timing phases, recording
# checks, and cleaning up. Sourced by tests/e2e/systemd-nspawn.sh (one
# machine) and tests/e2e/cluster-nspawn.sh (three machines), not run.
#
# The sourcing script sets, before it sources this file:
#   T0                its start (now_us)
# and may override the environment defaults below. It defines
# diagnostics(), which run_check calls after a failed check, and
# teardown() and summary(), which on_exit (its EXIT trap) calls; it sets
# INTERRUPTED when a signal stops it.
#
# Globals this file reads and sets:
#   PHASES RESULTS PASSED FAILED CURRENT_PHASE PHASE_START  (phase, run_check)
#   PRISTINE ROOTFS_SOURCE                                  (cached_rootfs)
#   NSPAWN_PID CT_PID CGROUP_DIRS      the container booted last (boot_container,
#                                      stop_container; in_ct runs in CT_PID's)

E2E_CACHE=${E2E_CACHE:-/var/cache/marketprism-broker-e2e}
E2E_REFRESH=${E2E_REFRESH:-0}
E2E_KEEP_GOING=${E2E_KEEP_GOING:-0}
E2E_MIRROR=${E2E_MIRROR:-}
E2E_TMPFS=${E2E_TMPFS:-1}

# The Debian release of the container: bookworm (12) or trixie (13).
readonly SUITE=${E2E_SUITE:-bookworm}
readonly INCLUDE=systemd,systemd-sysv,dbus,procps,man-db
# Downloaded into the rootfs's /var/cache/apt/archives, not installed
# (space-separated).
readonly ARCHIVED="nats-server"
# Changes whenever the way the cache is built changes.
readonly CACHE_RECIPE="include=$INCLUDE archived=$ARCHIVED apt-lists"
readonly PKG=marketprism-broker
readonly UNIT=$PKG.service
# Where the .debs under test are put in the container: apt's own archive.
# apt 2.6's --no-download takes a local .deb from there only, elsewhere it
# fails with "Internal Error, Pathname to install is not absolute".
readonly CT_DEB_DIR=/var/cache/apt/archives
readonly CT_PATH=/usr/sbin:/usr/bin:/sbin:/bin

PRISTINE=""       # the cached rootfs
ROOTFS_SOURCE="?"
NSPAWN_PID=""
CT_PID=""         # the container's PID 1 (systemd), as seen from the host
CGROUP_DIRS=()
PHASES=()
RESULTS=()
PASSED=0
FAILED=0
CURRENT_PHASE=""
PHASE_START=0

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

# apt_ct ARGS...: apt-get inside the container, non-interactive, with no
# standard input (a dpkg prompt fails instead of waiting).
apt_ct() {
    in_ct env DEBIAN_FRONTEND=noninteractive apt-get "$@" </dev/null
}

ok() { printf '      ok: %s\n' "$*"; }

# fail_check MESSAGE: ends the running check (they run in a subshell).
fail_check() {
    printf '      FAILED: %s\n' "$*"
    exit 1
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

# pkg_field PKG FIELD: dpkg-query's FIELD of PKG.
pkg_field() {
    in_ct dpkg-query -W -f="\${$2}\n" "$1"
}

# pkg_status PKG: dpkg's state of PKG (installed, config-files, ...;
# not-installed also when dpkg does not know it).
pkg_status() {
    local st
    st=$(pkg_field "$1" db:Status-Status 2>/dev/null) || st=""
    echo "${st:-not-installed}"
}

# show_log FILE: apt's output, indented. dpkg's lines come through apt's pty
# with CR LF; of a line rewritten with CRs (the "Reading database" counter),
# the last state.
show_log() {
    sed -E 's/\r+$//; s/^.*\r//; s/^/      | /' "$1"
}

# check_deb: E2E_DEB is a .deb of PKG; sets DEB_VERSION and DEB_NAME.
check_deb() {
    [[ -f $E2E_DEB ]] || die "E2E_DEB: no such file: '$E2E_DEB'"
    local name
    name=$(dpkg-deb -f "$E2E_DEB" Package 2>/dev/null) || die "E2E_DEB: not a .deb: $E2E_DEB"
    [[ $name == "$PKG" ]] || die "E2E_DEB is package '$name', not $PKG"
    DEB_VERSION=$(dpkg-deb -f "$E2E_DEB" Version)
    DEB_NAME=${E2E_DEB##*/}
}

# repack_deb DEB VERSION OUT: DEB as the same package with a higher
# VERSION (what an upgrade installs), written to OUT.
repack_deb() {
    local deb=$1 version=$2 out=$3 dir
    dir=$(mktemp -d)
    dpkg-deb -R "$deb" "$dir/pkg"
    sed -i "s/^Version: .*/Version: $version/" "$dir/pkg/DEBIAN/control"
    dpkg-deb -Zgzip -b "$dir/pkg" "$out" >/dev/null
    rm -rf "$dir"
}

# --- the rootfs --------------------------------------------------------------

# ensure_host_tools: root, debootstrap and systemd-nspawn (installed when
# missing), a usable cgroup hierarchy.
ensure_host_tools() {
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
    for t in debootstrap systemd-nspawn nsenter setsid flock dpkg-deb; do
        command -v "$t" >/dev/null || die "$t not found"
    done
    [[ -d /sys/fs/cgroup/systemd || -d /sys/fs/cgroup/unified || -f /sys/fs/cgroup/cgroup.procs ]] ||
        die "no usable cgroup hierarchy under /sys/fs/cgroup"
}

# The pristine rootfs, built once by debootstrap and kept in E2E_CACHE.
cached_rootfs() {
    local key pristine
    key=$(printf '%s %s' "$SUITE" "$CACHE_RECIPE" | sha256sum | cut -c1-12)
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
        archive_packages "$build/rootfs" "$build/apt.log"
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

# archive_packages ROOTFS LOG: apt's package lists and the .debs of ARCHIVED
# (with what they need beyond the rootfs) in ROOTFS's /var/cache/apt/archives,
# for apt inside the container, which has no network. debootstrap's own .debs
# are dropped: nothing needs them, and they would be copied on every run.
archive_packages() {
    local root=$1 out=$2 pkg pkgs
    read -ra pkgs <<<"$ARCHIVED"
    log "apt-get update and --download-only ${pkgs[*]} in the rootfs"
    if ! {
        chroot "$root" apt-get clean &&
            chroot "$root" apt-get update &&
            chroot "$root" env DEBIAN_FRONTEND=noninteractive \
                apt-get install --download-only -y "${pkgs[@]}"
    } </dev/null >"$out" 2>&1; then
        tail -30 "$out" >&2
        die "apt-get in the new rootfs failed"
    fi
    for pkg in "${pkgs[@]}"; do
        compgen -G "$root/var/cache/apt/archives/${pkg}_*.deb" >/dev/null ||
            die "no $pkg .deb in the rootfs's apt archive after --download-only"
    done
    log "archived: $(cd "$root/var/cache/apt/archives" && echo *.deb)"
}

# new_rootfs DIR: a fresh copy of the pristine rootfs at DIR, so that each
# run starts clean. On a tmpfs of its own by default: cp -a of the ~250 MB,
# 8000 files onto this machine's ext4 took 5-10 s of system time, onto
# tmpfs 0.6 s.
new_rootfs() {
    local dir=$1 where="disk"
    mkdir "$dir"
    if [[ $E2E_TMPFS == 1 ]] && mount -t tmpfs -o mode=0755,size=2g tmpfs "$dir"; then
        where="tmpfs"
    fi
    log "copying $PRISTINE to $dir ($where)"
    cp -a --reflink=auto "$PRISTINE/." "$dir/"
}

# mask_nats_unit ROOTFS: Debian's nats-server package enables and starts its own
# unit, on port 4222. Masked before nats-server is installed (a mask needs no
# unit file), it never starts; deb-systemd-helper only lifts masks it set
# itself.
mask_nats_unit() {
    chroot "$1" systemctl --quiet mask nats-server.service
}

# --- containers --------------------------------------------------------------

# make_cgroups NAME: create a cgroup NAME for nspawn in every hierarchy it uses, so that it does not
# put its supervisor/payload groups at the hierarchy's root.
make_cgroups() {
    local name=$1 h
    if [[ -d /sys/fs/cgroup/systemd || -d /sys/fs/cgroup/unified ]]; then
        for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
            [[ -d $h ]] && CGROUP_DIRS+=("$h/$name")
        done
    else
        CGROUP_DIRS+=("/sys/fs/cgroup/$name")
    fi
    for h in "${CGROUP_DIRS[@]}"; do mkdir "$h"; done
}

# boot_container CGROUP ROOTFS LOG NSPAWN-ARGS...: boots ROOTFS under
# systemd-nspawn (its output to LOG, NSPAWN-ARGS for the network and the
# machine's name) from the cgroup CGROUP (mpb-e2e-<pid of the run>[-...])
# and waits until its systemd is running. Sets NSPAWN_PID, CT_PID and
# CGROUP_DIRS.
boot_container() {
    local cgroup=$1 rootfs=$2 log_file=$3
    shift 3
    CT_PID=""
    CGROUP_DIRS=()
    make_cgroups "$cgroup"
    (
        for cg in "${CGROUP_DIRS[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
        [[ -d /sys/fs/cgroup/unified ]] && export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
        exec setsid systemd-nspawn -D "$rootfs" -b --register=no --keep-unit \
            "$@" --console=pipe </dev/null >"$log_file" 2>&1
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

# stop_container: stops the container of NSPAWN_PID (SIGTERM: its systemd
# shuts down) and removes CGROUP_DIRS with whatever is left in them.
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

# What a run killed with SIGKILL leaves (its cgroups mpb-e2e-PID[-NAME] with the
# container still running, its folder run.PID.* with the tmpfs mounted),
# for a PID that no longer exists.
reap_killed_runs() {
    local path pid
    for path in /sys/fs/cgroup/*/mpb-e2e-* /sys/fs/cgroup/mpb-e2e-* "$E2E_CACHE"/run.*.*; do
        [[ -d $path ]] || continue
        pid=${path##*/}
        pid=${pid#mpb-e2e-}
        pid=${pid#run.}
        pid=${pid%%[.-]*}
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

# --- the end -----------------------------------------------------------------

# print_timings: how long each phase took, and where the run stopped.
print_timings() {
    local p
    echo "timings:"
    for p in "${PHASES[@]}"; do
        printf '  %-12s %s\n' "${p% *}" "$(fmt_us "${p##* }")"
    done
    printf '  %-12s %s\n' total "$(fmt_us $(($(now_us) - T0)))"
    [[ -z $INTERRUPTED ]] || echo "interrupted by $INTERRUPTED${CURRENT_PHASE:+ in phase $CURRENT_PHASE}"
    [[ -n $INTERRUPTED || -z $CURRENT_PHASE ]] || echo "aborted in phase $CURRENT_PHASE"
}

# on_exit: the EXIT trap: teardown, summary, and an exit status that is
# non-zero when a check failed or none passed.
on_exit() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
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
