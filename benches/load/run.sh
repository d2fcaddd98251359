#!/usr/bin/env bash
# Side-by-side load benchmark: gatehouse vs HAProxy (DESIGN.md, "Performance
# budget", row "keep-alive req/s, 1 core"), plain HTTP/1.1 and TLS.
#
# What it does
#   1. The profile-guided release build, scripts/build-pgo.sh
#      (target/pgo/gatehouse); with PGO=0 cargo build --release
#      (target/release/gatehouse).
#   2. Starts nginx as the upstream (1 worker, access log off, `return 200
#      "hello\n"`, huge keepalive_requests), pinned to LOAD_CPU. A second
#      nginx listener (BASE_PORT+6) serves stub_status only: the number of
#      upstream connections each run opened.
#   3. Writes a manifests directory: Service/Endpoints/Route `hello`
#      (host hello.bench.local → nginx) plus FILLER other routes, so the table
#      is not trivial. With a TLS scenario also an edge Route `hello-tls`
#      (host hello-tls.bench.local → the same Service) with its own
#      certificate.
#   4. Starts gatehouse pinned to PROXY_CPU with one worker thread
#      (GATEHOUSE_WORKER_THREADS=1, --access-log off) and waits for /readyz.
#      With a TLS scenario also --https and a config file whose
#      tls.default_certificate is the same certificate.
#   5. Starts HAProxy pinned to PROXY_CPU (nbthread 1, no logging), with the
#      same routes: a host map (like the OpenShift router's), `http-reuse
#      always` to the upstream, `option forwardfor` (gatehouse appends
#      X-Forwarded-For too). With a TLS scenario also a second frontend
#      `bind … ssl crt <same pem> alpn http/1.1` to the same backend.
#   6. Checks that both proxies answer 200 with nginx's body for the Host (and
#      fails loudly otherwise), warms both up, then loads them alternately
#      (gatehouse, haproxy[, nginx direct], gatehouse, haproxy, … for ROUNDS
#      rounds) with wrk pinned to LOAD_CPU. Both proxies stay up; only one is
#      loaded at a time. Before every round it waits (up to WAIT_IDLE s) until
#      no cargo/rustc runs on the machine; a round at whose runs' end one was
#      running is discarded and run again (RETRIES), or kept and flagged.
#   7. Prints, per scenario, median req/s, median p99 and the proxy's CPU use
#      per proxy, and the ratios gatehouse/haproxy; writes raw per-round
#      numbers and wrk outputs to benches/load/out/<timestamp>/.
#   8. Stops everything it started and removes its temp dir (trap EXIT).
#
# Scenarios (SCENARIOS, default all of them; see also the README table)
#   idle           memory per idle keep-alive connection (IDLE_CONNS, 8000,
#                  held open by idle_conns.py; opened in 4 parts, each idle 10 s;
#                  RSS growth over the last part per connection), measured
#                  first, on fresh processes.
#   idle-h2        the same with HTTP/2 (prior knowledge, one GET on stream 1,
#                  PINGs answered) on the h2 port, after idle.
#   h1-close       HTTP/1.1 with Connection: close: a new connection per
#                  request.
#   body-64k/-1m   64 KiB / 1 MiB responses (files served by nginx).
#   h2             HTTP/2 prior knowledge, CONNECTIONS × 10 streams (h2load;
#                  its latency column is the mean, h2load has no p99).
#   passthrough    TLS passthrough by SNI to nginx's own TLS listener.
#   rate           fixed offered load RATE (20000) req/s with h2load --rps:
#                  cpu us/req = CPU seconds per million requests.
#   swap           h1 keep-alive while the table changes 10×/s with 10k routes
#                  (FILLER raised to 10000).
#   h1             plain HTTP/1.1 keep-alive (the original benchmark).
#   split          h1 keep-alive to a route as OpenShift users write them:
#                  sticky cookies on (the default), 75/25 over two services
#                  (alternateBackends; nginx on 127.0.0.1 and 127.0.0.2).
#                  wrk sends no cookie: every request is balanced and gets
#                  a Set-Cookie (HAProxy: the router template's `cookie
#                  insert indirect nocache httponly`, weights 256/85).
#   tls-keepalive  HTTPS keep-alive: wrk https://127.0.0.1:<port>/ with
#                  Host: hello-tls.bench.local. The URL is an IP, so wrk's
#                  SNI is "127.0.0.1" (no usable server name): both proxies
#                  serve their default certificate, which is the same ECDSA
#                  P-256 one; gatehouse offers ALPN http/1.1 only then, and
#                  HAProxy is configured `alpn http/1.1`; wrk offers no ALPN.
#   tls-handshake  one full TLS handshake per request: as tls-keepalive plus
#                  `Connection: close`. wrk would resume the TLS 1.3 session
#                  on each reconnect (SSL_clear keeps the ticket), so it runs
#                  with an LD_PRELOAD shim (wrk_tls_shim.c, built with cc)
#                  that drops the session: req/s = full handshakes/s. The
#                  shim also counts full/resumed handshakes per run (CSV).
#   tls-resume     (not in the default list) the same with wrk's own
#                  behaviour: every reconnect resumes via a session ticket.
#   TLS version, cipher, key exchange and certificate each proxy negotiates
#   with an OpenSSL client like wrk are checked once and printed.
#   nginx direct (BASELINE) is loaded in h1 only (it serves plain HTTP); in
#   the TLS scenarios watch "load cpu %": wrk's own TLS work shares LOAD_CPU
#   with nginx, and near 100 % the load side is the limit.
#
# Usage (from the repo root; as root it apt-get installs the tools it misses:
# wrk, nghttp2-client, haproxy, nginx-light, libssl-dev, ...):
#   bash benches/load/run.sh
#   DURATION=5 ROUNDS=3 CONNECTIONS=100 bash benches/load/run.sh
#   SCENARIOS="tls-handshake tls-resume" bash benches/load/run.sh
#
# Environment (defaults in brackets)
#   SCENARIOS ["h1 tls-keepalive tls-handshake"]  see above
#   DURATION [10]      seconds per wrk run
#   ROUNDS [5]         measured rounds per proxy
#   CONNECTIONS [50]   wrk connections (wrk uses 1 thread: -t1)
#   WARMUP [3]         seconds of unrecorded load per proxy before round 1
#   FILLER [100]       extra routes/services in the table
#   PROXIES ["gatehouse haproxy"]  run only one side, e.g. PROXIES=haproxy
#   BASELINE [1]       also load nginx directly (no proxy) in every h1 round:
#                      the most the load CPU can drive, the ceiling of any
#                      proxy's req/s
#   SKIP_BUILD [0]     1 = use the existing binary, no cargo build
#   PGO [1]            1 = the profile-guided build (scripts/build-pgo.sh:
#                      two release builds and a short training run of this
#                      script), the build we ship; 0 = plain cargo build
#                      --release
#   GATEHOUSE [target/pgo/gatehouse, target/release/gatehouse with PGO=0]
#                      the binary to run (with SKIP_BUILD=1)
#   PROXY_CPU [0], LOAD_CPU [1]    CPUs for the proxies / for nginx + wrk
#   WAIT_IDLE [600]    seconds to wait for cargo/rustc to finish before each
#                      round (then it goes on with a warning); 0 = don't wait
#   RETRIES [2]        times a round is run again when cargo/rustc appeared
#                      during it (it is kept, flagged, after the last retry)
#   BASE_PORT [18080]  nginx = BASE_PORT, gatehouse http/admin = +1/+2,
#                      haproxy = +3, gatehouse https = +4, haproxy https = +5,
#                      nginx stub_status = +6, gatehouse-b http/admin/https
#                      = +7/+8/+12
#
# "proxy cpu %" is the proxy's user+system time over the run divided by wall
# time (100 % = its whole core); "load cpu %" is how busy LOAD_CPU (nginx +
# wrk) was. Proxy well below 100 % with the load CPU near 100 % means the
# load side was the bottleneck and the req/s are not the proxy's limit.
# "cpu us/req" is proxy CPU time per request (per handshake in tls-handshake):
# the comparable figure when the load side, not the proxy, is saturated.
# "load us/req" is LOAD_CPU's busy time per request in the same run (wrk +
# nginx + the loopback work their sends do): 1e6 / it is the req/s the load
# side could reach at 100 %, the ceiling that round had. It is higher with a
# proxy in between than without one ("direct"): every request then wakes a
# process on the other CPU twice. In the ratio table, "load cap" is, per
# round, that ceiling for gatehouse over HAProxy's req/s: the highest
# throughput ratio the load side let the round show. A throughput ratio at
# its load cap ("*") was set by the load side, not by the proxies.
# "upstream conns" is how many connections nginx accepted during the run:
# about 0 once warm, unless a proxy stops reusing its upstream connections.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=${WARMUP:-3}
FILLER=${FILLER:-100}
PROXIES=${PROXIES:-"gatehouse haproxy"}
BASELINE=${BASELINE:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
PGO=${PGO:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18080}
SCENARIOS=${SCENARIOS:-"idle idle-h2 h1 split h1-close body-64k body-1m h2 tls-keepalive tls-handshake passthrough rate swap"}
# Observability cost (issue 7): GH_ACCESS_LOG=json writes gatehouse's access
# log (to its log file); SCRAPE=1 GETs gatehouse's /metrics every second
# during the runs. Compare the gatehouse/haproxy ratio with and without.
GH_ACCESS_LOG=${GH_ACCESS_LOG:-off}
SCRAPE=${SCRAPE:-0}
# A/B: a second gatehouse ("gatehouse-b") loaded in the same rounds, with
# extra arguments (GH_B_ARGS, e.g. "--access-log json") and/or another
# binary (GATEHOUSE_B). Same-run ratios cancel this VM's drift.
GH_B_ARGS=${GH_B_ARGS:-}
GATEHOUSE_B=${GATEHOUSE_B:-}
WAIT_IDLE=${WAIT_IDLE:-600}
RETRIES=${RETRIES:-2}
# Instructions per request (user + kernel, from `perf stat -p` over each
# run): nearly free of the machine's noise, so small changes show. Off when
# perf is missing or not allowed.
PERF=${PERF:-1}

NGINX_PORT=$BASE_PORT
GH_PORT=$((BASE_PORT + 1))
GH_ADMIN=$((BASE_PORT + 2))
HAP_PORT=$((BASE_PORT + 3))
GH_HTTPS=$((BASE_PORT + 4))
HAP_HTTPS=$((BASE_PORT + 5))
NGINX_STATUS=$((BASE_PORT + 6))
GHB_PORT=$((BASE_PORT + 7))
GHB_ADMIN=$((BASE_PORT + 8))
HAP_H2=$((BASE_PORT + 9))
NGINX_TLS=$((BASE_PORT + 10))
HAP_PASS=$((BASE_PORT + 11))
GHB_HTTPS=$((BASE_PORT + 12))
PASS_HOST=pass.bench.local
RATE=${RATE:-20000}
IDLE_CONNS=${IDLE_CONNS:-8000}
HOST=hello.bench.local
SPLIT_HOST=split.bench.local
TLS_HOST=hello-tls.bench.local
BODY=hello

# say, die, TMP, PIDS, cleanup on exit.
# shellcheck source=benches/load/lib.sh
source benches/load/lib.sh
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
read -r -a SCEN <<<"$SCENARIOS"
[ ${#SCEN[@]} -gt 0 ] || die "SCENARIOS is empty"
TLS=0
IDLE_KINDS=()
for s in "${SCEN[@]}"; do
    case $s in
    h1 | split | h1-close | body-64k | body-1m | h2 | rate | swap) ;;
    tls-keepalive | tls-handshake | tls-resume | passthrough) TLS=1 ;;
    idle | idle-h2) IDLE_KINDS+=("$s") ;;
    *) die "unknown scenario '$s' in SCENARIOS (h1 split h1-close body-64k body-1m h2 tls-keepalive tls-handshake tls-resume passthrough rate swap idle idle-h2)" ;;
    esac
