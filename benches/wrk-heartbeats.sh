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
. benches/heartbeat-load.sh
heartbeat_image "${1:-}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

cargo build --release --locked --quiet
heartbeat_workspace wrk
heartbeat_start target/release/orchestrator

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
