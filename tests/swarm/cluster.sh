#!/usr/bin/env bash
# A Docker Swarm of several engines on this one machine, for the swarm test
# tier: each node is a Docker Engine in a network namespace of its own, the
# namespaces joined by a bridge that lives in a namespace of its own too (a
# bridge in the host's namespace is filtered by the host's iptables). The
# host reaches the nodes through one more veth, so that tests and the
# orchestrator under test reach runners at their node's address, and a
# client namespace stands for a browser's machine elsewhere.
#
#   tests/swarm/cluster.sh up NAME NODES MANAGERS [IMAGE...]
#                                                     start NODES engines, form a swarm
#                                                     whose first MANAGERS nodes are
#                                                     managers, load each IMAGE on
#                                                     every node
#   tests/swarm/cluster.sh down NAME                  remove everything `up` made
#   tests/swarm/cluster.sh env NAME                   print the cluster's facts
#
# Everything is named after NAME (at most 4 characters: interface names are
# short), so that two clusters (two test runs) never touch each other's
# parts. Addresses are the test's own: 10.231.<k>.0/24, k from NAME's hash.
# Needs root, iproute2, nsenter/unshare, dockerd and fuse-overlayfs (as the
# machine's own engine uses). Facts behind each step: shared/spec/stack-notes.md.
set -euo pipefail

command=${1:?usage: cluster.sh up|down|env NAME [NODES MANAGERS [IMAGE...]]}
name=${2:?a cluster name (at most 4 characters)}
[[ $name =~ ^[a-z0-9]{1,4}$ ]] || { echo "cluster name must be 1-4 of [a-z0-9]" >&2; exit 2; }

# The subnet: one /24 per cluster name, so concurrent clusters never clash.
subnet_index=$(( $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 200 + 20 ))
prefix="10.231.$subnet_index"
host_address="$prefix.1"
state="/run/swarm-$name"
bridge_ns="$name-net"

node_ns() { echo "$name-n$1"; }
node_address() { echo "$prefix.$((10 + $1))"; }
node_socket() { echo "$state/n$1/docker.sock"; }
node_docker() { local node=$1; shift; docker -H "unix://$(node_socket "$node")" "$@"; }

log() { echo "[cluster $name] $*" >&2; }

