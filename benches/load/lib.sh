# Shared by the load scripts (sourced, not run): messages, a temp dir, and
# the processes they start, stopped on exit.
#
# Stopping: TERM to every process first (nginx's master stops its workers
# on TERM; KILL would leave them listening and serving the next run), up
# to 5 s each to exit, then KILL.

say() { printf '== %s\n' "$*" >&2; }
die() {
    printf '%s: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

TMP=$(mktemp -d /tmp/gatehouse-load.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
