#!/usr/bin/env bash
# Scan gatehouse's HTTPS listener with sslyze against Mozilla's
# "intermediate" TLS profile (https://wiki.mozilla.org/Security/Server_Side_TLS).
#
#   bash scripts/tls-scan.sh            # builds the binary, exits non-zero on findings
#
# Needs: openssl, python3 + pip (installs sslyze if missing). Everything runs
# on 127.0.0.1 and is cleaned up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v sslyze >/dev/null || python3 -m pip install -q sslyze
cargo build --release -q
BIN=target/release/gatehouse

TMP=$(mktemp -d)
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

# A test CA and an ECDSA P-256 leaf for the route, valid 90 days (the
# profile limits certificate lifetime). sslyze is told to trust the test CA,
# so path validation is checked too.
HOST=scan.gatehouse.test
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 \
    -subj "/CN=gatehouse scan CA" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=$HOST" -keyout "$TMP/key.pem" -out "$TMP/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$HOST" >"$TMP/ext.cnf"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 90 -extfile "$TMP/ext.cnf" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/default.pem"
mkdir "$TMP/manifests"
indent() { sed 's/^/      /' "$1"; }
cat >"$TMP/manifests/scan.yaml" <<YAML
apiVersion: route.openshift.io/v1
kind: Route
metadata: {name: scan, namespace: default}
spec:
  host: $HOST
  to: {kind: Service, name: web}
  tls:
    termination: edge
    certificate: |
$(indent "$TMP/cert.pem")
    key: |
$(indent "$TMP/key.pem")
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{port: 80}]}
YAML
cat >"$TMP/router.yaml" <<YAML
tls:
  default_certificate: $TMP/default.pem
YAML

PORT=$((20000 + RANDOM % 20000))
"$BIN" run --config "$TMP/router.yaml" --manifests "$TMP/manifests" --http 127.0.0.1:0 \
    --https "127.0.0.1:$PORT" --admin 127.0.0.1:0 --access-log off 2>"$TMP/router.log" &
PID=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

echo "== openssl s_client"
openssl s_client -connect "127.0.0.1:$PORT" -servername "$HOST" </dev/null 2>/dev/null | grep -E "^(subject|issuer)=|Protocol|Cipher is" || true
echo "== sslyze --mozilla_config=intermediate"
sslyze --mozilla_config=intermediate --certinfo_ca_file "$TMP/ca.pem" --sni "$HOST" "127.0.0.1:$PORT" 2>&1 | tee "$TMP/sslyze.txt" | tail -12 || true
# sslyze's compliance check trusts only public root stores, so a locally
# made certificate always fails path validation; every other finding counts.
findings=$(sed -n '/COMPLIANCE AGAINST/,$p' "$TMP/sslyze.txt" | grep -E '^\s+\* ' | grep -v certificate_path_validation || true)
if [ -n "$findings" ]; then
    echo "NOT COMPLIANT:"; echo "$findings"; exit 1
fi
echo "tls-scan: compliant with Mozilla intermediate (certificate trust aside: local test CA)"