wait_for() {
    local what=$1 tries=$2; shift 2
    for _ in $(seq 1 "$tries"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "timed out waiting for $what"
    return 1
}

start_node() {
    local node=$1 ns address dir
    ns=$(node_ns "$node")
    address=$(node_address "$node")
    dir="$state/n$node"
    mkdir -p "$dir"
    ip netns add "$ns"
    ip link add "${name}v$node" type veth peer name "${name}p$node"
    ip link set "${name}v$node" netns "$ns"
    ip link set "${name}p$node" netns "$bridge_ns"
    ip netns exec "$bridge_ns" ip link set "${name}p$node" master br0 up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set "${name}v$node" name eth0
    ip netns exec "$ns" ip addr add "$address/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    # Its own config file: the machine's daemon.json sets data-root, and a
    # flag repeating it would be refused.
    cat >"$dir/daemon.json" <<EOF
{"data-root": "$dir/data", "storage-driver": "fuse-overlayfs", "mtu": 1400,
 "bip": "172.30.$node.1/24", "iptables": true}
EOF
    # `nsenter --net`, not `ip netns exec`, which remounts /sys and breaks
    # the engine's cgroup detection. Tasks start from the loaded image only.
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nsenter --net="/run/netns/$ns" unshare --uts \
        sh -c "hostname $name-n$node; exec dockerd --config-file $dir/daemon.json \
            --exec-root $dir/exec --host unix://$(node_socket "$node") \
            --pidfile $dir/docker.pid --cgroup-parent /$name-n$node" \
        >"$dir/dockerd.log" 2>&1 &
    echo $! >"$dir/launcher.pid"
}

up() {
    local nodes=${3:?number of nodes} managers=${4:?number of managers}; shift 4
    local images=("$@")
    if [ -e "$state" ]; then
        log "already up (or left over); taking it down first"
        down
    fi
    mkdir -p "$state"
    echo "$nodes" >"$state/nodes"
    log "starting $nodes engines on $prefix.0/24"
    ip netns add "$bridge_ns"
    ip netns exec "$bridge_ns" ip link set lo up
    ip netns exec "$bridge_ns" ip link add br0 type bridge
    ip netns exec "$bridge_ns" ip link set br0 up
    # The host's own door onto the bridge.
    ip link add "${name}h" type veth peer name "${name}b"
    ip link set "${name}b" netns "$bridge_ns"
    ip netns exec "$bridge_ns" ip link set "${name}b" master br0 up
    ip addr add "$host_address/24" dev "${name}h"
    ip link set "${name}h" up
    # A client elsewhere on the network (a browser's machine).
    ip netns add "$name-cl"
    ip link add "${name}c" type veth peer name "${name}q"
    ip link set "${name}c" netns "$name-cl"
    ip link set "${name}q" netns "$bridge_ns"
    ip netns exec "$bridge_ns" ip link set "${name}q" master br0 up
    ip netns exec "$name-cl" ip link set lo up
    ip netns exec "$name-cl" ip addr add "$prefix.5/24" dev "${name}c"
    ip netns exec "$name-cl" ip link set "${name}c" up
    for node in $(seq 1 "$nodes"); do
        start_node "$node"
    done
    for node in $(seq 1 "$nodes"); do
        wait_for "engine $node" 120 node_docker "$node" info
    done
    log "engines up; forming the swarm"
    node_docker 1 swarm init --advertise-addr "$(node_address 1)" >/dev/null
    local token pids=()
    # Managers one at a time (each join changes the raft membership, which
    # takes one change at a time); workers all at once.
    token=$(node_docker 1 swarm join-token -q manager)
    for node in $(seq 2 "$managers"); do
        node_docker "$node" swarm join --token "$token" "$(node_address 1):2377" >/dev/null
    done
    token=$(node_docker 1 swarm join-token -q worker)
    for node in $(seq $((managers + 1)) "$nodes"); do
        node_docker "$node" swarm join --token "$token" "$(node_address 1):2377" >/dev/null &
        pids+=($!)
    done
    # Only the joins: a bare `wait` would wait for the engines too.
    for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid"; done
    wait_for "$nodes ready nodes" 120 all_ready "$nodes"
    for image in "${images[@]}"; do
        log "loading $image on every node"
        for node in $(seq 1 "$nodes"); do
            docker save "$image" | node_docker "$node" load -q >/dev/null
        done
    done
    log "up"
    print_env
}

all_ready() {
    local ready
    ready=$(node_docker 1 node ls --format '{{.Status}}' | grep -c '^Ready$')
    [ "$ready" -eq "$1" ]
}

down() {
    local nodes=4
    [ -f "$state/nodes" ] && nodes=$(cat "$state/nodes")
    for node in $(seq 1 "$nodes"); do
        local dir="$state/n$node"
        [ -d "$dir" ] || continue
        if [ -S "$(node_socket "$node")" ]; then
            # Runners first, so that the engine leaves no mounts behind.
            node_docker "$node" ps -aq 2>/dev/null | xargs -r timeout 60 docker -H "unix://$(node_socket "$node")" rm -f >/dev/null 2>&1 || true
        fi
        if [ -f "$dir/docker.pid" ]; then
            local pid
            pid=$(cat "$dir/docker.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        # Containerd shims or mounts of a killed engine.
        pkill -9 -f -- "$dir/exec" 2>/dev/null || true
        grep -o " $dir/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        ip netns del "$(node_ns "$node")" 2>/dev/null || true
        rmdir "/sys/fs/cgroup/"*"/$name-n$node" 2>/dev/null || true
    done
    ip link del "${name}h" 2>/dev/null || true
    ip netns del "$name-cl" 2>/dev/null || true
    ip netns del "$bridge_ns" 2>/dev/null || true
    rm -rf "$state"
    log "down"
}

# What the tests need to know, as KEY=VALUE lines.
print_env() {
    local nodes
    nodes=$(cat "$state/nodes")
    echo "SWARM_MANAGER=unix://$(node_socket 1)"
    echo "SWARM_NODES=$nodes"
    echo "SWARM_HOST_ADDRESS=$host_address"
    echo "SWARM_CLIENT_NETNS=$name-cl"
    for node in $(seq 1 "$nodes"); do
        echo "SWARM_NODE_${node}_SOCKET=unix://$(node_socket "$node")"
        echo "SWARM_NODE_${node}_ADDRESS=$(node_address "$node")"
        echo "SWARM_NODE_${node}_NETNS=$(node_ns "$node")"
        echo "SWARM_NODE_${node}_PID=$(cat "$state/n$node/docker.pid" 2>/dev/null || true)"
    done
}

case "$command" in
    up) up "$@" ;;
    down) down ;;
    env) print_env ;;
    *) echo "unknown command $command" >&2; exit 2 ;;
esac
