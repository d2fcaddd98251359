#!/usr/bin/env bash
# Side-by-side load benchmark: gatehouse vs HAProxy (DESIGN.md, "Performance
# budget", row "keep-alive req/s, 1 core").
#
# What it does
#   1. cargo build --release (target/release/gatehouse).
#   2. Starts nginx as the upstream (1 worker, access log off, `return 200
#      "hello\n"`, huge keepalive_requests), pinned to LOAD_CPU.
#   3. Writes a manifests directory: Service/Endpoints/Route `hello`
#      (host hello.bench.local → nginx) plus FILLER other routes, so the table
#      is not trivial.
#   4. Starts gatehouse pinned to PROXY_CPU with one worker thread
#      (GATEHOUSE_WORKER_THREADS=1, --access-log off) and waits for /readyz.
#   5. Starts HAProxy pinned to PROXY_CPU (nbthread 1, no logging), with the
#      same routes: a host map (like the OpenShift router's), `http-reuse
#      always` to the upstream, `option forwardfor` (gatehouse appends
#      X-Forwarded-For too).
#   6. Checks that both proxies answer 200 with nginx's body for the Host (and
#      fails loudly otherwise), warms both up, then loads them alternately
#      (gatehouse, haproxy[, nginx direct], gatehouse, haproxy, … for ROUNDS
#      rounds) with wrk pinned to LOAD_CPU. Both proxies stay up; only one is
#      loaded at a time.
#   7. Prints median req/s, median p99 and the proxy's CPU use per proxy, and
#      the ratios gatehouse/haproxy; writes raw per-round numbers and wrk
#      outputs to benches/load/out/<timestamp>/.
#   8. Stops everything it started and removes its temp dir (trap EXIT).
#
# Usage (from the repo root; needs root only to apt-get install nginx-light):
#   bash benches/load/run.sh
#   DURATION=5 ROUNDS=3 CONNECTIONS=100 bash benches/load/run.sh
#
# Environment (defaults in brackets)
#   DURATION [10]      seconds per wrk run
#   ROUNDS [5]         measured rounds per proxy
#   CONNECTIONS [50]   wrk connections (wrk uses 1 thread: -t1)
#   WARMUP [3]         seconds of unrecorded load per proxy before round 1
#   FILLER [100]       extra routes/services in the table
#   PROXIES ["gatehouse haproxy"]  run only one side, e.g. PROXIES=haproxy
#   BASELINE [1]       also load nginx directly (no proxy) in every round: the
#                      most the load CPU can drive, the ceiling of any proxy's req/s
#   SKIP_BUILD [0]     1 = use the existing binary, no cargo build
#   GATEHOUSE [target/release/gatehouse]  the binary to run (with SKIP_BUILD=1)
#   PROXY_CPU [0], LOAD_CPU [1]    CPUs for the proxies / for nginx + wrk
#   BASE_PORT [18080]  nginx = BASE_PORT, gatehouse http/admin = +1/+2,
#                      haproxy = +3
#
# "proxy cpu %" is the proxy's user+system time over the run divided by wall
# time (100 % = its whole core); "load cpu %" is how busy LOAD_CPU (nginx +
# wrk) was. Proxy well below 100 % with the load CPU near 100 % means the
# load side was the bottleneck and the req/s are not the proxy's limit.

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
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18080}

NGINX_PORT=$BASE_PORT
GH_PORT=$((BASE_PORT + 1))
GH_ADMIN=$((BASE_PORT + 2))
HAP_PORT=$((BASE_PORT + 3))
HOST=hello.bench.local
BODY=hello

say() { printf '== %s\n' "$*" >&2; }
die() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup
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
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
for tool in wrk curl taskset haproxy awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y $tool)"
done
if ! command -v nginx >/dev/null; then
    say "nginx not found; installing nginx-light"
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y nginx-light >/dev/null ||
            { apt-get update >/dev/null && apt-get install -y nginx-light >/dev/null; } || true
    fi
    command -v nginx >/dev/null ||
        die "nginx is missing and could not be installed: run 'apt-get install -y nginx-light' as root"
