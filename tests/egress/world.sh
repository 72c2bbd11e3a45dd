#!/usr/bin/env bash
# A closed little internet for the egress test tier: a Docker Engine in a
# network namespace of its own (the "engine host", where the service runs as
# root and installs its nftables policy), and a "world" namespace behind it
# that plays everything a runner might try to reach. No packet of it leaves
# this machine's namespaces: the engine host's only uplink is a veth to the
# world, which has no other link.
#
#   tests/egress/world.sh up NAME [IMAGE...]   make it, load each IMAGE into the engine
#   tests/egress/world.sh down NAME            remove everything `up` made (also half-made)
#   tests/egress/world.sh env NAME             print its facts as KEY=VALUE lines
#   tests/egress/world.sh check NAME           check the engine host's routes
#
#  host ns  ${NAME}h 10.233.k.1 ==veth== ${NAME}d 10.233.k.2   NAME-eng (dockerd, the service,
#                                                               a listener on 0.0.0.0:8080: `host`)
#  NAME-eng ${NAME}u 10.232.k.2 ==veth== ${NAME}w 10.232.k.1   NAME-wld, default route of NAME-eng
#  NAME-wld on its lo: 11.11.11.11 (`public` on :80, DNS on :53/udp answering
#           11.11.11.11 for any name), 10.77.0.10 (`private` on :80),
#           169.254.169.254 (`metadata` on :80)
#
# NAME: 1-4 of [a-z0-9] (interface names are short). k comes from NAME's
# hash, so two worlds never share addresses. Needs root, iproute2,
# nsenter/unshare, dockerd, fuse-overlayfs and python3. How the engine is
# started, and why: shared/spec/stack-notes.md ("A multi-node Swarm on one
# machine"), as in tests/swarm/cluster.sh.
set -euo pipefail

command=${1:?usage: world.sh up|down|env|check NAME [IMAGE...]}
name=${2:?a world name (1-4 of [a-z0-9])}
[[ $name =~ ^[a-z0-9]{1,4}$ ]] || { echo "world name must be 1-4 of [a-z0-9]" >&2; exit 2; }

k=$(( $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 200 + 20 ))
uplink="10.232.$k"
door="10.233.$k"
state="/run/egress-$name"
eng="$name-eng"
wld="$name-wld"
socket="$state/docker.sock"
public=11.11.11.11
private=10.77.0.10
metadata=169.254.169.254
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "[world $name] $*" >&2; }
engine() { docker -H "unix://$socket" "$@"; }

