#!/usr/bin/env bash
# How long a route change takes to go live with a 10k-route table, idle
# and with gatehouse saturated.
#
# What it does
#   1. cargo build --release (unless SKIP_BUILD=1).
#   2. nginx as the upstream (pinned to LOAD_CPU), a manifests directory
#      with Route `hello` plus FILLER (10000) other routes with their
#      Services and Endpoints, gatehouse with one worker pinned to
#      PROXY_CPU.
#   3. CHANGES times (10), once a second, rewrites a Route file (its path
#      changes) and notes the time; gatehouse's log says when each table
#      was published. The delay of a change is the time from its write to
#      the next table published.
#   4. Twice: with the proxy idle, then with wrk (-c 50, pinned to
#      LOAD_CPU) saturating it. Prints min / median / max delay for each,
#      and wrk's req/s.
#
# Usage
#   bash benches/load/propagation.sh
#   FILLER=50000 CHANGES=20 SKIP_BUILD=1 bash benches/load/propagation.sh
#
# Environment: FILLER [10000], CHANGES [10], PROXY_CPU [0], LOAD_CPU [1],
# BASE_PORT [18600] (nginx, gatehouse = +1), SKIP_BUILD [0].

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
FILLER=${FILLER:-10000}
CHANGES=${CHANGES:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18600}
SKIP_BUILD=${SKIP_BUILD:-0}
NGINX_PORT=$BASE_PORT
PROXY_PORT=$((BASE_PORT + 1))

# say, die, TMP, PIDS, cleanup on exit.
# shellcheck source=benches/load/lib.sh
source benches/load/lib.sh
need nginx:nginx-light wrk:wrk taskset:util-linux python3:python3 curl:curl

if [ "$SKIP_BUILD" != 1 ]; then
    cargo build --release --bin gatehouse >&2 || die "cargo build --release failed"
fi
GATEHOUSE=${GATEHOUSE:-$ROOT/target/release/gatehouse}

mkdir -p "$TMP/nginx" "$TMP/m"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 "hello\n"; } }
}
EOF
taskset -c "$LOAD_CPU" nginx -c "$TMP/nginx/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)

python3 - "$TMP/m" "$FILLER" "$NGINX_PORT" <<'PY'
import sys
d, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(f"{d}/hello.yaml", "w") as f:
    f.write(f"""apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: bench}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: hello, namespace: bench}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {port}}}]
---
apiVersion: route.openshift.io/v1
kind: Route
metadata:
  name: hello
  namespace: bench
  annotations: {{haproxy.router.openshift.io/disable_cookies: "true"}}
spec:
  host: hello.bench.local
  to: {{kind: Service, name: hello}}
  port: {{targetPort: http}}
""")
with open(f"{d}/filler.yaml", "w") as f:
    for i in range(1, n + 1):
        f.write(f"""---
apiVersion: v1
kind: Service
metadata: {{name: filler{i}, namespace: bench}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: filler{i}, namespace: bench}}
subsets:
- addresses: [{{ip: 127.0.1.{i % 250 + 1}}}]
  ports: [{{name: http, port: 8080}}]
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {{name: filler{i}, namespace: bench}}
spec:
  host: filler{i}.bench.local
  to: {{kind: Service, name: filler{i}}}
  port: {{targetPort: http}}
""")
PY
printf 'worker_threads: 1\n' >"$TMP/gatehouse.yaml"
taskset -c "$PROXY_CPU" "$GATEHOUSE" run --config "$TMP/gatehouse.yaml" --manifests "$TMP/m" \
    --http "127.0.0.1:$PROXY_PORT" >"$TMP/gatehouse.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: hello.bench.local' "http://127.0.0.1:$PROXY_PORT/" || true)" = 200 ] && break
    sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: hello.bench.local' "http://127.0.0.1:$PROXY_PORT/" || true)" = 200 ] ||
    die "gatehouse did not serve: $(tail -n 5 "$TMP/gatehouse.log")"

STEP=0
changes() { # label
    : >"$TMP/writes"
    for _ in $(seq "$CHANGES"); do
        STEP=$((STEP + 1))
        printf 'apiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: moving, namespace: bench}\nspec:\n  host: moving.bench.local\n  path: /v%d\n  to: {kind: Service, name: hello}\n' "$STEP" >"$TMP/.moving.tmp"
        mv "$TMP/.moving.tmp" "$TMP/m/moving.yaml"
        date +%s.%N >>"$TMP/writes"
        sleep 1
    done
    sleep 2
    python3 - "$TMP/gatehouse.log" "$TMP/writes" "$1" <<'PY'
import datetime, re, sys
log, writes, label = sys.argv[1:4]
published = []
for line in open(log):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "table published" in line:
        published.append(datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp())
delays = []
for w in (float(x) for x in open(writes)):
    later = [p for p in published if p > w]
    if later:
        delays.append(later[0] - w)
delays.sort()
if not delays:
    sys.exit(f"{label}: no table published after the changes")
print(f"{label:10} changes {len(delays)}  delay ms  min {delays[0]*1000:.0f}  median {delays[len(delays)//2]*1000:.0f}  max {delays[-1]*1000:.0f}")
PY
}

echo "route change → table published, $FILLER filler routes, gatehouse on CPU $PROXY_CPU (one worker)"
changes idle
taskset -c "$LOAD_CPU" wrk -t1 -c50 -d$((CHANGES + 4))s -H 'Host: hello.bench.local' \
    "http://127.0.0.1:$PROXY_PORT/" >"$TMP/wrk.txt" 2>&1 &
WRK=$!
sleep 1
changes saturated
wait "$WRK" || true
echo "saturated: wrk $(awk '/Requests\/sec/ { print $2 }' "$TMP/wrk.txt") req/s meanwhile"