done
# The idle scenarios are not load runs: each is measured once per proxy,
# before the load scenarios.
LOAD_SCEN=()
for s in "${SCEN[@]}"; do [[ $s == idle* ]] || LOAD_SCEN+=("$s"); done
if [[ " ${SCEN[*]} " == *" swap "* ]] && [ -n "${GH_B_ARGS:-}${GATEHOUSE_B:-}" ]; then
    say "warning: swap with gatehouse-b: both watch the same manifests, so the idle one compiles on the proxy CPU while the other is loaded; the b/a ratio of swap is biased"
fi
if [[ " ${SCEN[*]} " == *" swap "* ]] && [ "$FILLER" -lt 10000 ]; then
    say "swap scenario: 10k routes (FILLER=10000)"
    FILLER=10000
fi

need wrk:wrk h2load:nghttp2-client python3:python3 curl:curl taskset:util-linux \
    haproxy:haproxy awk:gawk nginx:nginx-light
if [ "$TLS" = 1 ]; then
    # the TLS scenarios build wrk_tls_shim.so against OpenSSL
    need openssl:openssl cc:gcc /usr/include/openssl/ssl.h:libssl-dev
fi
ncpu=$(nproc)
[ "$PROXY_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] ||
    die "PROXY_CPU=$PROXY_CPU / LOAD_CPU=$LOAD_CPU but only $ncpu CPUs"
[ "$PROXY_CPU" != "$LOAD_CPU" ] || say "warning: proxy and load generator share CPU $PROXY_CPU"

for p in $NGINX_PORT $GH_PORT $GH_ADMIN $HAP_PORT $GH_HTTPS $HAP_HTTPS $NGINX_STATUS; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p is in use on 127.0.0.1 (set BASE_PORT)"
    fi
done

want() { [[ " $PROXIES " == *" $1 "* ]]; }

if [ "$PERF" = 1 ]; then
    if ! command -v perf >/dev/null || ! perf stat -x, -e instructions -- true 2>&1 | grep -q '^[0-9]'; then
        say "perf cannot count instructions here (no perf, or no hardware counters in this VM): instructions/request off; benches/load/instructions.sh counts them with callgrind"
        PERF=0
    fi
fi

# ---------------------------------------------------------------- build
if [ "$PGO" = 1 ]; then
    GATEHOUSE=${GATEHOUSE:-$ROOT/target/pgo/gatehouse}
else
    GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}
fi
if want gatehouse; then
    if [ "$SKIP_BUILD" != 1 ] && [ "$PGO" = 1 ]; then
        say "scripts/build-pgo.sh (profile-guided release build)"
        bash scripts/build-pgo.sh || die "scripts/build-pgo.sh failed"
    elif [ "$SKIP_BUILD" != 1 ]; then
        say "cargo build --release"
        cargo build --release --bin gatehouse >&2 || die "cargo build --release failed"
    fi
    [ -x "$GATEHOUSE" ] || die "$GATEHOUSE not found (build it, or PROXIES=haproxy)"
fi

# ---------------------------------------------------------------- helpers
# Start a command in the background on a CPU; its pid goes to PIDS and $LAST.
start() {
    local cpu=$1 log=$2
    shift 2
    taskset -c "$cpu" "$@" >"$log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
}

# nginx's worker (the master does no request work).
nginx_worker() { pgrep -P "$NGINX_PID" | head -n 1; }

