#!/usr/bin/env bash
# Instructions per request, counted by callgrind: a figure this noisy VM
# cannot move (wall-clock req/s here swing ±10 % from minute to minute), so
# a change's cost or gain shows even when it is 1 %.
#
# What it does
#   1. cargo build --release (unless SKIP_BUILD=1).
#   2. nginx as the upstream (`return 200 "hello\n"`, keep-alive), a
#      manifests directory with Route `hello` plus FILLER routes, the same
#      HAProxy config as benches/load/run.sh (host map, http-reuse always,
#      option forwardfor, nbthread 1, no logging).
#   3. For each VARIANT, starts the proxy under
#      `valgrind --tool=callgrind --instr-atstart=no`, warms it up
#      uncounted, switches counting on (callgrind_control -i on), sends
#      REQUESTS requests with `h2load --h1 -c CONNECTIONS` (keep-alive),
#      switches counting off and reads the total instructions (user space:
#      callgrind does not see the kernel).
#   4. A `scrape` row: instructions of one GET /metrics with the same table,
#      so its per-second cost can be set against the request rate.
#   5. Prints instructions per request per variant, and the ratios; appends
#      one line per variant to benches/load/instructions.tsv with the commit.
#
# Variants (VARIANTS, default "gatehouse gatehouse-json haproxy")
#   gatehouse        access log off
#   gatehouse-json   JSON access log on (to a file)
#   haproxy          HAProxy 2.6 (Debian), logging off
#
# Usage
#   bash benches/load/instructions.sh
#   REQUESTS=50000 VARIANTS=gatehouse bash benches/load/instructions.sh
#   PROTO=h2 VARIANTS="gatehouse haproxy" bash benches/load/instructions.sh
#   PROTO=close VARIANTS="gatehouse haproxy" REQUESTS=5000 bash benches/load/instructions.sh
#
# Environment: REQUESTS [20000], CONNECTIONS [10], WARMUP [2000], FILLER
# [100], SKIP_BUILD [0], PGO [0] (1: measure target/pgo/gatehouse, the
# profile-guided build; rows gatehouse-pgo), BASE_PORT [18380], RECORD [1]
# (append to the .tsv),
# CALLGRIND_ARGS [] (e.g. --cache-sim=yes: cache misses in the kept files),
# KEEP [0] (1: keep the callgrind files of the counted runs in
# benches/load/out/callgrind-<time>/ for `callgrind_annotate --inclusive=yes`).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-10}
WARMUP=${WARMUP:-2000}
FILLER=${FILLER:-100}
SKIP_BUILD=${SKIP_BUILD:-0}
# PROTO=h2: HTTP/2 with prior knowledge, STREAMS concurrent streams per
# connection (HAProxy's port then speaks h2 only); variants get a -h2 suffix
# in the .tsv.
PROTO=${PROTO:-h1}
STREAMS=${STREAMS:-10}
case $PROTO in
h1) H2LOAD_PROTO="--h1" H2_BIND="" SUFFIX="" CURL_PROTO="" ;;
# close: a new connection per request (Connection: close), sent by a small
# Python client (h2load cannot reconnect per request); as h1-close in run.sh.
close) H2LOAD_PROTO="" H2_BIND="" SUFFIX="-close" CURL_PROTO="" ;;
h2) H2LOAD_PROTO="-m $STREAMS" H2_BIND=" proto h2" SUFFIX="-h2" CURL_PROTO="--http2-prior-knowledge" ;;
*) echo "PROTO is h1, h2 or close" >&2; exit 2 ;;
esac
BASE_PORT=${BASE_PORT:-18380}
RECORD=${RECORD:-1}
KEEP=${KEEP:-0}
VARIANTS=${VARIANTS:-"gatehouse gatehouse-json haproxy"}
NGINX_PORT=$BASE_PORT
PROXY_PORT=$((BASE_PORT + 1))
ADMIN_PORT=$((BASE_PORT + 2))
HOST=hello.bench.local

# say, die, TMP, PIDS, cleanup on exit.
# shellcheck source=benches/load/lib.sh
source benches/load/lib.sh
need valgrind:valgrind callgrind_control:valgrind h2load:nghttp2-client nginx:nginx-light python3:python3 \
    haproxy:haproxy curl:curl

# PGO=1: the profile-guided build (scripts/build-pgo.sh, target/pgo);
# gatehouse rows get a -pgo suffix in the .tsv.
PGO=${PGO:-0}
PGO_TAG=""
if [ "$PGO" = 1 ]; then
    PGO_TAG="-pgo"
    if [ "$SKIP_BUILD" != 1 ]; then
        bash "$ROOT/scripts/build-pgo.sh" || die "scripts/build-pgo.sh failed"
    fi
    GATEHOUSE=${GATEHOUSE:-$ROOT/target/pgo/gatehouse}
