#!/usr/bin/env bash
# End-to-end test of a three-machine marketprism-broker cluster.
#
# Three systemd-nspawn machines (node1, node2, node3), each booted from the
# cached Debian rootfs of tests/e2e/lib.sh (bookworm, or E2E_SUITE=trixie)
# in a network namespace of its own, linked by a veth pair to a Linux bridge
# that this test creates, with addresses of E2E_NET.0/24 (the host is .1 on
# the bridge, nodeN is .1N). Each gets the package under test installed with
# apt (the three at once, as config management would) and the same
# /etc/marketprism-broker/broker.yaml: config/examples/cluster.yaml (routes
# to all three nodes, R3 streams) with the API listening on every address.
#
# While a load runs against the cluster (tests/e2e/cluster_load.py: an HTTP
# producer publishing numbered messages with message ids to the three nodes
# in turn, retrying on failure; a nats-py durable pull consumer connected to
# all three), the test
#   (a) upgrades the package to a higher version node by node (apt-get
#       install of the same .deb repacked as VERSION+e2e1), running
#       `marketprism-broker wait-ready` in each node before the next;
#   (b) powers off the machine leading MARKET_DATA (SIGKILL of its nspawn
#       and of everything in its cgroups), boots it again, wait-ready;
#   (c) cuts a node's link (its veth on the bridge down), heals it,
#       wait-ready. The node cut is the one leading MARKET_DATA (while
#       publishes go to it) where the machines' nats-server is 2.10 or
#       later (trixie). With nats-server 2.9 (bookworm's 2.9.10) a follower is
#       cut instead and the summary says "SKIPPED partition of the
#       MARKET_DATA leader": 2.9.10 does not survive that. Seen in its
#       debug log: the cut leader kept proposing and applied an entry at
#       the index where the new leader (a term later) wrote another; after
#       the heal it logs "AppendEntry detected pindex less than ours" and
#       "Truncating and repairing WAL" (its raft.go truncates to the
#       leader's index, keeping its own entry there), then "skipping
#       message with sequence N with last of N": its copy of the stream
#       stays one or more messages short with different messages at the
#       same sequences, while the leader reports it current. Catch-up asks
#       only for sequences after a replica's last (calculateSyncRequest),
#       so neither waiting nor restarting nats-server repairs it; wait-ready
#       then times out ("N messages behind the leader"). Of the bookworm
#       runs that cut a node at random, both that cut the leader ended so,
#       none of the eight that cut a follower.
# then stops the load and checks:
#   - every HTTP-acknowledged publish is in every node's copy of the stream,
#     at the sequence it was acknowledged with (each node is made the
#     stream leader in turn and the stream read from it), and the nodes'
#     stream states (/jsz) agree;
#   - the consumer received every acknowledged message;
#   - during the rolling upgrade, publishes failed only with 503 and a
#     Retry-After header, and each succeeded when retried;
#   - no publish was given up in any event.
# The counts are printed as a table, per event.
#
# Usage (as root; E2E_DEB is required):
#   E2E_DEB=dist/marketprism-broker_0.1.0_amd64.deb tests/e2e/cluster-nspawn.sh
# Environment (besides lib.sh's E2E_SUITE, E2E_CACHE, E2E_REFRESH,
# E2E_MIRROR, E2E_TMPFS):
#   E2E_DEB      the package to test
#   E2E_NET      the /24 of the test's machines, as A.B.C (default 10.231.0);
#                refused when the host has an address or route in it
#   MPB_PYTHON   a Python with nats-py (default: <repo>/.venv/bin/python)
#   E2E_RATE     producer's publishes a second at most (default 40)
#   E2E_ARTIFACTS where a failed run leaves the nodes' journals and the load's
#                records (default: E2E_CACHE/cluster-failed-SUITE)
#   E2E_BREAK    break the cluster on purpose, to show that the checks fail:
#                "r1": MARKET_DATA with one copy (not on every node);
#                "r1-lazy-poweroff": that, with `durability: lazy`, and the
#                power cut also takes what the stream's node had not synced
#                (its store is put back to a copy taken before the load):
#                acknowledged messages are lost
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