# utime+stime of a process (all threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# "busy total" jiffies of one CPU, from /proc/stat.
cpu_busy() { awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# ---------------------------------------------------------------- TLS material
# One ECDSA P-256 certificate for both proxies (gatehouse: the edge route's
# certificate and the default certificate; HAProxy: its only certificate).
if [ "$TLS" = 1 ]; then
    mkdir -p "$TMP/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=$TLS_HOST" -addext "subjectAltName=DNS:$TLS_HOST" \
        -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" >"$TMP/tls/openssl.log" 2>&1 ||
        die "openssl req failed: $(cat "$TMP/tls/openssl.log")"
    cat "$TMP/tls/cert.pem" "$TMP/tls/key.pem" >"$TMP/tls/combined.pem"
    # The passthrough backend's own certificate (the client sees it through
    # both proxies).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=$PASS_HOST" -addext "subjectAltName=DNS:$PASS_HOST" \
        -keyout "$TMP/tls/pass-key.pem" -out "$TMP/tls/pass-cert.pem" >>"$TMP/tls/openssl.log" 2>&1 ||
        die "openssl req failed: $(cat "$TMP/tls/openssl.log")"
    CERT_FP=$(openssl x509 -in "$TMP/tls/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)
    cc -O2 -shared -fPIC -o "$TMP/wrk_tls_shim.so" "$ROOT/benches/load/wrk_tls_shim.c" -lssl -ldl \
        >"$TMP/tls/cc.log" 2>&1 || die "building wrk_tls_shim.so failed: $(cat "$TMP/tls/cc.log")"
    say "ECDSA P-256 certificate for $TLS_HOST (sha256 $CERT_FP)"
fi

# ---------------------------------------------------------------- nginx
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport backlog=4096;
        # The split route's second service.
        listen 127.0.0.2:$NGINX_PORT reuseport backlog=4096;
        location / {
            default_type text/plain;
            return 200 "$BODY\n";
        }
        # Large responses (body-64k, body-1m), from files.
        location = /64k { default_type application/octet-stream; alias $TMP/nginx/64k; }
        location = /1m { default_type application/octet-stream; alias $TMP/nginx/1m; }
    }
$([ "$TLS" = 0 ] || cat <<TLSEOF
    # The passthrough route's backend: TLS ends here, not at the proxy.
    server {
        listen 127.0.0.1:$NGINX_TLS ssl reuseport backlog=4096;
        ssl_certificate $TMP/tls/pass-cert.pem;
        ssl_certificate_key $TMP/tls/pass-key.pem;
        location / { default_type text/plain; return 200 "$BODY\n"; }
    }
TLSEOF
)
    # Counters only (accepted connections), never loaded.
    server {
        listen 127.0.0.1:$NGINX_STATUS;
        location / { stub_status; }
    }
}
EOF
head -c 65536 /dev/urandom >"$TMP/nginx/64k"
head -c 1048576 /dev/urandom >"$TMP/nginx/1m"
# nginx's workers (user nobody when started as root) read them.
chmod a+rx "$TMP" "$TMP/nginx"
chmod a+r "$TMP/nginx/64k" "$TMP/nginx/1m"
nginx -t -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/test.log" 2>&1 ||
    die "nginx rejects its config: $(cat "$TMP/nginx/test.log")"
start "$LOAD_CPU" "$TMP/nginx/stdout.log" \
    nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
NGINX_PID=$LAST
wait_http "http://127.0.0.1:$NGINX_PORT/" 200 10 "$NGINX_PID" ||
    die "nginx did not come up: $(cat "$TMP/nginx/error.log" "$TMP/nginx/stdout.log" 2>/dev/null)"
say "nginx on 127.0.0.1:$NGINX_PORT (cpu $LOAD_CPU)"

# nginx's accepted-connections counter.
nginx_accepts() { curl -s --max-time 2 "http://127.0.0.1:$NGINX_STATUS/" | awk 'NR == 3 { print $1 }'; }

# ---------------------------------------------------------------- routes
# Filler endpoints stay on loopback (127.0.1.x, nothing listens): a benchmark
# never sends a packet off this machine, even by mistake.

MANIFESTS=$TMP/manifests
mkdir -p "$MANIFESTS"
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
} >"$MANIFESTS/hello.yaml"
# The split scenario's route: cookies on, 75/25 over two services.
{
    service_yaml split-a 127.0.0.1 "$NGINX_PORT"
    echo ---
    service_yaml split-b 127.0.0.2 "$NGINX_PORT"
    cat <<EOF
---
apiVersion: route.openshift.io/v1
kind: Route
metadata:
  name: split
  namespace: bench
  annotations: {router.openshift.io/cookie_name: bench_split}
spec:
  host: $SPLIT_HOST
  to: {kind: Service, name: split-a, weight: 75}
  alternateBackends: [{kind: Service, name: split-b, weight: 25}]
  port: {targetPort: http}
EOF
} >"$MANIFESTS/split.yaml"
filler_yaml "$FILLER" >"$MANIFESTS/filler.yaml"
if [ "$TLS" = 1 ]; then
    cat >"$MANIFESTS/hello-tls.yaml" <<EOF
apiVersion: route.openshift.io/v1
kind: Route
metadata:
  name: hello-tls
  namespace: bench
  annotations: {haproxy.router.openshift.io/disable_cookies: "true"}
spec:
  host: $TLS_HOST
  to: {kind: Service, name: hello}
  port: {targetPort: http}
  tls:
    termination: edge
    certificate: |
$(sed 's/^/      /' "$TMP/tls/cert.pem")
    key: |
$(sed 's/^/      /' "$TMP/tls/key.pem")
EOF
    {
        service_yaml pass 127.0.0.1 "$NGINX_TLS" https
        cat <<EOF
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: pass, namespace: bench}
spec:
  host: $PASS_HOST
  to: {kind: Service, name: pass}
  port: {targetPort: https}
  tls: {termination: passthrough}
EOF
    } >"$MANIFESTS/pass.yaml"
    cat >"$TMP/gatehouse.yaml" <<EOF
tls:
  default_certificate: $TMP/tls/combined.pem
  handshake_timeout: 10s
EOF
fi