elif [ "$SKIP_BUILD" != 1 ]; then
    say "cargo build --release"
    cargo build --release --bin gatehouse >&2 || die "cargo build --release failed"
fi
GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}

# ---------------------------------------------------------------- upstream
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { default_type text/plain; return 200 "hello\n"; }
    }
}
EOF
nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/out.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$NGINX_PORT/" 200 10 || die "nginx did not start: $(cat "$TMP/nginx/error.log")"

# ---------------------------------------------------------------- routes
mkdir -p "$TMP/manifests" "$TMP/haproxy"
{
    service_yaml hello 127.0.0.1 "$NGINX_PORT"
    cat <<EOF
---
apiVersion: route.openshift.io/v1
kind: Route
# HAProxy's config here inserts no sticky cookie, so neither does gatehouse
# (same work on both sides).
metadata:
  name: hello
  namespace: bench
  annotations: {haproxy.router.openshift.io/disable_cookies: "true"}
spec:
  host: $HOST
  to: {kind: Service, name: hello}
  port: {targetPort: http}
EOF
    filler_yaml "$FILLER"
} >"$TMP/manifests/routes.yaml"
{
    echo "$HOST be_hello"
    for i in $(seq 1 "$FILLER"); do echo "filler$i.bench.local be_filler$i"; done
} >"$TMP/haproxy/hosts.map"
{
    cat <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend fe_http
    bind 127.0.0.1:$PROXY_PORT$H2_BIND
    use_backend %[req.hdr(host),lower,field(1,:),map($TMP/haproxy/hosts.map)]
backend be_hello
    http-reuse always
$HAP_FORWARDED
    server nginx 127.0.0.1:$NGINX_PORT
EOF
    for i in $(seq 1 "$FILLER"); do
        printf 'backend be_filler%s\n    http-reuse always\n    option forwardfor\n    server s1 127.0.1.%s:8080\n' "$i" "$((i % 250 + 1))"
    done
} >"$TMP/haproxy/haproxy.cfg"

# ---------------------------------------------------------------- measure
# run_variant NAME → prints "instructions requests"
start_variant() {
    local v=$1
    local vg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/$v.%p.out" ${CALLGRIND_ARGS:-})
    case $v in
    gatehouse | gatehouse-json)
        local log=off
        [ "$v" = gatehouse ] || log=json
        env GATEHOUSE_WORKER_THREADS=1 "${vg[@]}" "$GATEHOUSE" run --manifests "$TMP/manifests" \
            --http "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" --access-log "$log" \
            >"$TMP/$v.stdout" 2>"$TMP/$v.log" &
        ;;
    haproxy)
        "${vg[@]}" haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/$v.stdout" 2>"$TMP/$v.log" &
        ;;
    *) die "unknown variant $v (gatehouse, gatehouse-json, haproxy)" ;;
    esac
    VPID=$!
    PIDS+=("$VPID")
    # shellcheck disable=SC2086 # CURL_PROTO: one flag or none
    wait_http "http://127.0.0.1:$PROXY_PORT/" 200 120 "$VPID" -H "Host: $HOST" $CURL_PROTO || die "$v did not serve: $(tail -n 20 "$TMP/$v.log")"
}

# Total instructions callgrind counted while collection was on.
counted() {
    callgrind_control -d "$VPID" >/dev/null 2>&1 || true
    sleep 1
    local total=0 f n
    for f in "$TMP"/"$1".*.out*; do
        [ -e "$f" ] || continue
        n=$(awk '/^totals:/ { print $2 }' "$f")
        total=$((total + ${n:-0}))
    done
    if [ "$KEEP" = 1 ] && [ "$total" -gt 0 ]; then
        mkdir -p "$KEPT"
        for f in "$TMP"/"$1".*.out.*; do mv "$f" "$KEPT/$1.$(basename "$f" | tr -dc 0-9.)callgrind"; done
    fi
    rm -f "$TMP"/"$1".*.out*
    echo "$total"
}