E2E_DEB=${E2E_DEB:-}
E2E_NET=${E2E_NET:-10.231.0}
MPB_PYTHON=${MPB_PYTHON:-$REPO_ROOT/.venv/bin/python}
E2E_RATE=${E2E_RATE:-40}
E2E_BREAK=${E2E_BREAK:-}
E2E_ARTIFACTS=${E2E_ARTIFACTS:-}

T0=${EPOCHREALTIME/./}
# shellcheck source=tests/e2e/lib.sh
. "$SCRIPT_DIR/lib.sh"

readonly CONF=/etc/marketprism-broker/broker.yaml
readonly HTTP_PORT=8085
readonly MONITOR_PORT=8222
readonly NODES=(node1 node2 node3)
E2E_ARTIFACTS=${E2E_ARTIFACTS:-$E2E_CACHE/cluster-failed-$SUITE}
readonly WAIT_READY_TIMEOUT=120s
# Names of what this run creates: the pid keeps two runs apart and lets a
# later run remove what a killed one left (reap_killed_networks).
readonly BRIDGE=mpb$$br
readonly HOST_ADDR=$E2E_NET.1

# Run state, read by cleanup.
RUN_DIR=""
NETNS=()          # per node: network namespace name
VETH=()           # per node: the host side of its veth pair
ROOTFS_OF=()      # per node: its rootfs
NSPAWN_OF=()      # per node: pid of its systemd-nspawn
CT_OF=()          # per node: its systemd's pid
CGROUPS_OF=()     # per node: its cgroups, space-separated
LOAD_PIDS=()      # producer and consumer
INTERRUPTED=""
DEB_VERSION=""
DEB_NAME=""
NEW_VERSION=""
NEW_NAME=""

# --- helpers -----------------------------------------------------------------

addr_of() { echo "$E2E_NET.1$(($1 + 1))"; }

# in_node I CMD...: CMD inside node I.
in_node() {
    local i=$1
    shift
    CT_PID=${CT_OF[$i]} in_ct "$@"
}

# node_ips: the nodes' addresses, comma-separated.
node_ips() {
    local i out=""
    for i in "${!NODES[@]}"; do out+=${out:+,}$(addr_of "$i"); done
    echo "$out"
}

# stream_leader: the server name leading MARKET_DATA.
stream_leader() {
    "$MPB_PYTHON" "$SCRIPT_DIR/cluster_load.py" leader --nodes "$(node_ips)" --monitor-port "$MONITOR_PORT"
}

index_of() {
    local i
    for i in "${!NODES[@]}"; do [[ ${NODES[$i]} == "$1" ]] && echo "$i" && return 0; done
    return 1
}

# set_event NAME: what the producer files its next publishes under.
set_event() {
    echo "$1" >"$RUN_DIR/event.tmp"
    mv "$RUN_DIR/event.tmp" "$RUN_DIR/event"
    log "event: $1"
}

# wait_ready I: `marketprism-broker wait-ready` inside node I.
wait_ready() {
    local i=$1 start rc=0
    start=$(now_us)
    in_node "$i" marketprism-broker wait-ready --timeout "$WAIT_READY_TIMEOUT" --config "$CONF" ||
        rc=$?
    ((rc == 0)) || {
        diagnostics_node "$i"
        die "${NODES[$i]}: marketprism-broker wait-ready exited $rc"
    }
    log "${NODES[$i]}: wait-ready returned 0 after $(fmt_us $(($(now_us) - start)))"
}

diagnostics_node() {
    local i=$1
    echo "---- ${NODES[$i]}: systemctl status $UNIT"
    in_node "$i" systemctl status --no-pager -l "$UNIT" 2>&1 | tail -20 || true
    echo "---- ${NODES[$i]}: journalctl -u $UNIT | tail -60"
    in_node "$i" journalctl -u "$UNIT" --no-pager 2>&1 | tail -60 || true
}