# ---------------------------------------------------------------- haproxy
mkdir -p "$TMP/haproxy"
{
    echo "$HOST be_hello"
    echo "$SPLIT_HOST be_split"
    echo "swap.bench.local be_filler1"
    for i in $(seq 1 "$FILLER"); do echo "filler$i.bench.local be_filler$i"; done
    [ "$TLS" = 0 ] || echo "$TLS_HOST be_hello"
} >"$TMP/haproxy/hosts.map"
{
    cat <<EOF
global
    nbthread 1
    maxconn 9000
    # The swap scenario changes the host map through the runtime API (no
    # reload), as a dynamic HAProxy controller would.
    stats socket $TMP/haproxy/admin.sock level admin

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 300s

frontend fe_http
    bind 127.0.0.1:$HAP_PORT
    # Host → backend through a map, as the OpenShift router does; an unknown
    # host finds no backend and gets 503, like gatehouse.
    use_backend %[req.hdr(host),lower,field(1,:),map($TMP/haproxy/hosts.map)]

frontend fe_h2c
    # HTTP/2 with prior knowledge on a plain port, as gatehouse's :80 serves.
    bind 127.0.0.1:$HAP_H2 proto h2
    use_backend %[req.hdr(host),lower,field(1,:),map($TMP/haproxy/hosts.map)]
EOF
    if [ "$TLS" = 1 ]; then
        # Passthrough by SNI (gatehouse does it on its one HTTPS port; here a
        # frontend of its own, which spares HAProxy the OpenShift router's
        # extra hop for terminated routes).
        cat <<EOF

frontend fe_pass
    mode tcp
    bind 127.0.0.1:$HAP_PASS
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend be_pass if { req_ssl_sni -i $PASS_HOST }

backend be_pass
    mode tcp
    server nginx_tls 127.0.0.1:$NGINX_TLS
EOF
        # Edge termination, same backend. TLS 1.2 + 1.3 like gatehouse (wrk
        # negotiates 1.3 with both); ALPN http/1.1 only, as gatehouse offers
        # on its default certificate; session tickets and cache on (defaults),
        # as gatehouse has them.
        cat <<EOF

frontend fe_https
    bind 127.0.0.1:$HAP_HTTPS ssl crt $TMP/tls/combined.pem alpn http/1.1 ssl-min-ver TLSv1.2
    use_backend %[req.hdr(host),lower,field(1,:),map($TMP/haproxy/hosts.map)]
EOF
    fi
    cat <<EOF

backend be_hello
    http-reuse always
$HAP_FORWARDED
    server nginx 127.0.0.1:$NGINX_PORT

backend be_split
    # The OpenShift router template's backend for a route with cookies on
    # and alternateBackends (several services: roundrobin).
    balance roundrobin
    cookie bench_split insert indirect nocache httponly
    http-reuse always
$HAP_FORWARDED
    server a 127.0.0.1:$NGINX_PORT weight 256 cookie 6d1c0f9ae2b34a17
    server b 127.0.0.2:$NGINX_PORT weight 85 cookie 0b8e5d2c47f1a936
EOF
    for i in $(seq 1 "$FILLER"); do
        printf '\nbackend be_filler%s\n    http-reuse always\n    option forwardfor\n    server s1 %s:8080\n' \
            "$i" "$(filler_ip "$i")"
    done
} >"$TMP/haproxy/haproxy.cfg"
haproxy -c -q -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/check.log" 2>&1 ||
    die "haproxy rejects its config: $(cat "$TMP/haproxy/check.log")"

# ---------------------------------------------------------------- proxies
declare -A PORT PID TLSPORT NEGOTIATED H2PORT PASSPORT
if want gatehouse; then
    GH_TLS_ARGS=()
    [ "$TLS" = 0 ] || GH_TLS_ARGS=(--config "$TMP/gatehouse.yaml" --https "127.0.0.1:$GH_HTTPS")
    start "$PROXY_CPU" "$TMP/gatehouse.log" env GATEHOUSE_WORKER_THREADS=1 \
        "$GATEHOUSE" run --manifests "$MANIFESTS" \
        --http "127.0.0.1:$GH_PORT" --admin "127.0.0.1:$GH_ADMIN" --access-log "$GH_ACCESS_LOG" "${GH_TLS_ARGS[@]}"
    PID[gatehouse]=$LAST
    PORT[gatehouse]=$GH_PORT
    TLSPORT[gatehouse]=$GH_HTTPS
    H2PORT[gatehouse]=$GH_PORT
    PASSPORT[gatehouse]=$GH_HTTPS
    wait_http "http://127.0.0.1:$GH_ADMIN/readyz" 200 30 "$LAST" ||
        die "gatehouse did not become ready on 127.0.0.1:$GH_ADMIN/readyz; its log:
$(tail -n 40 "$TMP/gatehouse.log")"
    if [ -n "$GH_B_ARGS$GATEHOUSE_B" ]; then
        read -r -a b_args <<<"$GH_B_ARGS"
        [[ " $GH_B_ARGS " == *" --access-log "* ]] || b_args+=(--access-log "$GH_ACCESS_LOG")
        [ "$TLS" = 0 ] || b_args+=(--config "$TMP/gatehouse.yaml" --https "127.0.0.1:$GHB_HTTPS")
        start "$PROXY_CPU" "$TMP/gatehouse-b.log" env GATEHOUSE_WORKER_THREADS=1 \
            "${GATEHOUSE_B:-$GATEHOUSE}" run --manifests "$MANIFESTS" \
            --http "127.0.0.1:$GHB_PORT" --admin "127.0.0.1:$GHB_ADMIN" "${b_args[@]}"
        PID[gatehouse-b]=$LAST
        PORT[gatehouse-b]=$GHB_PORT
        TLSPORT[gatehouse-b]=$GHB_HTTPS
        H2PORT[gatehouse-b]=$GHB_PORT
        PASSPORT[gatehouse-b]=$GHB_HTTPS
        wait_http "http://127.0.0.1:$GHB_ADMIN/readyz" 200 30 "$LAST" ||
            die "gatehouse-b did not become ready; its log:
$(tail -n 40 "$TMP/gatehouse-b.log")"
        say "gatehouse-b on 127.0.0.1:$GHB_PORT: ${GATEHOUSE_B:-$GATEHOUSE} $GH_B_ARGS"
    fi
    say "gatehouse on 127.0.0.1:$GH_PORT$([ "$TLS" = 0 ] || echo ", https :$GH_HTTPS") (cpu $PROXY_CPU, 1 worker thread), admin :$GH_ADMIN, access log $GH_ACCESS_LOG"
    if [ "$SCRAPE" = 1 ]; then
        start "$LOAD_CPU" "$TMP/scrape.log" bash -c \
            "while sleep 1; do curl -s -o /dev/null http://127.0.0.1:$GH_ADMIN/metrics; done"
        say "scraping gatehouse /metrics every second"
    fi
fi
if want haproxy; then
    start "$PROXY_CPU" "$TMP/haproxy.log" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
    PID[haproxy]=$LAST
    PORT[haproxy]=$HAP_PORT
    TLSPORT[haproxy]=$HAP_HTTPS
    H2PORT[haproxy]=$HAP_H2
    PASSPORT[haproxy]=$HAP_PASS
    wait_http "http://127.0.0.1:$HAP_PORT/" 503 10 "$LAST" ||
        die "haproxy did not come up; its log:
$(tail -n 40 "$TMP/haproxy.log")"
    say "haproxy $(haproxy -v | awk 'NR == 1 { print $3 }') on 127.0.0.1:$HAP_PORT$([ "$TLS" = 0 ] || echo ", https :$HAP_HTTPS") (cpu $PROXY_CPU, nbthread 1)"