wait_for() {
    local what=$1 tries=$2; shift 2
    for _ in $(seq 1 "$tries"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "timed out waiting for $what"
    return 1
}

# Every target must leave the engine host by the veth to the world, never
# by a real interface.
check() {
    local target route
    for target in "$public" "$private" "$metadata"; do
        route=$(ip -n "$eng" route get "$target")
        if ! grep -q " dev ${name}u " <<<"$route"; then
            log "ROUTE CHECK FAILED: $target from $eng goes '$route', not by ${name}u"
            return 1
        fi
    done
}

# A listener process in namespace $1, its pid kept in $state/$2.pid.
listen() {
    local ns=$1 what=$2; shift 2
    ip netns exec "$ns" "$python" "$here/targets.py" "$@" >"$state/$what.log" 2>&1 &
    echo $! >"$state/$what.pid"
    wait_for "the $what listeners" 40 grep -q listening "$state/$what.log"
}

up() {
    shift 2
    local images=("$@")
    if [ -e "$state" ] || ip netns list | grep -q "^$eng\b"; then
        log "already up (or left over); taking it down first"
        down
    fi
    python=$(python3 -c 'import sys; print(sys.executable)')
    mkdir -p "$state"
    ip netns add "$eng"
    ip netns add "$wld"
    ip -n "$eng" link set lo up
    ip -n "$wld" link set lo up
    # The uplink: engine host <-> world.
    ip -n "$eng" link add "${name}u" type veth peer name "${name}w" netns "$wld"
    ip -n "$eng" addr add "$uplink.2/24" dev "${name}u"
    ip -n "$eng" link set "${name}u" up
    ip -n "$eng" route add default via "$uplink.1" dev "${name}u"
    ip -n "$wld" addr add "$uplink.1/24" dev "${name}w"
    ip -n "$wld" link set "${name}w" up
    # The targets on the world's loopback (this kernel has no dummy links).
    for address in "$public" "$private" "$metadata"; do
        ip -n "$wld" addr add "$address/32" dev lo
    done
    # The host's door into the engine host (the service's port, runners'
    # published ports).
    ip link add "${name}h" type veth peer name "${name}d" netns "$eng"
    ip addr add "$door.1/24" dev "${name}h"
    ip link set "${name}h" up
    ip -n "$eng" addr add "$door.2/24" dev "${name}d"
    ip -n "$eng" link set "${name}d" up
    check
    listen "$wld" world "tcp:$public:80:public" "tcp:$private:80:private" \
        "tcp:$metadata:80:metadata" "dns:$public:53:$public"
    listen "$eng" host "tcp:0.0.0.0:8080:host"
    cat >"$state/daemon.json" <<EOF
{"data-root": "$state/data", "storage-driver": "fuse-overlayfs", "iptables": true,
 "bip": "172.30.$k.1/24"}
EOF
    # `nsenter --net`, not `ip netns exec` (which remounts /sys and breaks
    # the engine's cgroup detection).
    nsenter --net="/run/netns/$eng" unshare --uts \
        sh -c "hostname $eng; exec dockerd --config-file $state/daemon.json \
            --exec-root $state/exec --host unix://$socket \
            --pidfile $state/docker.pid --cgroup-parent /$eng" \
        >"$state/dockerd.log" 2>&1 &
    echo $! >"$state/launcher.pid"
    wait_for "the engine" 120 engine info
    for image in "${images[@]}"; do
        log "loading $image"
        docker save "$image" | engine load -q >/dev/null
    done
    log "up"
    print_env
}

kill_pidfile() {
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    if [ -S "$socket" ]; then
        # Containers first, so that the engine leaves no mounts behind.
        engine ps -aq 2>/dev/null | xargs -r timeout 60 docker -H "unix://$socket" rm -f >/dev/null 2>&1 || true
    fi
    kill_pidfile "$state/docker.pid"
    kill_pidfile "$state/world.pid"
    kill_pidfile "$state/host.pid"
    # Whatever still runs in the namespaces was started for this world (a
    # killed engine's containerd and shims, a service a test left): by pid.
    local ns pid
    for ns in "$eng" "$wld"; do
        if ip netns list | grep -q "^$ns\b"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                kill -9 "$pid" 2>/dev/null || true
            done
        fi
    done
    grep -o " $state/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    ip link del "${name}h" 2>/dev/null || true
    ip netns del "$eng" 2>/dev/null || true
    ip netns del "$wld" 2>/dev/null || true
    rmdir /sys/fs/cgroup/*/"$eng" 2>/dev/null || true
    rm -rf "$state"
    log "down"
}

print_env() {
    echo "EGRESS_SOCKET=unix://$socket"
    echo "EGRESS_ENGINE_NETNS=$eng"
    echo "EGRESS_WORLD_NETNS=$wld"
    echo "EGRESS_UPLINK_DEVICE=${name}u"
    echo "EGRESS_UPLINK_ADDRESS=$uplink.2"
    echo "EGRESS_WORLD_ADDRESS=$uplink.1"
    echo "EGRESS_DOOR_HOST_ADDRESS=$door.1"
    echo "EGRESS_DOOR_ENGINE_ADDRESS=$door.2"
    echo "EGRESS_PUBLIC=$public"
    echo "EGRESS_PRIVATE=$private"
    echo "EGRESS_METADATA=$metadata"
    echo "EGRESS_DNS=$public"
    echo "EGRESS_HOST_LISTENER=$uplink.2:8080"
    echo "EGRESS_ENGINE_PID=$(cat "$state/docker.pid" 2>/dev/null || true)"
}

case "$command" in
    up) up "$@" ;;
    down) down ;;
    env) print_env ;;
    check) check ;;
    *) echo "unknown command $command" >&2; exit 2 ;;
esac