diagnostics() {
    local i
    for i in "${!NODES[@]}"; do
        [[ -n ${CT_OF[$i]:-} ]] && kill -0 "${CT_OF[$i]}" 2>/dev/null && diagnostics_node "$i"
    done
    echo "----"
}

# --- phases ------------------------------------------------------------------

host_tools() {
    ensure_host_tools
    check_deb
    NEW_VERSION=$DEB_VERSION+e2e1
    NEW_NAME=${PKG}_${NEW_VERSION#*:}_$(dpkg-deb -f "$E2E_DEB" Architecture).deb
    log "package: $E2E_DEB ($PKG $DEB_VERSION); upgrade to $NEW_VERSION"
    "$MPB_PYTHON" -c 'import nats' 2>/dev/null ||
        die "MPB_PYTHON=$MPB_PYTHON: no Python with nats-py (scripts/lib.sh's ensure_venv makes one)"
    [[ $E2E_NET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "E2E_NET=$E2E_NET: give A.B.C"
    local used
    used=$(ip -4 -o addr show | awk -v n="$E2E_NET." 'index($4, n) == 1' || true)
    used+=$(ip -4 route show | awk -v n="$E2E_NET." 'index($1, n) == 1' || true)
    [[ -z $used ]] || die "E2E_NET=$E2E_NET.0/24 is in use on this host: $used"
    case $E2E_BREAK in
        "" | r1 | r1-lazy-poweroff) ;;
        *) die "E2E_BREAK=$E2E_BREAK: give r1 or r1-lazy-poweroff" ;;
    esac
    command -v ip >/dev/null || die "ip (iproute2) not found"
}

# A bridge, and per node a network namespace with a veth pair: eth0 inside
# (E2E_NET.1N), the other end on the bridge. The host is E2E_NET.1.
network() {
    reap_killed_networks
    ip link add "$BRIDGE" type bridge
    ip addr add "$HOST_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local i ns veth
    for i in "${!NODES[@]}"; do
        ns=mpb-e2e-$$-${NODES[$i]}
        veth=mpb$$n$((i + 1))
        ip netns add "$ns"
        NETNS[i]=$ns
        ip link add "$veth" type veth peer name eth0 netns "$ns"
        VETH[i]=$veth
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$ns" addr add "$(addr_of "$i")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
    local _
    for _ in $(seq 50); do
        ping_all && break
        sleep 0.1
    done
    ping_all || die "the nodes' addresses do not answer on $BRIDGE"
    log "bridge $BRIDGE ($HOST_ADDR/24); ${NODES[*]} at $(addr_of 0) $(addr_of 1) $(addr_of 2)"
}

# ping_all: each node's address accepts a TCP connection attempt... there
# is nothing listening yet, so a refused connection (not a timeout) shows
# the link works.
ping_all() {
    local i
    for i in "${!NODES[@]}"; do
        timeout 1 bash -c "exec 3<>/dev/tcp/$(addr_of "$i")/9" 2>/dev/null
        [[ $? == 1 ]] || return 1
    done
}

# Names of namespaces and bridges a killed run left (pid no longer running).
reap_killed_networks() {
    local ns pid br
    for ns in $(ip netns list | awk '{ print $1 }'); do
        [[ $ns =~ ^mpb-e2e-([0-9]+)- ]] || continue
        pid=${BASH_REMATCH[1]}
        kill -0 "$pid" 2>/dev/null && continue
        log "removing network namespace $ns, left by killed run $pid"
        ip netns del "$ns" || true
    done
    for br in $(ip -o link show type bridge | awk -F': ' '{ print $2 }'); do
        [[ $br =~ ^mpb([0-9]+)br$ ]] || continue
        pid=${BASH_REMATCH[1]}
        kill -0 "$pid" 2>/dev/null && continue
        log "removing bridge $br, left by killed run $pid"
        ip link del "$br" || true
    done
}

broker_yaml() {
    echo "# tests/e2e/cluster-nspawn.sh: config/examples/cluster.yaml, with the"
    echo "# API listening on every address (the test drives it from the host)."
    echo 'host: "0.0.0.0"'
    [[ -z $E2E_BREAK ]] || echo "# E2E_BREAK=$E2E_BREAK: MARKET_DATA with one copy"
    # MARKET_DATA's own replicas: 1 with E2E_BREAK; durability lazy with
    # r1-lazy-poweroff.
    awk -v brk="$E2E_BREAK" '
        /^    [A-Z_]+:$/ { in_md = ($1 == "MARKET_DATA:") }
        brk != "" && in_md && $0 == "      replicas: 3" { print "      replicas: 1"; next }
        { print }
        brk == "r1-lazy-poweroff" && $0 == "  host: \"0.0.0.0\"" { print "  durability: lazy" }
    ' "$REPO_ROOT/config/examples/cluster.yaml"
}

# Per node: a copy of the rootfs with its host name, /etc/hosts naming the
# three, the cluster's broker.yaml (the package keeps it: --force-confold),
# both .debs staged, Debian's nats-server.service masked.
rootfses() {
    reap_killed_runs
    RUN_DIR=$(mktemp -d "$E2E_CACHE/run.$$.XXXXXX")
    mkdir "$RUN_DIR/logs"
    repack_deb "$E2E_DEB" "$NEW_VERSION" "$RUN_DIR/$NEW_NAME"
    broker_yaml >"$RUN_DIR/broker.yaml"
    local i root
    for i in "${!NODES[@]}"; do
        root=$RUN_DIR/${NODES[$i]}
        new_rootfs "$root"
        ROOTFS_OF[i]=$root
        echo "${NODES[$i]}" >"$root/etc/hostname"
        {
            echo "127.0.0.1 localhost"
            local j
            for j in "${!NODES[@]}"; do echo "$(addr_of "$j") ${NODES[$j]}"; done
        } >"$root/etc/hosts"
        install -d -m 0755 "$root/etc/marketprism-broker"
        install -m 0644 "$RUN_DIR/broker.yaml" "$root$CONF"
        install -m 0644 "$E2E_DEB" "$root$CT_DEB_DIR/$DEB_NAME"
        install -m 0644 "$RUN_DIR/$NEW_NAME" "$root$CT_DEB_DIR/$NEW_NAME"
        mask_nats_unit "$root"
    done
    log "broker.yaml of every node:"
    grep -v '^ *#' "$RUN_DIR/broker.yaml" | grep -v '^$' | sed 's/^/      | /'
}

# boot_node I: boots node I in its network namespace.
boot_node() {
    local i=$1
    boot_container "mpb-e2e-$$-${NODES[$i]}" "${ROOTFS_OF[$i]}" "$RUN_DIR/logs/nspawn-${NODES[$i]}.log" \
        "--network-namespace-path=/run/netns/${NETNS[$i]}" "--machine=${NODES[$i]}"
    NSPAWN_OF[i]=$NSPAWN_PID
    CT_OF[i]=$CT_PID
    CGROUPS_OF[i]="${CGROUP_DIRS[*]}"
    log "${NODES[$i]}: nspawn pid $NSPAWN_PID, systemd pid $CT_PID, host name $(in_node "$i" cat /proc/sys/kernel/hostname)"
}

boot_all() {
    local i
    for i in "${!NODES[@]}"; do boot_node "$i"; done
}

# kill_node I: its power cut: SIGKILL of nspawn and of everything in its
# cgroups at once, no shutdown.
kill_node() {
    local i=$1 cgs pid
    pid=${NSPAWN_OF[$i]}
    if [[ -n $pid ]]; then
        # Out of the job table: no "Killed" notice from bash.
        disown "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    fi
    read -ra cgs <<<"${CGROUPS_OF[$i]}"
    remove_cgroups "${cgs[@]}"
    NSPAWN_OF[i]=""
    CT_OF[i]=""
    CGROUPS_OF[i]=""
}

# The package installed by apt in the three nodes at once: each start waits
# for a JetStream meta leader, which takes two nodes.
install_all() {
    local i pids=() rc
    for i in "${!NODES[@]}"; do
        in_node "$i" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-download \
            -o Dpkg::Options::=--force-confold "$CT_DEB_DIR/$DEB_NAME" \
            </dev/null >"$RUN_DIR/logs/apt-install-${NODES[$i]}.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!NODES[@]}"; do
        rc=0
        wait "${pids[$i]}" || rc=$?
        ((rc == 0)) || {
            show_log "$RUN_DIR/logs/apt-install-${NODES[$i]}.log" | tail -30
            diagnostics_node "$i"
            die "${NODES[$i]}: apt-get install exited $rc"
        }
        log "${NODES[$i]}: $PKG $(in_node "$i" dpkg-query -W -f="\${Version}" "$PKG") installed, $(in_node "$i" systemctl is-active "$UNIT")"
    done
    for i in "${!NODES[@]}"; do wait_ready "$i"; done
    log "MARKET_DATA leader: $(stream_leader)"
}

start_load() {
    set_event start
    local nodes
    nodes=$(node_ips)
    "$MPB_PYTHON" "$SCRIPT_DIR/cluster_load.py" consume --nodes "$nodes" --dir "$RUN_DIR" \
        >"$RUN_DIR/logs/consumer.log" 2>&1 &
    LOAD_PIDS+=($!)
    "$MPB_PYTHON" "$SCRIPT_DIR/cluster_load.py" produce --nodes "$nodes" --port "$HTTP_PORT" \
        --rate "$E2E_RATE" --dir "$RUN_DIR" >"$RUN_DIR/logs/producer.log" 2>&1 &
    LOAD_PIDS+=($!)
    # Some messages acknowledged and consumed before the first event.
    local _
    for _ in $(seq 300); do
        [[ -s $RUN_DIR/consumed.jsonl && -s $RUN_DIR/produced.jsonl ]] && break
        load_alive
        sleep 0.1
    done
    sleep 3
    load_alive
    log "load running: $(wc -l <"$RUN_DIR/produced.jsonl") publish attempts, $(wc -l <"$RUN_DIR/consumed.jsonl") messages consumed"
}

load_alive() {
    local p
    for p in "${LOAD_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && continue
        tail -20 "$RUN_DIR"/logs/producer.log "$RUN_DIR"/logs/consumer.log >&2
        die "the load stopped by itself"
    done
}

# (a) the rolling upgrade: node by node, apt-get install of the higher
# version, then wait-ready before the next node.
rolling_upgrade() {
    set_event upgrade
    local i rc before after
    for i in "${!NODES[@]}"; do
        before=$(in_node "$i" systemctl show -p MainPID --value "$UNIT")
        rc=0
        in_node "$i" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-download \
            "$CT_DEB_DIR/$NEW_NAME" </dev/null >"$RUN_DIR/logs/apt-upgrade-${NODES[$i]}.log" 2>&1 || rc=$?
        ((rc == 0)) || {
            show_log "$RUN_DIR/logs/apt-upgrade-${NODES[$i]}.log" | tail -30
            die "${NODES[$i]}: apt-get install $NEW_NAME exited $rc"
        }
        wait_ready "$i"
        after=$(in_node "$i" systemctl show -p MainPID --value "$UNIT")
        local version
        version=$(in_node "$i" dpkg-query -W -f="\${Version}" "$PKG")
        [[ $version == "$NEW_VERSION" ]] || die "${NODES[$i]}: $PKG $version installed, not $NEW_VERSION"
        [[ $after != "$before" && $after != 0 ]] || die "${NODES[$i]}: MainPID $before -> $after: not restarted"
        log "${NODES[$i]}: $PKG $version, daemon restarted (MainPID $before -> $after)"
        load_alive
    done
}

# E2E_BREAK=r1-lazy-poweroff: a copy of each node's store before the load
# (the daemons stopped for it, so that it is consistent).
snapshot_stores() {
    local i pids=()
    # At once: each stop drains in lame-duck mode first.
    for i in "${!NODES[@]}"; do
        in_node "$i" systemctl stop "$UNIT" &
        pids+=($!)
    done
    for i in "${!NODES[@]}"; do wait "${pids[$i]}" || die "${NODES[$i]}: systemctl stop failed"; done
    for i in "${!NODES[@]}"; do
        cp -a "${ROOTFS_OF[$i]}/var/lib/marketprism-broker/jetstream" "$RUN_DIR/synced-${NODES[$i]}"
    done
    for i in "${!NODES[@]}"; do in_node "$i" systemctl start --no-block "$UNIT"; done
    for i in "${!NODES[@]}"; do wait_ready "$i"; done
}

# (b) the machine leading MARKET_DATA loses power, and comes back.
power_off() {
    set_event poweroff
    local leader i
    leader=$(stream_leader) || true
    i=$(index_of "$leader") || i=0
    log "power off ${NODES[$i]} (MARKET_DATA leader: ${leader:-?})"
    kill_node "$i"
    if [[ $E2E_BREAK == r1-lazy-poweroff ]]; then
        # What a power cut does to data only in the page cache: gone. The
        # store is reset to its state before the load (a copy taken then).
        rm -rf "${ROOTFS_OF[$i]}/var/lib/marketprism-broker/jetstream"
        cp -a "$RUN_DIR/synced-${NODES[$i]}" "${ROOTFS_OF[$i]}/var/lib/marketprism-broker/jetstream"
        log "E2E_BREAK=$E2E_BREAK: ${NODES[$i]}'s store reset to the copy taken before the load"
    fi
    sleep 8
    load_alive
    boot_node "$i"
    wait_ready "$i"
    POWERED_OFF=${NODES[$i]}
}
POWERED_OFF=""
SKIPPED=()

# (c) a node's link is cut, then healed: the node leading MARKET_DATA
# where nats-server survives that (2.10 and later), else a follower (see
# the header: nats-server 2.9.10 and a cut stream leader).
partition() {
    set_event partition
    local i leader version
    leader=$(stream_leader) || true
    version=$(in_node 0 nats-server --version | awk '{ print $NF }')
    if [[ $version =~ ^v2\.[0-9]\. ]]; then
        for i in "${!NODES[@]}"; do
            [[ ${NODES[$i]} != "$leader" && ${NODES[$i]} != "$POWERED_OFF" ]] && break
        done
        SKIPPED+=("partition of the MARKET_DATA leader: nats-server $version can keep, on a cut stream leader, an entry that the new leader overwrote (after the heal \"Truncating and repairing WAL\", then \"skipping message with sequence N\"): its copy stays messages short at shifted sequences; ${NODES[$i]}, a follower, was cut instead")
        log "SKIPPED: cutting the MARKET_DATA leader (${leader:-?}) on nats-server $version; cutting follower ${NODES[$i]}"
    else
        i=$(index_of "$leader") || die "no MARKET_DATA leader to cut"
    fi
    log "cut ${NODES[$i]}'s link (${VETH[$i]} down; MARKET_DATA leader: ${leader:-?}; nats-server $version)"
    ip link set "${VETH[$i]}" down
    sleep 12
    load_alive
    ip link set "${VETH[$i]}" up
    log "healed ${NODES[$i]}'s link (${VETH[$i]} up)"
    wait_ready "$i"
}

# The load stops; the consumer drains; the counts and checks.
finish() {
    set_event end
    sleep 2
    touch "$RUN_DIR/stop"
    local p rc
    for p in "${LOAD_PIDS[@]}"; do
        rc=0
        wait "$p" || rc=$?
        ((rc == 0)) || {
            tail -20 "$RUN_DIR"/logs/producer.log "$RUN_DIR"/logs/consumer.log >&2
            die "load process $p exited $rc"
        }
    done
    LOAD_PIDS=()
    local urls=() i
    for i in "${!NODES[@]}"; do urls+=("${NODES[$i]}=$(addr_of "$i")"); done
    rc=0
    "$MPB_PYTHON" "$SCRIPT_DIR/cluster_load.py" check --nodes "$(
        IFS=,
        echo "${urls[*]}"
    )" --monitor-port "$MONITOR_PORT" --dir "$RUN_DIR" || rc=$?
    if ((rc == 0)); then
        PASSED=1
        RESULTS+=("PASS  cluster: every acknowledged publish on all three nodes and consumed; upgrade failures only 503 + Retry-After")
    else
        FAILED=1
        RESULTS+=("FAIL  cluster: see the checks above")
    fi
}