fi
[ ${#PID[@]} -gt 0 ] || die "PROXIES=\"$PROXIES\" names neither gatehouse nor haproxy"
ORDER=()
for p in gatehouse haproxy; do want "$p" && ORDER+=("$p"); done
[ -z "${PID[gatehouse-b]:-}" ] || ORDER+=(gatehouse-b)

# ---------------------------------------------------------------- verify
for p in "${ORDER[@]}"; do
    url="http://127.0.0.1:${PORT[$p]}/"
    code=$(curl -s --max-time 5 -H "Host: $HOST" -o "$TMP/body" -w '%{http_code}' "$url" || true)
    body=$(cat "$TMP/body" 2>/dev/null || true) # $(…) drops nginx's trailing newline
    [ "$code" = 200 ] && [ "$body" = "$BODY" ] ||
        die "$p: GET $url with Host: $HOST gave status '$code', body '$body'; expected 200 '$BODY'"
    code=$(curl -s -o /dev/null --max-time 5 -H "Host: HELLO.Bench.Local:80" -w '%{http_code}' "$url" || true)
    [ "$code" = 200 ] || die "$p: Host: HELLO.Bench.Local:80 gave $code, expected 200"
    code=$(curl -s -o /dev/null --max-time 5 -H "Host: nobody.bench.local" -w '%{http_code}' "$url" || true)
    [ "$code" = 503 ] || say "warning: $p answers $code for an unknown host (expected 503)"
    if [[ " ${SCEN[*]} " == *" split "* ]]; then
        cookie=$(curl -s -D - -o /dev/null --max-time 5 -H "Host: $SPLIT_HOST" "$url" | tr -d '\r' |
            awk 'tolower($1) == "set-cookie:" && $2 ~ /^bench_split=/ { print $2 }')
        [ -n "$cookie" ] || die "$p: Host: $SPLIT_HOST set no bench_split cookie"
    fi
    say "$p: 200 '$BODY' for Host: $HOST"
done

for p in "${ORDER[@]}"; do
    [ -n "${H2PORT[$p]:-}" ] || continue
    code=$(curl -s --http2-prior-knowledge --max-time 5 -H "Host: $HOST" -o /dev/null -w '%{http_code} %{http_version}' "http://127.0.0.1:${H2PORT[$p]}/" || true)
    [ "$code" = "200 2" ] || die "$p: HTTP/2 prior knowledge on :${H2PORT[$p]} gave '$code', expected '200 2'"
    if [ "$TLS" = 1 ] && [ -n "${PASSPORT[$p]:-}" ]; then
        sub=$(curl -s --max-time 5 --cacert "$TMP/tls/pass-cert.pem" --resolve "$PASS_HOST:${PASSPORT[$p]}:127.0.0.1" \
            -o /dev/null -w '%{http_code}' "https://$PASS_HOST:${PASSPORT[$p]}/" || true)
        [ "$sub" = 200 ] || die "$p: passthrough to $PASS_HOST (nginx's own certificate) gave '$sub'"
    fi
done

# ---------------------------------------------------------------- verify TLS
# What an OpenSSL client like wrk negotiates: wrk sends the URL's host as SNI
# (here "127.0.0.1", which names no route) and offers no ALPN.
if [ "$TLS" = 1 ]; then
    for p in "${ORDER[@]}"; do
        port=${TLSPORT[$p]}
        url="https://127.0.0.1:$port/"
        code=$(curl -sk --max-time 5 -H "Host: $TLS_HOST" -o "$TMP/body" -w '%{http_code}' "$url" || true)
        body=$(cat "$TMP/body" 2>/dev/null || true)
        [ "$code" = 200 ] && [ "$body" = "$BODY" ] ||
            die "$p: GET $url with Host: $TLS_HOST gave status '$code', body '$body'; expected 200 '$BODY'"
        # SNI = the route's host, verified against the bench certificate (the
        # edge route's own certificate on gatehouse; not what wrk does).
        sni=$(curl -s --max-time 5 --cacert "$TMP/tls/cert.pem" --resolve "$TLS_HOST:$port:127.0.0.1" \
            -o /dev/null -w '%{http_code} HTTP/%{http_version}' "https://$TLS_HOST:$port/" || true)
        [ "${sni%% *}" = 200 ] ||
            die "$p: GET https://$TLS_HOST:$port/ (SNI $TLS_HOST, verified against the bench certificate) gave '$sni'"
        info=$(openssl s_client -connect "127.0.0.1:$port" -servername 127.0.0.1 </dev/null 2>/dev/null || true)
        fp=$(openssl x509 -noout -fingerprint -sha256 <<<"$info" 2>/dev/null | cut -d= -f2 || true)
        [ "$fp" = "$CERT_FP" ] ||
            die "$p serves certificate '$fp' to a wrk-like client (SNI 127.0.0.1), not the bench certificate $CERT_FP"
        # Protocol and cipher from the "New, TLSv1.3, Cipher is …" line: the
        # SSL-Session block is missing when s_client closes before the TLS
        # 1.3 session ticket arrives (a race seen in one run).
        NEGOTIATED[$p]=$(awk -F': *' '/^New, / { n = $0; sub(/^New, /, "", n); split(n, f, ", Cipher is "); v = f[1]; c = f[2] }
            /^Server Temp Key:/ { k = $2 } /^Peer signature type:/ { s = $2 } /^ALPN protocol:/ { a = $2 }
            END { printf "%s %s, key exchange %s, signature %s, ALPN %s", v, c, k, s, a == "" ? "none" : a }' <<<"$info")
        say "$p TLS to a wrk-like client (SNI 127.0.0.1, no ALPN): ${NEGOTIATED[$p]}; with SNI $TLS_HOST curl gets ${sni#* }"
    done
fi

# ---------------------------------------------------------------- load
# Other builds on this 2-CPU machine steal CPU: wait for them before a round.
compilers() { pgrep -f '[c]argo |[r]ustc' | paste -sd, - || true; }
wait_idle() {
    local busy waited=0
    [ "$WAIT_IDLE" -gt 0 ] || return 0
    while busy=$(compilers) && [ -n "$busy" ]; do
        if [ "$waited" -ge "$WAIT_IDLE" ]; then
            say "warning: cargo/rustc still running after ${WAIT_IDLE}s (pids $busy); measuring anyway, numbers are suspect"
            return 0
        fi
        [ "$waited" -gt 0 ] || say "waiting for cargo/rustc to finish (pids $busy; up to ${WAIT_IDLE}s)"
        sleep 10
        waited=$((waited + 10))
    done
}

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$ROOT/benches/load/out/$STAMP
mkdir -p "$OUT"
CSV=$OUT/rounds.csv
echo "scenario,round,proxy,req_per_s,p99_us,proxy_cpu_pct,load_cpu_pct,requests,non_2xx,socket_errors,upstream_conns,tls_full,tls_resumed,compilers_running,proxy_cpu_us_per_req,instructions_per_req" >"$CSV"
{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) cpus, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "gatehouse: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
    echo "haproxy: $(haproxy -v | head -n 1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "wrk: -t1 -c$CONNECTIONS -d${DURATION}s, warmup ${WARMUP}s, rounds $ROUNDS, filler routes $FILLER"
    echo "cpus: proxy $PROXY_CPU, nginx + wrk $LOAD_CPU"
    echo "scenarios: ${SCEN[*]}"
    if [ "$TLS" = 1 ]; then
        echo "tls: $(openssl version), certificate ECDSA P-256 CN=$TLS_HOST sha256 $CERT_FP"
        for p in "${ORDER[@]}"; do echo "tls $p: ${NEGOTIATED[$p]}"; done
    fi
} >"$OUT/env.txt"
cp "$TMP/haproxy/haproxy.cfg" "$TMP/nginx/nginx.conf" "$OUT/"
[ "$TLS" = 0 ] || cp "$TMP/gatehouse.yaml" "$OUT/"

# wrk's latency figures ("1.23ms", "845.00us", "1.02s") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else { print "NaN"; exit }
        printf "%.1f", n * m }'
}

