#!/usr/bin/env bash
# Heartbeats against `GET /`, measured as a user would: wrk (an external load
# generator, `apt-get install wrk`) against the release binary on 127.0.0.1.
# Alternates `GET /`, heartbeats of a provisioned session and heartbeats of a
# made-up one, ROUNDS times each (wrk -t1 -c32 -d4s), and prints every run
# and the median ratios to `GET /` of the same run.
#
#   benches/wrk-heartbeats.sh [IMAGE]     IMAGE: a runner image on the engine
#                                         (default: the tests' stand-in runner)
# Environment: ROUNDS (3), WRK_SECONDS (4), WRK_CONNECTIONS (32).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
seconds=${WRK_SECONDS:-4}
connections=${WRK_CONNECTIONS:-32}
tag=$(docker images --format '{{.Tag}}' taylored-test-runner | grep -v -- - | head -1 || true)
image=${1:-${tag:+taylored-test-runner:$tag}}
[ -n "$image" ] || { echo "no runner image: run the tests once (they build it) or pass one" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

cargo build --release --locked --quiet
work=$(mktemp -d)
instance="wrk-$$"
port=$((20000 + $$ % 20000))
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    docker ps -aq --filter "label=taylored-orchestrator-id=$instance" | xargs -r docker rm -f >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

PORT=$port LISTEN_ADDRESS=127.0.0.1 DATABASE_URL="$work/o.db" ORCHESTRATOR_ID=$instance \
    DOCKER_IMAGE_NAME=$image RUNNERS_HOST=127.0.0.1 RUNNER_BIND_ADDRESS=127.0.0.1 \
    PROVISION_RATE_PER_MINUTE=0 LOG_FORMAT=json RUST_LOG=warn \
    target/release/orchestrator 2>"$work/log" &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
    curl -sf "$base/readyz" >/dev/null && break
    sleep 0.1
done
curl -sf -X POST -H 'Content-Type: application/json' -H 'X-Session-Id: wrk-known' -d '{}' \
    "$base/api/runner/provision" >/dev/null

for session in wrk-known wrk-unknown; do
    cat >"$work/$session.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"sessionId":"$session"}'
EOF
done

rate() { wrk -t1 -c"$connections" -d"${seconds}s" "$@" | awk '/Requests\/sec/ { print $2 }'; }
ratios_known=()
ratios_unknown=()
for round in $(seq 1 "$rounds"); do
    root=$(rate "$base/")
    known=$(rate -s "$work/wrk-known.lua" "$base/api/runner/heartbeat")
    unknown=$(rate -s "$work/wrk-unknown.lua" "$base/api/runner/heartbeat")
    k=$(awk -v a="$known" -v b="$root" 'BEGIN { printf "%.2f", a / b }')
    u=$(awk -v a="$unknown" -v b="$root" 'BEGIN { printf "%.2f", a / b }')
    ratios_known+=("$k")
    ratios_unknown+=("$u")
    echo "round $round: GET / $root req/s; heartbeat $known req/s (${k}x); unknown-session heartbeat $unknown req/s (${u}x)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "median: heartbeat $(median "${ratios_known[@]}")x GET / (goal >= 0.9x), unknown-session heartbeat $(median "${ratios_unknown[@]}")x (goal >= 0.85x)"
