#!/usr/bin/env bash
# Slow-client attacks with Debian's slowhttptest against a running router:
# slow headers (Slowloris), slow body (R-U-Dead-Yet) and slow read, each
# with CONNS connections for SECONDS, while curl checks every second that
# a normal client is still served.
#
#   bash scripts/slowhttptest.sh              # release binary, built if missing
#   CONNS=2000 SECONDS_PER=30 bash scripts/slowhttptest.sh
#
# Passes when slowhttptest reports the service available at the end of each
# attack and every probe got 200. Installs slowhttptest with apt-get when
# missing (root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONNS=${CONNS:-1000}
SECONDS_PER=${SECONDS_PER:-20}
PORT=${PORT:-18996}
command -v slowhttptest >/dev/null || apt-get install -y -qq slowhttptest
[ -x target/release/gatehouse ] || cargo build --release --bin gatehouse
tmp=$(mktemp -d)
python3 -m http.server "$((PORT + 2))" --bind 127.0.0.1 -d "$tmp" >/dev/null 2>&1 &
upstream=$!
mkdir -p "$tmp/m"
cat >"$tmp/m/r.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: s, namespace: slow}
spec: {ports: [{port: 80, targetPort: $((PORT + 2))}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: s, namespace: slow}
subsets: [{addresses: [{ip: 127.0.0.1}], ports: [{port: $((PORT + 2))}]}]
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: r, namespace: slow}
spec: {host: localhost, to: {kind: Service, name: s}}
YAML
target/release/gatehouse run --manifests "$tmp/m" --http "127.0.0.1:$PORT" --admin "127.0.0.1:$((PORT + 1))" \
    --access-log off >"$tmp/log" 2>&1 &
router=$!
trap 'kill "$router" "$upstream" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$((PORT + 1))/readyz" && break; sleep 0.1; done
fail=0
for mode in H B X; do
    name=$(case $mode in H) echo "slow headers" ;; B) echo "slow body" ;; X) echo "slow read" ;; esac)
    extra=()
    [ "$mode" = X ] && extra=(-k 3 -n 5 -w 10 -y 20 -z 32)
    slowhttptest -"$mode" -c "$CONNS" -r 200 -i 5 -l "$SECONDS_PER" -u "http://localhost:$PORT/" "${extra[@]}" \
        -p 3 >"$tmp/$mode.txt" 2>&1 &
    attack=$!
    probes=0 bad=0
    sleep 2
    while kill -0 "$attack" 2>/dev/null; do
        code=$(curl -s -o /dev/null --max-time 3 -H "Host: localhost" -w '%{http_code}' "http://127.0.0.1:$PORT/" || true)
        probes=$((probes + 1))
        [ "$code" = 200 ] || bad=$((bad + 1))
        sleep 1
    done
    wait "$attack" || true
    verdict=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/$mode.txt" | grep -o 'service available:[^|]*' | tail -n 1 | tr -s ' ' || true)
    echo "$name: $verdict; probes $probes, failed $bad"
    if [ "$bad" != 0 ] || [[ $verdict != *YES* ]]; then fail=1; fi
done
exit "$fail"