# run_wrk SCENARIO PROXY SECONDS FILE → sets RES="req_per_s p99_us cpu_pct
# load_cpu_pct requests non2xx socket_errors upstream_conns tls_full tls_resumed busy
# cpu_us_per_req"
# (not printed: a `die` must run in this shell, not in a command substitution).
run_wrk() {
    local s=$1 p=$2 secs=$3 file=$4 t0 t1 c0 c1 l0 l1 a0 a1 url
    local args=(-t1 -c"$CONNECTIONS" -d"${secs}s") pre=() tool=wrk
    case $s in
    h1 | swap)
        args+=(-H "Host: $HOST" --latency)
        url="http://127.0.0.1:${PORT[$p]}/"
        ;;
    split)
        args+=(-H "Host: $SPLIT_HOST" --latency)
        url="http://127.0.0.1:${PORT[$p]}/"
        ;;
    h1-close)
        args+=(-H "Host: $HOST" -H "Connection: close" --latency)
        url="http://127.0.0.1:${PORT[$p]}/"
        ;;
    body-64k | body-1m)
        args+=(-H "Host: $HOST" --latency)
        url="http://127.0.0.1:${PORT[$p]}/${s#body-}"
        ;;
    h2)
        # h2load: CONNECTIONS connections × 10 streams each, prior knowledge.
        tool=h2load
        args=(-c "$CONNECTIONS" -m 10 -D "$secs" -H ":authority: $HOST")
        url="http://127.0.0.1:${H2PORT[$p]}/"
        ;;
    rate)
        # A fixed offered load: the figure is CPU per request, not req/s.
        tool=h2load
        args=(--h1 -c "$CONNECTIONS" --rps $((RATE / CONNECTIONS)) -D "$secs" -H ":authority: $HOST")
        url="http://127.0.0.1:${PORT[$p]}/"
        ;;
    passthrough)
        # TLS keep-alive through to nginx's own TLS; wrk's SNI set to the
        # passthrough route's host by the shim.
        args+=(--latency)
        url="https://127.0.0.1:${PASSPORT[$p]}/"
        rm -f "$file.tls"
        pre=(env LD_PRELOAD="$TMP/wrk_tls_shim.so" WRK_TLS_STATS="$file.tls" WRK_NO_RESUME=1 WRK_SNI="$PASS_HOST")
        ;;
    *)
        args+=(-H "Host: $TLS_HOST")
        [ "$s" = tls-keepalive ] || args+=(-H "Connection: close")
        args+=(--latency)
        url="https://127.0.0.1:${TLSPORT[$p]}/"
        rm -f "$file.tls"
        pre=(env LD_PRELOAD="$TMP/wrk_tls_shim.so" WRK_TLS_STATS="$file.tls"
            WRK_NO_RESUME="$([ "$s" = tls-resume ] && echo 0 || echo 1)")
        ;;
    esac
    local perf_pid=""
    if [ "$PERF" = 1 ] && [ "$p" != direct ]; then
        perf stat -x, -e instructions -p "${PID[$p]}" -o "$file.perf" 2>/dev/null &
        perf_pid=$!
    fi
    a0=$(nginx_accepts)
    c0=$(cpu_ticks "${PID[$p]}")
    l0=$(cpu_busy "$LOAD_CPU")
    t0=$(date +%s%N)
    local swapper=""
    if [ "$s" = swap ]; then
        start_swapper "$p"
        swapper=$LAST
    fi
    taskset -c "$LOAD_CPU" "${pre[@]}" "$tool" "${args[@]}" "$url" >"$file" 2>&1 ||
        die "$tool failed against $p ($s): $(cat "$file")"
    t1=$(date +%s%N)
    if [ -n "$swapper" ]; then
        kill "$swapper" 2>/dev/null || true
        wait "$swapper" 2>/dev/null || true
    fi
    c1=$(cpu_ticks "${PID[$p]}")
    l1=$(cpu_busy "$LOAD_CPU")
    a1=$(nginx_accepts)
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
    fi
    kill -0 "${PID[$p]}" 2>/dev/null || die "$p died under load ($s)"
    local rps p99 reqs non2xx sockerr cpu load full=- resumed=- busy=0
    if [ "$tool" = h2load ]; then
        # h2load reports no percentiles: the latency column holds the mean.
        rps=$(awk '/^finished in/ { gsub(/,/, "", $4); print $4 }' "$file")
        p99=$(awk '/^time for request:/ { print $6 }' "$file")
        reqs=$(awk '/^requests:/ { print $8 }' "$file")
        non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' "$file")
        sockerr=$(awk '/^requests:/ { print $10 + $12 + $14 }' "$file")
    else
        rps=$(awk '/^Requests\/sec:/ { print $2 }' "$file")
        p99=$(awk '$1 == "99%" { print $2 }' "$file")
        reqs=$(awk '/requests in/ { print $1 }' "$file")
        non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$file")
        sockerr=$(awk -F'Socket errors: ' 'NF > 1 { gsub(/[a-z]+ /, "", $2); gsub(/,/, "", $2); split($2, a, " "); print a[1] + a[2] + a[3] + a[4] }' "$file")
    fi
    [ -n "$rps" ] && [ -n "$p99" ] || die "cannot parse wrk output for $p ($s): $(cat "$file")"
    cpu=$(awk -v c="$((c1 - c0))" -v hz="$HZ" -v ns="$((t1 - t0))" 'BEGIN { printf "%.1f", 100 * c / hz / (ns / 1e9) }')
    load=$(awk -v a="$l0" -v b="$l1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f", 100 * (y[1] - x[1]) / (y[2] - x[2] + 1e-9) }')
    if [ "${#pre[@]}" -gt 0 ]; then
        [ -s "$file.tls" ] && read -r _ full _ resumed <"$file.tls" ||
            say "warning: no handshake counts from wrk_tls_shim ($file.tls)"
    fi
    [ -z "$(compilers)" ] || busy=1
    # Minus the stub_status request itself.
    RES="$rps $(to_us "$p99") $cpu $load ${reqs:-0} ${non2xx:-0} ${sockerr:-0} $((a1 - a0 - 1)) $full $resumed $busy"
    RES+=" $(awk -v c="$cpu" -v r="$rps" 'BEGIN { printf "%.2f", (r > 0 ? c * 1e4 / r : 0) }')"
    local instr=0
    [ ! -s "$file.perf" ] || instr=$(awk -F, '$3 ~ /^instructions/ && $1 ~ /^[0-9]+$/ { print $1 }' "$file.perf")
    RES+=" $(awk -v i="${instr:-0}" -v n="${reqs:-0}" 'BEGIN { printf "%.0f", (n > 0 ? i / n : 0) }')"
}

# The table changes 10 times a second while the proxy is loaded (swap
# scenario): gatehouse gets a route file rewritten (a full recompile of the
# 10k-route table each time), HAProxy a host-map entry changed through its
# runtime API (its cheapest dynamic change; a config change would reload).
start_swapper() {
    local p=$1
    case $p in
    gatehouse | gatehouse-b)
        start "$LOAD_CPU" "$TMP/swapper.log" bash -c '
            i=0
            while :; do
                i=$((i + 1))
                printf "apiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: swap, namespace: bench}\nspec:\n  host: swap.bench.local\n  path: /v%d\n  to: {kind: Service, name: filler%d}\n" "$i" $((i % 2 + 1)) >"$1/.swap.tmp"
                mv "$1/.swap.tmp" "$1/swap.yaml"
                sleep 0.1
            done' swapper "$MANIFESTS"
        ;;
    haproxy)
        start "$LOAD_CPU" "$TMP/swapper.log" python3 -c '
import socket, sys, time
i = 0
while True:
    i += 1
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(f"set map {sys.argv[2]} swap.bench.local be_filler{i % 2 + 1}\n".encode())
    s.recv(4096)
    s.close()
    time.sleep(0.1)
' "$TMP/haproxy/admin.sock" "$TMP/haproxy/hosts.map"
        ;;
    esac
}

scenario_title() {
    case $1 in
    h1) echo "plain HTTP/1.1 keep-alive, Host: $HOST" ;;
    split) echo "plain HTTP/1.1 keep-alive, Host: $SPLIT_HOST: sticky cookies on, 75/25 over two services, no cookie sent" ;;
    h1-close) echo "plain HTTP/1.1, Connection: close: a new client connection per request" ;;
    body-64k) echo "plain HTTP/1.1 keep-alive, 64 KiB responses" ;;
    body-1m) echo "plain HTTP/1.1 keep-alive, 1 MiB responses" ;;
    h2) echo "HTTP/2 prior knowledge, $CONNECTIONS connections × 10 streams (h2load; latency column = mean)" ;;
    rate) echo "fixed rate $RATE req/s (h2load --rps; cpu us/req = CPU seconds per million requests; latency column = mean)" ;;
    swap) echo "plain HTTP/1.1 keep-alive while the table changes 10×/s, $FILLER routes" ;;
    passthrough) echo "TLS passthrough by SNI to nginx's own TLS, keep-alive (shim sets SNI $PASS_HOST)" ;;
    tls-keepalive) echo "HTTPS keep-alive (TLS edge, HTTP/1.1 to nginx), Host: $TLS_HOST" ;;
    tls-handshake) echo "HTTPS, Connection: close: one FULL TLS handshake per request (client never resumes)" ;;
    tls-resume) echo "HTTPS, Connection: close: one TLS handshake per request, session resumption allowed (wrk's default)" ;;
    esac
}

