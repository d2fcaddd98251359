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

# need COMMAND:PACKAGE ...: installs the Debian package of every command that
# is missing (one apt-get run), so a fresh machine needs no setup step; as a
# non-root user it names the packages to install and stops. A COMMAND that
# starts with / is a file that must exist (a header, say).
have() { case $1 in /*) [ -e "$1" ] ;; *) command -v "$1" >/dev/null ;; esac; }
need() {
    local missing=() pkgs=() pair
    for pair in "$@"; do
        have "${pair%%:*}" && continue
        missing+=("${pair%%:*}")
        pkgs+=("${pair#*:}")
    done
    [ ${#pkgs[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: run 'apt-get install -y ${pkgs[*]}' as root"
    say "installing ${pkgs[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq "${pkgs[@]}" >/dev/null; } ||
        die "apt-get install ${pkgs[*]} failed"
    for pair in "$@"; do
        have "${pair%%:*}" || die "${pair%%:*} still missing after installing ${pair#*:}"
    done
}

# stop PID...: TERM to each, up to 5 s each to exit, then KILL.
stop() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# wait_http URL STATUS SECONDS [PID [CURL_ARG...]]: poll URL until it
# answers STATUS; fails after SECONDS, or at once when PID (if given) has
# exited.
wait_http() {
    local url=$1 want=$2 secs=$3 pid=${4:-} code
    shift $(($# < 4 ? $# : 4))
    for _ in $(seq $((secs * 10))); do
        [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || return 1
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [ "$code" = "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

TMP=$(mktemp -d /tmp/gatehouse-load.XXXXXX)
PIDS=()
# A Service and its Endpoints (one address) in namespace bench, for the
# load scripts' manifests: service_yaml NAME IP PORT [PORT_NAME (http)].
service_yaml() {
    cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: bench}
spec:
  ports: [{name: ${4:-http}, port: 80, targetPort: $3}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: $1, namespace: bench}
subsets:
- addresses: [{ip: $2}]
  ports: [{name: ${4:-http}, port: $3}]
EOF
}

# The filler routes of the load scripts' large tables: N Routes, each with
# its own Service and Endpoints (filler1..N in namespace bench, host
# fillerI.bench.local, endpoint filler_ip I, port 8080), as YAML on stdout.
filler_ip() { echo "127.0.1.$(($1 % 250 + 1))"; }
filler_yaml() {
    local i
    for i in $(seq 1 "$1"); do
        echo ---
        service_yaml "filler$i" "127.0.1.$((i % 250 + 1))" 8080 # filler_ip, without a fork
        cat <<EOF
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: filler$i, namespace: bench}
spec:
  host: filler$i.bench.local
  to: {kind: Service, name: filler$i}
  port: {targetPort: http}
EOF
    done
}

# The forwarded headers the OpenShift router's template sets (policy
# "append") as HAProxy backend lines, for the backends gatehouse is compared
# with (gatehouse sets the same headers): same work on both sides.
HAP_FORWARDED='    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request add-header Forwarded for=%[src];host=%[req.hdr(host)];proto=%[req.hdr(X-Forwarded-Proto)]'

cleanup() {
    local rc=$?
    stop "${PIDS[@]}"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
