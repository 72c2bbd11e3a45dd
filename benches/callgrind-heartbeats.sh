#!/usr/bin/env bash
# Instructions per request for `GET /`, heartbeats of a provisioned session
# and heartbeats of a made-up one: the release binary under valgrind's
# callgrind, loaded by wrk as in `wrk-heartbeats.sh` (-t1 -c32), with the
# counts zeroed before and dumped after each load. Unlike wrk's requests a
# second on a shared 2-core machine, these counts barely move between runs
# (a few hundred instructions), so they tell small changes apart; they do not
# see what is not an instruction (system calls, cache misses, contention).
#
#   benches/callgrind-heartbeats.sh [IMAGE]   IMAGE: a runner image on the engine
#                                            (default: the tests' stand-in runner)
# Environment: SECONDS_EACH (10), BINARY (default: the release build, built
# here), OUT (a folder to keep the callgrind files in, for
# `callgrind_annotate --inclusive=yes`; default: a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${SECONDS_EACH:-10}
. benches/heartbeat-load.sh
heartbeat_image "${1:-}"
for tool in wrk valgrind callgrind_control; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install wrk valgrind)" >&2; exit 1; }
done

if [ -z "${BINARY:-}" ]; then
    cargo build --release --locked --quiet
    BINARY=target/release/orchestrator
fi
heartbeat_workspace callgrind
out=${OUT:-$work/out}
mkdir -p "$out"
# SIGINT lets callgrind write its last counts before the service exits.
STOP_SIGNAL=INT
heartbeat_start valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.%p" "$BINARY"

load() { wrk -t1 -c32 -d"${seconds}s" "$@" | awk '/requests in/ { print $1 }'; }
# Every path once before counting.
wrk -t1 -c2 -d1s "$base/" >/dev/null
wrk -t1 -c2 -d1s -s "$work/wrk-known.lua" "$base/api/runner/heartbeat" >/dev/null
wrk -t1 -c2 -d1s -s "$work/wrk-unknown.lua" "$base/api/runner/heartbeat" >/dev/null
for kind in root known unknown; do
    callgrind_control -z "$pid" >/dev/null 2>&1
    case $kind in
        root) requests=$(load "$base/") ;;
        *) requests=$(load -s "$work/wrk-$kind.lua" "$base/api/runner/heartbeat") ;;
    esac
    callgrind_control -d "$kind" "$pid" >/dev/null 2>&1
    dump=$(grep -l "^desc: Trigger: dump $kind\$" "$out"/callgrind.out.*.*)
    instructions=$(awk '/^summary:/ { print $2 }' "$dump")
    awk -v k="$kind" -v i="$instructions" -v n="$requests" \
        'BEGIN { printf "%-8s %7d requests  %6.0f instructions/request\n", k, n, i / n }'
done