if [ "$BASELINE" = 1 ]; then
    # Upstream alone, wrk and nginx on the load CPU: no proxy can serve more
    # than this here (its upstream and load generator share that core). Run
    # every round too, since this VM's speed drifts from minute to minute.
    # Plain HTTP only: nginx has no TLS listener.
    PID[direct]=$(nginx_worker)
    PORT[direct]=$NGINX_PORT
fi

# ---------------------------------------------------------------- idle
# Memory per idle keep-alive connection: IDLE_CONNS connections, one request
# each, then held open, in IDLE_STEPS (4) parts; RSS growth over the last part,
# each part idle 10 s first (idle_conns.py). First, while both
# proxies are fresh: memory they pooled under load would hide the cost.
# idle-h2 (HTTP/2 on the h2 port) after idle, whose connections are closed
# by then; its first parts absorb what idle's left behind.
declare -A IDLE_PER
for kind in "${IDLE_KINDS[@]}"; do
    for p in "${ORDER[@]}"; do
        port=${PORT[$p]} proto=h1
        if [ "$kind" = idle-h2 ]; then
            [ -n "${H2PORT[$p]:-}" ] || continue
            port=${H2PORT[$p]} proto=h2
        fi
        say "$kind: $IDLE_CONNS keep-alive $proto connections to $p"
        sleep 3 # let start-up garbage settle
        IDLE_PER[$kind $p]=$(IDLE_PROTO=$proto python3 "$ROOT/benches/load/idle_conns.py" "${PID[$p]}" "$port" "$HOST" "$IDLE_CONNS") ||
            die "idle_conns.py ($proto) failed against $p"
        echo "$kind $p ${IDLE_PER[$kind $p]}" >>"$OUT/idle.txt"
        sleep 2
    done
done

is_tls_scenario() { [[ $1 == tls-* || $1 == passthrough ]]; }

for s in "${LOAD_SCEN[@]}"; do
    LOADED=("${ORDER[@]}")
    [ "$BASELINE" = 1 ] && [ "$s" = h1 ] && LOADED+=(direct)
    say "scenario $s: $(scenario_title "$s")"
    wait_idle
    for p in "${LOADED[@]}"; do
        say "warm-up $p (${WARMUP}s)"
        run_wrk "$s" "$p" "$WARMUP" "$OUT/$s-warmup-$p.txt"
    done

    say "measuring $s: ${LOADED[*]} × $ROUNDS rounds × ${DURATION}s, wrk -t1 -c$CONNECTIONS"
    for r in $(seq 1 "$ROUNDS"); do
        # A round during which cargo/rustc appeared is run again (up to
        # RETRIES times) once they are gone; the discarded wrk outputs stay
        # in out/ as *-discarded*.
        for try in $(seq 0 "$RETRIES"); do
            wait_idle
            rows=() tainted=0
            for p in "${LOADED[@]}"; do
                run_wrk "$s" "$p" "$DURATION" "$OUT/$s-round$r-$p.txt"
                read -r rps p99 cpu load reqs non2xx sockerr conns full resumed busy cpureq instr <<<"$RES"
                rows+=("$s,$r,$p,$rps,$p99,$cpu,$load,$reqs,$non2xx,$sockerr,$conns,$full,$resumed,$busy,$cpureq,$instr")
                [ "$busy" = 0 ] || tainted=1
                printf '   %s round %d %-9s %10s req/s   p99 %9s us   %s cpu %5s%% (%s us/req, %s instr/req)   load cpu %5s%%%s%s%s\n' \
                    "$s" "$r" "$p" "$rps" "$p99" "$([ "$p" = direct ] && echo nginx || echo proxy)" "$cpu" "$cpureq" "$instr" "$load" \
                    "$(is_tls_scenario "$s" && echo "   handshakes $full full, $resumed resumed")" \
                    "$([ "$non2xx$sockerr" = 00 ] || echo "   non-2xx $non2xx, socket errors $sockerr")" \
                    "$([ "$busy" = 0 ] || echo "   COMPILER RUNNING")" >&2
            done
            if [ "$tainted" = 1 ] && [ "$try" -lt "$RETRIES" ] && [ "$WAIT_IDLE" -gt 0 ]; then
                say "round $r of $s overlapped a compile: discarded, running it again"
                for p in "${LOADED[@]}"; do
                    mv "$OUT/$s-round$r-$p.txt" "$OUT/$s-round$r-$p-discarded$try.txt"
                    [ ! -e "$OUT/$s-round$r-$p.txt.tls" ] ||
                        mv "$OUT/$s-round$r-$p.txt.tls" "$OUT/$s-round$r-$p-discarded$try.txt.tls"
                done
                continue
            fi
            printf '%s\n' "${rows[@]}" >>"$CSV"
            break
        done
    done
done