fi
ncpu=$(nproc)
[ "$PROXY_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] ||
    die "PROXY_CPU=$PROXY_CPU / LOAD_CPU=$LOAD_CPU but only $ncpu CPUs"
[ "$PROXY_CPU" != "$LOAD_CPU" ] || say "warning: proxy and load generator share CPU $PROXY_CPU"

for p in $NGINX_PORT $GH_PORT $GH_ADMIN $HAP_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p is in use on 127.0.0.1 (set BASE_PORT)"
    fi
done

want() { [[ " $PROXIES " == *" $1 "* ]]; }

# ---------------------------------------------------------------- build
GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}
if want gatehouse; then
    if [ "$SKIP_BUILD" != 1 ]; then
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

# wait_http URL STATUS SECONDS PID
wait_http() {
    local url=$1 want=$2 secs=$3 pid=$4 code
    for _ in $(seq $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || return 1
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [ "$code" = "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

# utime+stime of a process (all threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# "busy total" jiffies of one CPU, from /proc/stat.
cpu_busy() { awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

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
        location / {
            default_type text/plain;
            return 200 "$BODY\n";
        }
    }
}
EOF
nginx -t -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/test.log" 2>&1 ||
    die "nginx rejects its config: $(cat "$TMP/nginx/test.log")"
start "$LOAD_CPU" "$TMP/nginx/stdout.log" \
    nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
NGINX_PID=$LAST
wait_http "http://127.0.0.1:$NGINX_PORT/" 200 10 "$NGINX_PID" ||
    die "nginx did not come up: $(cat "$TMP/nginx/error.log" "$TMP/nginx/stdout.log" 2>/dev/null)"
say "nginx on 127.0.0.1:$NGINX_PORT (cpu $LOAD_CPU)"

# ---------------------------------------------------------------- routes
# Filler endpoints stay on loopback (127.0.1.x, nothing listens): a benchmark
# never sends a packet off this machine, even by mistake.
filler_ip() { echo "127.0.1.$(($1 % 250 + 1))"; }

MANIFESTS=$TMP/manifests
mkdir -p "$MANIFESTS"
cat >"$MANIFESTS/hello.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: bench}
spec:
  ports: [{name: http, port: 80, targetPort: $NGINX_PORT}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: hello, namespace: bench}
subsets:
- addresses: [{ip: 127.0.0.1}]
  ports: [{name: http, port: $NGINX_PORT}]
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: hello, namespace: bench}
spec:
  host: $HOST
  to: {kind: Service, name: hello}
  port: {targetPort: http}
EOF
for i in $(seq 1 "$FILLER"); do
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: filler$i, namespace: bench}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: filler$i, namespace: bench}
subsets:
- addresses: [{ip: $(filler_ip "$i")}]
  ports: [{name: http, port: 8080}]
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: filler$i, namespace: bench}
spec:
  host: filler$i.bench.local
  to: {kind: Service, name: filler$i}
  port: {targetPort: http}
EOF
done >"$MANIFESTS/filler.yaml"

# ---------------------------------------------------------------- haproxy
mkdir -p "$TMP/haproxy"
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
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 300s

frontend fe_http
    bind 127.0.0.1:$HAP_PORT
    # Host → backend through a map, as the OpenShift router does; an unknown
    # host finds no backend and gets 503, like gatehouse.
    use_backend %[req.hdr(host),lower,field(1,:),map($TMP/haproxy/hosts.map)]

backend be_hello
    http-reuse always
    option forwardfor
    server nginx 127.0.0.1:$NGINX_PORT
EOF
    for i in $(seq 1 "$FILLER"); do
        printf '\nbackend be_filler%s\n    http-reuse always\n    option forwardfor\n    server s1 %s:8080\n' \
            "$i" "$(filler_ip "$i")"
    done
} >"$TMP/haproxy/haproxy.cfg"
haproxy -c -q -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/check.log" 2>&1 ||
    die "haproxy rejects its config: $(cat "$TMP/haproxy/check.log")"

# ---------------------------------------------------------------- proxies
declare -A PORT PID
if want gatehouse; then
    start "$PROXY_CPU" "$TMP/gatehouse.log" env GATEHOUSE_WORKER_THREADS=1 \
        "$GATEHOUSE" run --manifests "$MANIFESTS" \
        --http "127.0.0.1:$GH_PORT" --admin "127.0.0.1:$GH_ADMIN" --access-log off
    PID[gatehouse]=$LAST
    PORT[gatehouse]=$GH_PORT
    wait_http "http://127.0.0.1:$GH_ADMIN/readyz" 200 30 "$LAST" ||
        die "gatehouse did not become ready on 127.0.0.1:$GH_ADMIN/readyz; its log:
