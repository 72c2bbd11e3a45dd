#!/usr/bin/env bash
# Compose smoke test: the production docker-compose.yml, built the CI way (the
# static binaries built on the host, packed by the Dockerfiles'
# `runtime-prebuilt` targets: no registry needed), must provision a runner and
# keep it, with the same endpoint, across `docker-compose restart` and across
# `down` + `up` (the database lives in the named volume). Then the `gateway`
# profile's service must give a runner reachable only through its own port
# (`<token>.runners.localhost`), published on the loopback alone, on a runner
# network without inter-container traffic, keep its endpoint when its
# volume is deleted (the token key lives outside it), and answer 404 for it
# once deprovisioned.
#
# Everything it creates is scoped to one unique compose project, instance id
# (ORCHESTRATOR_ID) and image tags, and removed on exit, also on failure.
#
#   tests/compose/smoke.sh          SMOKE_PORT=21301 (host port of the service),
#                                   SMOKE_GATEWAY_PORT=21302 (the gateway service's)
set -euo pipefail
cd "$(dirname "$0")/../.."

started_at=$SECONDS
triple=x86_64-unknown-linux-gnu
id="$(date +%s)$$"
project="taylored-smoke-${id}"
port="${SMOKE_PORT:-21301}"
base="http://127.0.0.1:${port}"
session="smoke-session-${id}"

# The compose file's variables, pointed at this run's own names.
export ORCHESTRATOR_ID="$project"
export ORCHESTRATOR_IMAGE="taylored-orchestrator-smoke:${id}"
export RUNNER_IMAGE="taylored-runner-smoke:${id}"
export ORCHESTRATOR_TARGET=runtime-prebuilt
export RUNNER_TARGET=runtime-prebuilt
export RUNNER_CONTEXT=./tests/runner
export ORCHESTRATOR_HOST_PORT="$port"
# The gateway profile's service (host networking: it listens on the host).
gateway_port="${SMOKE_GATEWAY_PORT:-21302}"
export GATEWAY_ORCHESTRATOR_ID="${project}-gateway"
# Given to the gateway service only (the others keep the default bridge).
runner_network="${project}-runners"
# The gateway's token key, outside its volume (removed on exit).
GATEWAY_KEY_DIR="$(mktemp -d)"
export GATEWAY_KEY_DIR
export PORT=3001
export RUNNERS_HOST=http://127.0.0.1
# A runner without a row after `down` + `up` means the volume lost the
# database: remove it, so that the heartbeat check below fails.
export ORPHAN_POLICY=remove
export INACTIVITY_TIMEOUT_SECONDS=600
export HEALTHCHECK_INTERVAL=2s
# A setting the compose file only passes through (x-settings); the others
# stay unset there, which must leave the service's defaults.
export RUNNER_PIDS_LIMIT=128
# No registry here and no buildx: the legacy builder through the docker CLI.
export DOCKER_BUILDKIT=0
export COMPOSE_DOCKER_CLI_BUILD=1

if command -v docker-compose >/dev/null 2>&1; then
    compose_command=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose_command=(docker compose)
else
    echo "the compose smoke test needs docker-compose (1.28+) or the docker compose plugin" >&2
    exit 1
fi
compose() {
    "${compose_command[@]}" --file docker-compose.yml --project-name "$project" "$@"
}

step() {
    printf '\n== [%3ds] %s\n' "$((SECONDS - started_at))" "$*"
}

fail() {
    echo "SMOKE TEST FAILED: $*" >&2
    exit 1
}

wait_gateway_ready() {
    for _ in $(seq 1 60); do
        curl --silent --fail --max-time 2 "$gateway/readyz" >/dev/null && return
        sleep 1
    done
    fail "the gateway service is not ready within 60 s"
}