# ---------------------------------------------------------------- report
median() { # column name, scenario, proxy
    awk -F, -v col="$1" -v s="$2" -v p="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        $1 == s && $3 == p { print $c }' "$CSV" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
total() { # column name, scenario, proxy
    awk -F, -v col="$1" -v s="$2" -v p="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        $1 == s && $3 == p { t += $c } END { print t + 0 }' "$CSV"
}
load_us() { # scenario, proxy: median over rounds of LOAD_CPU busy us per request
    awk -F, -v s="$1" -v p="$2" 'NR > 1 && $1 == s && $3 == p && $4 > 0 { printf "%.2f\n", $7 * 1e4 / $4 }' "$CSV" | med
}
med() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
{
    for s in "${LOAD_SCEN[@]}"; do
        echo
        echo "[$s] $(scenario_title "$s")"
        printf '%-10s %14s %14s %12s %11s %12s %11s %8s %10s' proxy "median req/s" "median p99 us" "proxy cpu %" "cpu us/req" "load cpu %" "load us/req" errors "upstr conn"
        is_tls_scenario "$s" && printf ' %18s\n' "handshakes f/r" || echo
        for p in "${ORDER[@]}"; do
            errs=$(awk -F, -v s="$s" -v p="$p" '$1 == s && $3 == p { e += $9 + $10 } END { print e + 0 }' "$CSV")
            printf '%-10s %14s %14s %12s %11s %12s %11s %8s %10s' "$p" "$(median req_per_s "$s" "$p")" "$(median p99_us "$s" "$p")" \
                "$(median proxy_cpu_pct "$s" "$p")" "$(median proxy_cpu_us_per_req "$s" "$p")" "$(median load_cpu_pct "$s" "$p")" \
                "$(load_us "$s" "$p")" "$errs" "$(total upstream_conns "$s" "$p")"
            is_tls_scenario "$s" && printf ' %18s\n' "$(total tls_full "$s" "$p")/$(total tls_resumed "$s" "$p")" || echo
        done
        if [ "$BASELINE" = 1 ] && [ "$s" = h1 ]; then
            ceiling=$(median req_per_s "$s" direct)
            printf '%-10s %14s %14s %12s %11s %12s %11s %8s %10s   (no proxy: the load side alone)\n' \
                direct "$ceiling" "$(median p99_us "$s" direct)" "-" "-" "$(median load_cpu_pct "$s" direct)" "$(load_us "$s" direct)" \
                "$(awk -F, -v s="$s" '$1 == s && $3 == "direct" { e += $9 + $10 } END { print e + 0 }' "$CSV")" \
                "$(total upstream_conns "$s" direct)"
            for p in "${ORDER[@]}"; do
                awk -v r="$(median req_per_s "$s" "$p")" -v c="$ceiling" -v p="$p" 'BEGIN {
                    if (r > 0.9 * c) printf "warning: %s is within 10%% of the load-side ceiling; its req/s is capped by the load cpu, not by itself\n", p }'
            done
        fi
        if is_tls_scenario "$s"; then
            for p in "${ORDER[@]}"; do
                awk -v l="$(median load_cpu_pct "$s" "$p")" -v x="$(median proxy_cpu_pct "$s" "$p")" -v p="$p" 'BEGIN {
                    if (l > 90 && x < 90) printf "warning: %s: load cpu %.0f%% (wrk TLS + nginx) vs proxy cpu %.0f%%: the load side is the limit, not %s; compare cpu us/req\n", p, l, x, p }'
                resumed=$(total tls_resumed "$s" "$p")
                full=$(total tls_full "$s" "$p")
                case $s in
                tls-handshake) [ "$resumed" = 0 ] ||
                    echo "warning: $p resumed $resumed of $((full + resumed)) handshakes although the client dropped its sessions" ;;
                tls-resume) [ "$full" -le $((2 * CONNECTIONS * ROUNDS)) ] ||
                    echo "note: $p: $full of $((full + resumed)) handshakes were full, $resumed resumed (the proxies do not resume equally)" ;;
                esac
            done
        fi
        busy=$(awk -F, -v s="$s" '$1 == s && $14 == 1 { n++ } END { print n + 0 }' "$CSV")
        [ "$busy" = 0 ] || echo "warning: cargo/rustc ran during $busy of the runs (compilers_running in the CSV); those numbers are suspect"
        if want gatehouse && want haproxy; then
            # Ratio of medians, and the median of the per-round ratios (each round
            # loads both back to back, so it cancels most of the drift).
            per_round=$(awk -F, -v s="$s" 'NR > 1 && $1 == s { v[$2, $3] = $4; l[$2, $3] = $5; if ($2 > n) n = $2 }
                END { for (r = 1; r <= n; r++) if (((r, "gatehouse") in v) && ((r, "haproxy") in v) && v[r, "haproxy"] > 0 && l[r, "haproxy"] > 0)
                    printf "%.4f %.4f\n", v[r, "gatehouse"] / v[r, "haproxy"], l[r, "gatehouse"] / l[r, "haproxy"] }' "$CSV")
            awk -v g="$(median req_per_s "$s" gatehouse)" -v h="$(median req_per_s "$s" haproxy)" \
                -v gl="$(median p99_us "$s" gatehouse)" -v hl="$(median p99_us "$s" haproxy)" \
                -v gc="$(median proxy_cpu_us_per_req "$s" gatehouse)" -v hc="$(median proxy_cpu_us_per_req "$s" haproxy)" \
                -v rt="$(awk '{ print $1 }' <<<"$per_round" | med)" -v rl="$(awk '{ print $2 }' <<<"$per_round" | med)" \
                -v target="$([ "$s" = h1 ] && echo "  (target >= 1.2)" || echo "                ")" 'BEGIN {
                printf "gatehouse/haproxy        throughput %.3f%s   p99 %.3f  cpu/req %.3f  (lower is better)\n", g / h, target, gl / hl, gc / hc
                printf "  median of per-round    throughput %.3f                    p99 %.3f\n", rt, rl }'
            if [ -n "${PID[gatehouse-b]:-}" ]; then
                per_b=$(awk -F, -v s="$s" 'NR > 1 && $1 == s { v[$2, $3] = $4; c[$2, $3] = $15; if ($2 > n) n = $2 }
                    END { for (r = 1; r <= n; r++) if (v[r, "gatehouse"] > 0 && c[r, "gatehouse"] > 0)
                        printf "%.4f %.4f\n", v[r, "gatehouse-b"] / v[r, "gatehouse"], c[r, "gatehouse-b"] / c[r, "gatehouse"] }' "$CSV")
                awk -v t="$(awk '{ print $1 }' <<<"$per_b" | med)" -v c="$(awk '{ print $2 }' <<<"$per_b" | med)" -v a="$GH_B_ARGS" 'BEGIN {
                    printf "  gatehouse-b/gatehouse  throughput %.3f  cpu/req %.3f  (median of per-round ratios; b: %s)\n", t, c, a }'
            fi
            awk -v g="$(median instructions_per_req "$s" gatehouse)" -v h="$(median instructions_per_req "$s" haproxy)" 'BEGIN {
                if (g > 0 && h > 0) printf "  instructions/request   gatehouse %d  haproxy %d  ratio %.3f (perf stat, user+kernel)\n", g, h, g / h }'
        fi
    done
    for kind in "${IDLE_KINDS[@]}"; do
        echo
        echo "[$kind] memory per idle keep-alive connection ($IDLE_CONNS connections in 4 parts, each idle 10 s; RSS growth over the last part per connection; step_bytes: every part)"
        for p in "${ORDER[@]}"; do printf '%-10s %s\n' "$p" "${IDLE_PER[$kind $p]:-}"; done
    done
    if want gatehouse && want haproxy; then
        echo
        echo "gatehouse/haproxy, medians of per-round ratios (throughput: higher is better; p99 and cpu/req: lower is better;"
        echo "load cap: the throughput ratio the load side allowed, see the top of run.sh; * = throughput within 3 % of it)"
        printf '%-14s %10s %8s %8s %8s %9s\n' scenario throughput p99 cpu/req errors "load cap"
        for s in "${LOAD_SCEN[@]}"; do
            awk -F, -v s="$s" 'NR > 1 && $1 == s { v[$2, $3] = $4; l[$2, $3] = $5; c[$2, $3] = $15; u[$2, $3] = $7; e += ($3 == "gatehouse") * ($9 + $10); if ($2 > n) n = $2 }
                END {
                    k = 0
                    for (r = 1; r <= n; r++) if (v[r, "haproxy"] > 0 && l[r, "haproxy"] > 0 && c[r, "haproxy"] > 0) {
                        k++; t[k] = v[r, "gatehouse"] / v[r, "haproxy"]; p[k] = l[r, "gatehouse"] / l[r, "haproxy"]; q[k] = c[r, "gatehouse"] / c[r, "haproxy"]
                        m[k] = u[r, "gatehouse"] > 0 ? (100 / u[r, "gatehouse"]) * t[k] : 0 }
                    if (k == 0) printf "%-14s %10s %8s %8s %8d %9s\n", s, "-", "-", "-", e, "-"
                    else {
                        tt = med(t, k); mm = med(m, k)
                        printf "%-14s %10.3f %8.3f %8.3f %8d %8.3f%s\n", s, tt, med(p, k), med(q, k), e, mm, (mm > 0 && tt >= 0.97 * mm) ? "*" : " "
                    }
                }
                function med(a, k,   i, j, x) {
                    for (i = 2; i <= k; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                    return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
                }' "$CSV"
        done
        for kind in "${IDLE_KINDS[@]}"; do
            awk -v k="$kind" -v g="${IDLE_PER[$kind gatehouse]:-}" -v h="${IDLE_PER[$kind haproxy]:-}" 'BEGIN {
                match(g, /per_conn_bytes=[0-9]+/); gb = substr(g, RSTART + 15, RLENGTH - 15)
                match(h, /per_conn_bytes=[0-9]+/); hb = substr(h, RSTART + 15, RLENGTH - 15)
                if (hb > 0) printf "%-14s memory per idle connection %d vs %d bytes: %.2f\n", k, gb, hb, gb / hb }'
        done
    fi
    if [ "$TLS" = 1 ]; then
        echo
        for p in "${ORDER[@]}"; do echo "TLS $p (wrk-like client): ${NEGOTIATED[$p]}"; done
    fi
    echo
    echo "raw numbers: ${OUT#"$ROOT"/}/rounds.csv"
} | tee "$OUT/summary.txt"