# --- teardown and summary (on_exit, in lib.sh, calls both) -------------------

# save_artifacts: what a failed run leaves for a look: the nodes'
# journals, the load's records and logs, the config.
save_artifacts() {
    [[ -n $RUN_DIR && -d $RUN_DIR ]] || return 0
    rm -rf "$E2E_ARTIFACTS"
    mkdir -p "$E2E_ARTIFACTS"
    local i
    for i in "${!NODES[@]}"; do
        [[ -n ${CT_OF[$i]:-} ]] || continue
        in_node "$i" journalctl --no-pager -o short-precise >"$E2E_ARTIFACTS/journal-${NODES[$i]}.log" 2>&1 || true
    done
    cp -a "$RUN_DIR/logs" "$RUN_DIR"/*.jsonl "$RUN_DIR/broker.yaml" "$E2E_ARTIFACTS/" 2>/dev/null || true
    log "kept for a look: $E2E_ARTIFACTS (journals, produced.jsonl, consumed.jsonl, logs)"
}

teardown() {
    local p i
    ((PASSED > 0)) || save_artifacts
    for p in "${LOAD_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${LOAD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for i in "${!NODES[@]}"; do
        [[ -n ${NSPAWN_OF[$i]:-} || -n ${CGROUPS_OF[$i]:-} ]] && kill_node "$i"
    done
    for i in "${!NETNS[@]}"; do ip netns del "${NETNS[$i]}" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        umount_under "$RUN_DIR"
        rm -rf --one-file-system "$RUN_DIR"
    fi
}

summary() {
    echo
    echo "==== cluster e2e summary ($SUITE)"
    echo "package: $E2E_DEB ($PKG ${DEB_VERSION:-?} -> ${NEW_VERSION:-?})"
    echo "rootfs:  $ROOTFS_SOURCE"
    [[ -z $E2E_BREAK ]] || echo "E2E_BREAK=$E2E_BREAK: data is lost on purpose; this run must FAIL"
    local r
    for r in "${RESULTS[@]}"; do echo "$r"; done
    for r in "${SKIPPED[@]}"; do echo "SKIPPED  $r"; done
    print_timings
    echo "cluster-e2e: $PASSED passed, $FAILED failed"
}

main() {
    trap on_exit EXIT
    trap 'INTERRUPTED=SIGINT; exit 130' INT
    trap 'INTERRUPTED=SIGTERM; exit 143' TERM
    phase host host_tools
    phase debootstrap cached_rootfs
    phase network network
    phase rootfs rootfses
    phase boot boot_all
    phase install install_all
    if [[ $E2E_BREAK == r1-lazy-poweroff ]]; then phase snapshot snapshot_stores; fi
    phase load start_load
    phase upgrade rolling_upgrade
    phase poweroff power_off
    phase partition partition
    phase check finish
}


main "$@"