runner_containers() { # [INSTANCE]
    docker ps --all --quiet --no-trunc \
        --filter "label=taylored-orchestrator-id=${1:-$ORCHESTRATOR_ID}" \
        --filter "label=taylored-runner-session-id" | sort
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$status" -ne 0 ]; then
        step "failed (exit $status): orchestrator logs"
        compose logs --no-color --tail=200 orchestrator 2>&1 || true
    fi
    step "cleanup: stack, volume, runners, images"
    compose --profile gateway down --volumes --remove-orphans --timeout 10 2>&1 || true
    local runners
    runners="$(runner_containers) $(runner_containers "$GATEWAY_ORCHESTRATOR_ID")"
    if [ -n "${runners// /}" ]; then
        # shellcheck disable=SC2086
        docker rm --force $runners >/dev/null || true
    fi
    # The warm pool's claim record of each instance (a container never
    # started; it would keep the runner image in use).
    local instance
    for instance in "$ORCHESTRATOR_ID" "$GATEWAY_ORCHESTRATOR_ID"; do
        docker ps --all --quiet --filter "label=taylored-orchestrator-id=${instance}" \
            --filter "label=taylored-runner-claims" | xargs --no-run-if-empty docker rm --force >/dev/null 2>&1 || true
    done
    # The egress rules and runner networks of both instances, through the
    # image's own operator command (host network, NET_ADMIN, as in compose).
    for instance in "$ORCHESTRATOR_ID" "$GATEWAY_ORCHESTRATOR_ID"; do
        docker run --rm --network host --cap-add NET_ADMIN \
            --volume /var/run/docker.sock:/var/run/docker.sock \
            --env ORCHESTRATOR_ID="$instance" --entrypoint /orchestrator \
            "$ORCHESTRATOR_IMAGE" egress remove 2>&1 | grep -v INFO || true
        docker network ls --quiet --filter "label=taylored-orchestrator-id=${instance}" |
            xargs --no-run-if-empty docker network rm >/dev/null 2>&1 || true
    done
    docker network rm "$runner_network" >/dev/null 2>&1 || true
    rm -rf "$GATEWAY_KEY_DIR"
    docker image rm "$ORCHESTRATOR_IMAGE" "$RUNNER_IMAGE" >/dev/null 2>&1 || true
    echo "smoke test finished in $((SECONDS - started_at)) s (exit $status)"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ss -Htln "sport = :${port}" | grep -q .; then
    fail "host port ${port} is in use; set SMOKE_PORT to a free port"
fi
if ss -Htln "sport = :${gateway_port}" | grep -q .; then
    fail "host port ${gateway_port} is in use; set SMOKE_GATEWAY_PORT to a free port"
fi

step "build the static binaries on the host (target/static, tests/runner/target/static)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/static \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --target "$triple" --bin orchestrator 2>&1
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=tests/runner/target/static \
    cargo build --release --locked --target "$triple" --manifest-path tests/runner/Cargo.toml 2>&1
file_size() { stat --format '%s bytes  %n' "$1"; }
tests/compose/nft-root.sh target/static/nft-root
file_size "target/static/${triple}/release/orchestrator"
file_size "tests/runner/target/static/${triple}/release/test-runner"

step "docker-compose build (project ${project}, targets runtime-prebuilt)"
compose build 2>&1
size=$(docker image inspect --format '{{.Size}}' "$ORCHESTRATOR_IMAGE")
runner_size=$(docker image inspect --format '{{.Size}}' "$RUNNER_IMAGE")
echo "runtime image ${ORCHESTRATOR_IMAGE}: ${size} bytes ($((size / 1024 / 1024)) MiB)"
echo "runner image ${RUNNER_IMAGE}: ${runner_size} bytes"
docker run --rm --entrypoint /orchestrator "$ORCHESTRATOR_IMAGE" --version \
    || fail "the runtime image has no working /orchestrator (was the host binary built?)"

# Waits until Docker reports the orchestrator healthy (its HEALTHCHECK, i.e.
# `orchestrator healthcheck` → GET /healthz) and GET /readyz answers 200.
wait_ready() {
    local container health
    container=$(compose ps --quiet orchestrator)
    [ -n "$container" ] || fail "no orchestrator container"
    for _ in $(seq 1 90); do
        health=$(docker inspect --format '{{.State.Health.Status}}' "$container")
        if [ "$health" = healthy ] && curl --silent --fail --max-time 2 "$base/readyz" >/dev/null; then
            echo "orchestrator ${container:0:12}: healthy and ready"
            curl --silent --max-time 2 "$base/readyz"
            echo
            return 0
        fi
        sleep 1
    done
    docker inspect --format '{{json .State.Health}}' "$container" || true
    fail "orchestrator not healthy and ready within 90 s (health: ${health})"
}

# request METHOD PATH [JSON] → prints "STATUS BODY".
request() {
    local body_file status
    body_file=$(mktemp)
    status=$(curl --silent --max-time 30 --output "$body_file" --write-out '%{http_code}' \
        --request "$1" --header 'Content-Type: application/json' \
        --header "X-Session-Id: ${session}" ${3:+--data "$3"} "$base$2") || status="curl-error"
    echo "$status $(cat "$body_file")"
    rm -f "$body_file"
}

expect_status() { # expect_status WANT "STATUS BODY" WHAT
    echo "$3 → $2"
    [ "${2%% *}" = "$1" ] || fail "$3: expected HTTP $1"
}

json_field() { jq --raw-output ".$1" <<<"${2#* }"; }

check_runner_answers() {
    local answer
    for _ in $(seq 1 20); do
        if answer=$(curl --silent --fail --max-time 2 "$1/"); then
            echo "runner at $1 answers: $answer"
            return 0
        fi
        sleep 0.5
    done
    fail "the runner at $1 does not answer"
}

check_same_runner() { # after a restart: heartbeat, re-provision, containers
    local answer
    answer=$(request POST /api/runner/heartbeat "{\"sessionId\":\"${session}\"}")
    expect_status 200 "$answer" "heartbeat ${session}"
    answer=$(request POST /api/runner/provision '{}')
    expect_status 200 "$answer" "provision again (X-Session-Id ${session})"
    [ "$(json_field endpoint "$answer")" = "$endpoint" ] \
        || fail "endpoint changed: $(json_field endpoint "$answer") != ${endpoint}"
    check_runner_answers "$endpoint"
    local now
    now=$(runner_containers)
    echo "runner containers: $(echo "$now" | cut -c1-12 | tr '\n' ' ')"
    [ "$now" = "$containers" ] || fail "runner containers changed: was [${containers}], now [${now}]"
}

step "docker-compose up -d"
compose up --detach 2>&1
wait_ready

step "egress: the rules are in force (RUNNER_EGRESS=public, the default)"
readyz=$(curl --silent --max-time 2 "$base/readyz")
jq --exit-status '.egress.policy == "public" and .egress.enforced == true' <<<"$readyz" >/dev/null \
    || fail "/readyz does not report the egress rules in force: ${readyz}"
table=$(jq --raw-output .egress.table <<<"$readyz")
nft list table inet "$table" >/dev/null || fail "no nftables table ${table} on the host"
echo "table inet ${table}: $(nft list table inet "$table" | grep -c comment) rules"

step "provision a runner"
answer=$(request POST /api/runner/provision '{}')
expect_status 201 "$answer" "provision (X-Session-Id ${session})"
endpoint=$(json_field endpoint "$answer")
check_runner_answers "$endpoint"
# From inside the runner: the service's own port on the host is blocked,
# while the runner's own loopback (no host rule on the way) answers, so
# that the probe is shown to work.
bridge_gateway=$(docker network inspect --format '{{(index .IPAM.Config 0).Gateway}}' \
    "taylored-runners-${ORCHESTRATOR_ID}")
probe=$(curl --silent --max-time 10 "$endpoint/probe/tcp?addr=127.0.0.1:3000")
echo "runner -> its own 127.0.0.1:3000: ${probe}"
jq --exit-status .ok <<<"$probe" >/dev/null || fail "the runner's probe does not work: ${probe}"
probe=$(curl --silent --max-time 10 "$endpoint/probe/tcp?addr=${bridge_gateway}:${port}")
echo "runner -> the service on the host (${bridge_gateway}:${port}): ${probe}"
jq --exit-status '.ok == false' <<<"$probe" >/dev/null \
    || fail "a runner reached the service's port on the host: ${probe}"
containers=$(runner_containers)
echo "runner containers: $(echo "$containers" | cut -c1-12 | tr '\n' ' ')"
[ "$(echo "$containers" | wc -l)" -eq 1 ] && [ -n "$containers" ] \
    || fail "expected exactly one runner container"
pids_limit=$(docker inspect --format '{{.HostConfig.PidsLimit}}' "$containers")
echo "runner PidsLimit: ${pids_limit} (RUNNER_PIDS_LIMIT=${RUNNER_PIDS_LIMIT} through x-settings)"
[ "$pids_limit" = "$RUNNER_PIDS_LIMIT" ] || fail "RUNNER_PIDS_LIMIT did not reach the service"

step "docker-compose restart orchestrator"
compose restart orchestrator 2>&1
wait_ready
check_same_runner

step "docker-compose stop: SIGTERM to PID 1 must end it cleanly (exit 0)"
container=$(compose ps --quiet orchestrator)
stop_started=$SECONDS
compose stop orchestrator 2>&1
exit_code=$(docker inspect --format '{{.State.ExitCode}}' "$container")
echo "orchestrator exited with ${exit_code} after $((SECONDS - stop_started)) s"
[ "$exit_code" = 0 ] || fail "orchestrator exited with ${exit_code} on SIGTERM"

step "docker-compose down (volume kept), then up -d"
compose down 2>&1
[ "$(runner_containers)" = "$containers" ] || fail "down removed or added runner containers"
compose up --detach 2>&1
wait_ready
check_same_runner
compose logs --no-color orchestrator 2>&1 | grep -i 'reconcil' | tail -n 3 || true

step "the gateway profile: a runner reached only through the service's port"
PORT="$gateway_port" RUNNER_NETWORK="$runner_network" \
    compose --profile gateway up --detach orchestrator-gateway 2>&1
gateway="http://127.0.0.1:${gateway_port}"
wait_gateway_ready
answer=$(curl --silent --max-time 30 --write-out ' %{http_code}' --request POST \
    --header 'Content-Type: application/json' --header "X-Session-Id: gw-${session}" \
    --data '{}' "$gateway/api/runner/provision")
echo "provision through the gateway service → ${answer}"
[ "${answer##* }" = 201 ] || fail "provision on the gateway service: expected HTTP 201"
gateway_endpoint=$(jq --raw-output .endpoint <<<"${answer% *}")
runner_host=${gateway_endpoint#http://}
runner_host=${runner_host%%:*}
[[ "$runner_host" =~ ^[0-9a-f]{32}\.runners\.localhost$ ]] \
    || fail "endpoint ${gateway_endpoint} is not http://<token>.runners.localhost:${gateway_port}"
[ "${gateway_endpoint##*:}" = "$gateway_port" ] || fail "endpoint ${gateway_endpoint}: not the service's port"
resolve=(--resolve "${runner_host}:${gateway_port}:127.0.0.1")
reply=$(curl --silent --fail --max-time 5 "${resolve[@]}" "$gateway_endpoint/") \
    || fail "the runner does not answer through the gateway"
echo "runner through the gateway (${gateway_endpoint}) answers: ${reply}"
gateway_runner=$(runner_containers "$GATEWAY_ORCHESTRATOR_ID")
bindings=$(docker inspect --format '{{json .HostConfig.PortBindings}}' "$gateway_runner")
echo "runner port bindings: ${bindings}; networks: $(docker inspect --format \
    '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "$gateway_runner")"
jq --exit-status 'all(.[][]; .HostIp == "127.0.0.1")' <<<"$bindings" >/dev/null \
    || fail "the runner's port is published beyond the loopback: ${bindings}"
[ "$(docker network inspect --format '{{index .Options "com.docker.network.bridge.enable_icc"}}' \
    "$runner_network")" = false ] || fail "RUNNER_NETWORK ${runner_network} lets runners reach each other"

step "the gateway profile after its volume is deleted: the same endpoint, rebuilt from the engine"
compose --profile gateway stop --timeout 10 orchestrator-gateway 2>&1
compose --profile gateway rm --force orchestrator-gateway 2>&1
docker volume rm "${project}_orchestrator-gateway-data" >/dev/null \
    || fail "could not delete the gateway's volume"
[ -s "$GATEWAY_KEY_DIR/token-key" ] || fail "no token key in GATEWAY_KEY_DIR"
# A missing database adopts what the engine holds (ORPHAN_POLICY=remove, set
# above for the other service's check, would remove it).
ORPHAN_POLICY=adopt PORT="$gateway_port" RUNNER_NETWORK="$runner_network" \
    compose --profile gateway up --detach orchestrator-gateway 2>&1
wait_gateway_ready
again=$(curl --silent --max-time 30 --write-out ' %{http_code}' --request POST \
    --header 'Content-Type: application/json' --header "X-Session-Id: gw-${session}" \
    --data '{}' "$gateway/api/runner/provision")
echo "provision after the rebuild → ${again}"
[ "${again##* }" = 200 ] || fail "provision after the rebuild: expected HTTP 200 (the runner kept)"
[ "$(jq --raw-output .endpoint <<<"${again% *}")" = "$gateway_endpoint" ] \
    || fail "the endpoint changed after the rebuild: ${again}"
curl --silent --fail --max-time 5 "${resolve[@]}" "$gateway_endpoint/" >/dev/null \
    || fail "the runner does not answer through the gateway after the rebuild"
compose logs --no-color orchestrator-gateway 2>&1 | grep -q 'rebuilt from the engine' \
    || fail "the gateway service's log does not say it rebuilt from the engine"

answer=$(curl --silent --max-time 30 --write-out '%{http_code}' --output /dev/null --request POST \
    --header 'Content-Type: application/json' --data "{\"sessionId\":\"gw-${session}\"}" \
    "$gateway/api/runner/deprovision")
[ "$answer" = 200 ] || fail "deprovision on the gateway service: HTTP ${answer}"
status=$(curl --silent --max-time 5 --output /dev/null --write-out '%{http_code}' \
    "${resolve[@]}" "$gateway_endpoint/")
echo "after deprovision, the runner's host answers ${status}"
[ "$status" = 404 ] || fail "a deprovisioned runner's host answered ${status}, not 404"

step "passed: image ${size} bytes, $((SECONDS - started_at)) s"
