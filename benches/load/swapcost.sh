#!/usr/bin/env bash
# CPU per table change with a large table, no request load: what a route
# change costs the router's core (benches/load/run.sh `swap` measures the
# same under load, as a ratio to HAProxy).
#
# For each binary (alternating, ROUNDS times): start it on FILLER routes
# (each with its own Service and Endpoints, as run.sh builds them), one
# worker thread, pinned to CPU 0; after it settles, rewrite one route file
# CHANGES times, RATE per second (a path and a service that alternate), and
# read the process's CPU time (user + system, /proc/PID/stat) over the
# changes. Prints CPU ms per change and the table generation reached (must
# be CHANGES + 1).
#
# Usage
#   bash benches/load/swapcost.sh                       # target/release/gatehouse
#   bash benches/load/swapcost.sh OLD_BINARY NEW_BINARY # A/B, alternating
#
# Environment: FILLER [10000], CHANGES [200], RATE [10], ROUNDS [2],
# PORT [19501] (admin PORT+1).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=benches/load/lib.sh
. "$ROOT/benches/load/lib.sh"
FILLER=${FILLER:-10000}
CHANGES=${CHANGES:-200}
RATE=${RATE:-10}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-19501}
ADMIN=$((PORT + 1))
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/release/gatehouse")
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 1; }; done

DIR=$TMP # lib.sh's: removed on exit, with the processes in PIDS stopped
filler_yaml "$FILLER" >"$DIR/filler.yaml"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
generation() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^gatehouse_table_generation / {print $2}'
}

one() {
    local bin=$1
    rm -f "$DIR/swap.yaml"
    GATEHOUSE_WORKER_THREADS=1 taskset -c 0 "$bin" run --manifests "$DIR" \
        --http "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --access-log off >"$DIR/log" 2>&1 &
    PID=$!
    PIDS=("$PID")
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$ADMIN/metrics" && break
        sleep 0.2
    done
    sleep 2
    local g0 t0 t1 g1
    g0=$(generation)
    t0=$(cpu_ticks "$PID")
    for i in $(seq 1 "$CHANGES"); do
        printf 'apiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: swap, namespace: bench}\nspec:\n  host: swap.bench.local\n  path: /v%d\n  to: {kind: Service, name: filler%d}\n' \
            "$i" $((i % 2 + 1)) >"$DIR/.swap.tmp"
        mv "$DIR/.swap.tmp" "$DIR/swap.yaml"
        sleep "$(awk -v r="$RATE" 'BEGIN { print 1 / r }')"
    done
    sleep 1
    t1=$(cpu_ticks "$PID")
    g1=$(generation)
    stop "$PID"
    PIDS=()
    # Clock ticks are 1/100 s: ms per change = ticks * 10 / changes.
    awk -v b="$(basename "$bin")" -v t="$((t1 - t0))" -v n="$CHANGES" -v g="$((g1 - g0))" \
        'BEGIN { printf "%-24s cpu ms per change %.2f  (%d tables published for %d changes)\n", b, t * 10 / n, g, n }'
}

for _ in $(seq 1 "$ROUNDS"); do
    for b in "${BINS[@]}"; do one "$b"; done
done