$(tail -n 40 "$TMP/gatehouse.log")"
    say "gatehouse on 127.0.0.1:$GH_PORT (cpu $PROXY_CPU, 1 worker thread), admin :$GH_ADMIN"
fi
if want haproxy; then
    start "$PROXY_CPU" "$TMP/haproxy.log" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
    PID[haproxy]=$LAST
    PORT[haproxy]=$HAP_PORT
    wait_http "http://127.0.0.1:$HAP_PORT/" 503 10 "$LAST" ||
        die "haproxy did not come up; its log:
$(tail -n 40 "$TMP/haproxy.log")"
    say "haproxy $(haproxy -v | awk 'NR == 1 { print $3 }') on 127.0.0.1:$HAP_PORT (cpu $PROXY_CPU, nbthread 1)"
fi
[ ${#PID[@]} -gt 0 ] || die "PROXIES=\"$PROXIES\" names neither gatehouse nor haproxy"
ORDER=()
for p in gatehouse haproxy; do want "$p" && ORDER+=("$p"); done

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
    say "$p: 200 '$BODY' for Host: $HOST"
done

# ---------------------------------------------------------------- load
busy=$(pgrep -x -d, 'cargo|rustc' || true)
[ -z "$busy" ] || say "warning: compilers are running (pids $busy); they steal CPU and skew the numbers"

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$ROOT/benches/load/out/$STAMP
mkdir -p "$OUT"
CSV=$OUT/rounds.csv
echo "round,proxy,req_per_s,p99_us,proxy_cpu_pct,load_cpu_pct,requests,non_2xx,socket_errors" >"$CSV"
{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) cpus, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "gatehouse: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
    echo "haproxy: $(haproxy -v | head -n 1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "wrk: -t1 -c$CONNECTIONS -d${DURATION}s, warmup ${WARMUP}s, rounds $ROUNDS, filler routes $FILLER"
    echo "cpus: proxy $PROXY_CPU, nginx + wrk $LOAD_CPU"
} >"$OUT/env.txt"
cp "$TMP/haproxy/haproxy.cfg" "$TMP/nginx/nginx.conf" "$OUT/"

# wrk's latency figures ("1.23ms", "845.00us", "1.02s") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else { print "NaN"; exit }
        printf "%.1f", n * m }'
}

# run_wrk PROXY SECONDS FILE → sets RES="req_per_s p99_us cpu_pct load_cpu_pct requests non2xx socket_errors"
# (not printed: a `die` must run in this shell, not in a command substitution).
run_wrk() {
    local p=$1 secs=$2 file=$3 t0 t1 c0 c1 l0 l1
    c0=$(cpu_ticks "${PID[$p]}")
    l0=$(cpu_busy "$LOAD_CPU")
    t0=$(date +%s%N)
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" -H "Host: $HOST" --latency \
        "http://127.0.0.1:${PORT[$p]}/" >"$file" 2>&1 || die "wrk failed against $p: $(cat "$file")"
    t1=$(date +%s%N)
    c1=$(cpu_ticks "${PID[$p]}")
    l1=$(cpu_busy "$LOAD_CPU")
    kill -0 "${PID[$p]}" 2>/dev/null || die "$p died under load"
    local rps p99 reqs non2xx sockerr cpu load
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$file")
    p99=$(awk '$1 == "99%" { print $2 }' "$file")
    reqs=$(awk '/requests in/ { print $1 }' "$file")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$file")
    sockerr=$(awk -F'Socket errors: ' 'NF > 1 { gsub(/[a-z]+ /, "", $2); gsub(/,/, "", $2); split($2, a, " "); print a[1] + a[2] + a[3] + a[4] }' "$file")
    [ -n "$rps" ] && [ -n "$p99" ] || die "cannot parse wrk output for $p: $(cat "$file")"
    cpu=$(awk -v c="$((c1 - c0))" -v hz="$HZ" -v ns="$((t1 - t0))" 'BEGIN { printf "%.1f", 100 * c / hz / (ns / 1e9) }')
    load=$(awk -v a="$l0" -v b="$l1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f", 100 * (y[1] - x[1]) / (y[2] - x[2] + 1e-9) }')
    RES="$rps $(to_us "$p99") $cpu $load ${reqs:-0} ${non2xx:-0} ${sockerr:-0}"
}

