# Sourced by wrk-heartbeats.sh and callgrind-heartbeats.sh: what both need to
# load the service with heartbeats. Not run on its own.
#
#   heartbeat_image [IMAGE]        sets `image`: IMAGE, else the tests' stand-in runner
#   heartbeat_workspace NAME       sets `work` (a temporary folder), `instance`
#                                  (NAME-<pid>) and `port`; cleans up on exit
#   heartbeat_start COMMAND...     runs COMMAND as the service (the release
#                                  binary, or valgrind running it) on a fresh
#                                  database, waits until it is ready, provisions
#                                  the session `wrk-known`, and writes the wrk
#                                  scripts `$work/wrk-known.lua` and
#                                  `$work/wrk-unknown.lua` (a made-up session);
#                                  sets `pid` and `base`
# STOP_SIGNAL (default TERM) is what the service gets on exit.

heartbeat_image() {
    local tag
    tag=$(docker images --format '{{.Tag}}' taylored-test-runner | grep -v -- - | head -1 || true)
    image=${1:-${tag:+taylored-test-runner:$tag}}
    [ -n "$image" ] || { echo "no runner image: run the tests once (they build it) or pass one" >&2; exit 1; }
}

heartbeat_workspace() {
    work=$(mktemp -d)
    instance="$1-$$"
    port=$((20000 + $$ % 20000))
    trap heartbeat_cleanup EXIT
}

heartbeat_cleanup() {
    [ -n "${pid:-}" ] && kill -"${STOP_SIGNAL:-TERM}" "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    docker ps -aq --filter "label=taylored-orchestrator-id=$instance" | xargs -r docker rm -f >/dev/null
    rm -rf "$work"
}

heartbeat_start() {
    PORT=$port LISTEN_ADDRESS=127.0.0.1 DATABASE_URL="$work/o.db" ORCHESTRATOR_ID=$instance \
        DOCKER_IMAGE_NAME=$image RUNNERS_HOST=127.0.0.1 RUNNER_BIND_ADDRESS=127.0.0.1 \
        PROVISION_RATE_PER_MINUTE=0 LOG_FORMAT=json RUST_LOG=warn \
        "$@" 2>"$work/log" &
    pid=$!
    base="http://127.0.0.1:$port"
    # Up to 2 minutes: under valgrind the start is slow.
    for _ in $(seq 1 1200); do
        curl -sf "$base/readyz" >/dev/null && break
        sleep 0.1
    done
    curl -sf -X POST -H 'Content-Type: application/json' -H 'X-Session-Id: wrk-known' -d '{}' \
        "$base/api/runner/provision" >/dev/null \
        || { echo "the service did not provision (log: $work/log)" >&2; cat "$work/log" >&2; exit 1; }
    local session
    for session in wrk-known wrk-unknown; do
        cat >"$work/$session.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"sessionId":"$session"}'
LUA
    done
}