# One request per connection, CONNECTIONS at a time; fails unless every
# answer is a 200.
close_load() { # requests
    python3 - "$1" "$CONNECTIONS" "$PROXY_PORT" "$HOST" <<'PYEOF'
import socket, sys, threading
n, conns, port, host = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
req = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
lock, left, bad = threading.Lock(), [n], []
def worker():
    while True:
        with lock:
            if left[0] == 0:
                return
            left[0] -= 1
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(req)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            bad.append(data[:80])
ts = [threading.Thread(target=worker) for _ in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
if bad:
    sys.exit(f"{len(bad)} of {n} requests did not get a 200: {bad[0]!r}")
PYEOF
}

load() { # requests
    if [ "$PROTO" = close ]; then
        close_load "$1" || die "close_load failed"
        return
    fi
    h2load $H2LOAD_PROTO -n "$1" -c "$CONNECTIONS" -H ":authority: $HOST" "http://127.0.0.1:$PROXY_PORT/" >"$TMP/h2load.txt" 2>&1 ||
        die "h2load failed: $(cat "$TMP/h2load.txt")"
    local ok
    ok=$(awk '/^status codes:/ { print $3 }' "$TMP/h2load.txt")
    [ "$ok" = "$1" ] || die "h2load: only $ok of $1 requests got 2xx: $(cat "$TMP/h2load.txt")"
}

declare -A PER
KEPT=$ROOT/benches/load/out/callgrind-$(date +%Y%m%d-%H%M%S)
# (The .tsv itself does not make the tree dirty: a second run right after
# the first would be labelled +dirty by the first one's rows.)
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!benches/load/instructions.tsv' || echo '+dirty')
for v in $VARIANTS; do
    say "$v: starting under callgrind"
    start_variant "$v"
    load "$WARMUP"
    counted "$v" >/dev/null # discard anything dumped so far
    callgrind_control -i on "$VPID" >/dev/null
    load "$REQUESTS"
    callgrind_control -i off "$VPID" >/dev/null
    n=$(counted "$v")
    PER[$v]=$((n / REQUESTS))
    say "$v: $n instructions for $REQUESTS requests = ${PER[$v]} per request"
    if [ "$v" = gatehouse ]; then
        for _ in 1 2; do curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics"; done
        counted "$v" >/dev/null
        callgrind_control -i on "$VPID" >/dev/null
        for _ in $(seq 10); do curl -s -o "$TMP/metrics.txt" "http://127.0.0.1:$ADMIN_PORT/metrics"; done
        callgrind_control -i off "$VPID" >/dev/null
        PER[scrape]=$(($(counted "$v") / 10))
        say "one /metrics scrape ($(wc -l <"$TMP/metrics.txt") lines, $((FILLER + 1)) routes): ${PER[scrape]} instructions"
    fi
    kill -TERM "$VPID" 2>/dev/null || true
    wait "$VPID" 2>/dev/null || true
done

echo
echo "instructions per request (callgrind, user space; $([ "$PROTO" = close ] && echo "one connection per request" || echo "h2load $H2LOAD_PROTO") -c $CONNECTIONS, $REQUESTS requests, $((FILLER + 1)) routes), commit $COMMIT"
for v in $VARIANTS scrape; do
    [ -n "${PER[$v]:-}" ] || continue
    printf '  %-16s %10s%s\n' "$v" "${PER[$v]}" "$([ "$v" = scrape ] && echo '  (one /metrics scrape)')"
    if [ "$RECORD" = 1 ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -Is)" "$COMMIT" "$v$([ "$v" = haproxy ] || echo "$PGO_TAG")$SUFFIX" "${PER[$v]}" "$REQUESTS" "$CONNECTIONS" >>"$ROOT/benches/load/instructions.tsv"
    fi
done
[ "$KEEP" != 1 ] || echo "  callgrind files: $KEPT"
if [ -n "${PER[gatehouse]:-}" ] && [ -n "${PER[haproxy]:-}" ]; then
    awk -v g="${PER[gatehouse]}" -v h="${PER[haproxy]}" 'BEGIN { printf "  gatehouse/haproxy %.3f\n", g / h }'
fi
if [ -n "${PER[gatehouse]:-}" ] && [ -n "${PER[gatehouse-json]:-}" ]; then
    awk -v g="${PER[gatehouse]}" -v j="${PER[gatehouse-json]}" 'BEGIN { printf "  JSON access log: +%.1f %% instructions per request\n", 100 * (j - g) / g }'
fi
if [ -n "${PER[gatehouse]:-}" ] && [ -n "${PER[scrape]:-}" ]; then
    # A scrape a second against a router serving 40k req/s.
    awk -v g="${PER[gatehouse]}" -v s="${PER[scrape]}" 'BEGIN { printf "  one scrape per second at 40k req/s: +%.3f %% instructions\n", 100 * s / (g * 40000) }'
fi