LOADED=("${ORDER[@]}")
if [ "$BASELINE" = 1 ]; then
    # Upstream alone, wrk and nginx on the load CPU: no proxy can serve more
    # than this here (its upstream and load generator share that core). Run
    # every round too, since this VM's speed drifts from minute to minute.
    PID[direct]=$(nginx_worker)
    PORT[direct]=$NGINX_PORT
    LOADED+=(direct)
fi

for p in "${LOADED[@]}"; do
    say "warm-up $p (${WARMUP}s)"
    run_wrk "$p" "$WARMUP" "$OUT/warmup-$p.txt"
done

say "measuring: ${LOADED[*]} × $ROUNDS rounds × ${DURATION}s, wrk -t1 -c$CONNECTIONS"
for r in $(seq 1 "$ROUNDS"); do
    for p in "${LOADED[@]}"; do
        run_wrk "$p" "$DURATION" "$OUT/round$r-$p.txt"
        read -r rps p99 cpu load reqs non2xx sockerr <<<"$RES"
        echo "$r,$p,$rps,$p99,$cpu,$load,$reqs,$non2xx,$sockerr" >>"$CSV"
        printf '   round %d %-9s %10s req/s   p99 %9s us   %s cpu %5s%%   load cpu %5s%%%s\n' \
            "$r" "$p" "$rps" "$p99" "$([ "$p" = direct ] && echo nginx || echo proxy)" "$cpu" "$load" \
            "$([ "$non2xx$sockerr" = 00 ] || echo "   non-2xx $non2xx, socket errors $sockerr")" >&2
    done
done

# ---------------------------------------------------------------- report
median() { # column name, proxy
    awk -F, -v col="$1" -v p="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        $2 == p { print $c }' "$CSV" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
{
    echo
    printf '%-10s %14s %14s %12s %12s %8s\n' proxy "median req/s" "median p99 us" "proxy cpu %" "load cpu %" errors
    for p in "${ORDER[@]}"; do
        errs=$(awk -F, -v p="$p" '$2 == p { e += $8 + $9 } END { print e + 0 }' "$CSV")
        printf '%-10s %14s %14s %12s %12s %8s\n' "$p" "$(median req_per_s "$p")" "$(median p99_us "$p")" \
            "$(median proxy_cpu_pct "$p")" "$(median load_cpu_pct "$p")" "$errs"
    done
    if [ "$BASELINE" = 1 ]; then
        ceiling=$(median req_per_s direct)
        printf '%-10s %14s %14s %12s %12s %8s   (no proxy: the load-side ceiling)\n' \
            direct "$ceiling" "$(median p99_us direct)" "-" "$(median load_cpu_pct direct)" \
            "$(awk -F, '$2 == "direct" { e += $8 + $9 } END { print e + 0 }' "$CSV")"
        for p in "${ORDER[@]}"; do
            awk -v r="$(median req_per_s "$p")" -v c="$ceiling" -v p="$p" 'BEGIN {
                if (r > 0.9 * c) printf "warning: %s is within 10%% of the load-side ceiling; its req/s is capped by the load cpu, not by itself\n", p }'
        done
    fi
    if want gatehouse && want haproxy; then
        # Ratio of medians, and the median of the per-round ratios (each round
        # loads both back to back, so it cancels most of the drift).
        per_round=$(awk -F, 'NR > 1 { v[$1, $2] = $3; l[$1, $2] = $4; if ($1 > n) n = $1 }
            END { for (r = 1; r <= n; r++) if (((r, "gatehouse") in v) && ((r, "haproxy") in v) && v[r, "haproxy"] > 0 && l[r, "haproxy"] > 0)
                printf "%.4f %.4f\n", v[r, "gatehouse"] / v[r, "haproxy"], l[r, "gatehouse"] / l[r, "haproxy"] }' "$CSV")
        med() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
        awk -v g="$(median req_per_s gatehouse)" -v h="$(median req_per_s haproxy)" \
            -v gl="$(median p99_us gatehouse)" -v hl="$(median p99_us haproxy)" \
            -v rt="$(awk '{ print $1 }' <<<"$per_round" | med)" -v rl="$(awk '{ print $2 }' <<<"$per_round" | med)" 'BEGIN {
            printf "\ngatehouse/haproxy        throughput %.3f  (target >= 1.2)   p99 %.3f  (lower is better)\n", g / h, gl / hl
            printf "  median of per-round    throughput %.3f                    p99 %.3f\n", rt, rl }'
    fi
    echo
    echo "raw numbers: ${OUT#"$ROOT"/}/rounds.csv"
} | tee "$OUT/summary.txt"
