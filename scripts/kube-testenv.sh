#!/usr/bin/env bash
# Real kube-apiserver + etcd for gatehouse integration tests (envtest-style, token auth).
#
#   scripts/kube-testenv.sh build        build etcd + kube-apiserver into the cache (skipped if present)
#   scripts/kube-testenv.sh start DIR    start both on 127.0.0.1, write DIR/kubeconfig + DIR/pids, print kubeconfig path
#   scripts/kube-testenv.sh stop DIR     kill both, remove etcd data and everything written to DIR
#   scripts/kube-testenv.sh restart-apiserver DIR [SECONDS]
#                                        kill kube-apiserver, wait SECONDS (default 0), start it again
#                                        on the same port and etcd (an API server outage for tests)
#
# Environment:
#   GATEHOUSE_KUBE_VERSION   Kubernetes version   (default v1.37.2; needs go >= its go.mod `go` line)
#   GATEHOUSE_ETCD_VERSION   etcd server version  (default v3.7.0, the version k8s v1.37.2 pins)
#   GATEHOUSE_KUBE_CACHE     cache root           (default $HOME/.cache/gatehouse-kube)
#   GATEHOUSE_KUBE_BIN       use binaries from this dir instead of the cache
#   GATEHOUSE_KUBE_TIMEOUT   seconds to wait for /readyz (default 60)
#   GATEHOUSE_KUBE_OWNER_PID stop the environment by itself when this process exits (test runs)
# Binaries are built from the Go module proxy; GOMODCACHE/GOCACHE keep their defaults so they are reused.
set -euo pipefail

KUBE_VERSION=${GATEHOUSE_KUBE_VERSION:-v1.37.2}
ETCD_VERSION=${GATEHOUSE_ETCD_VERSION:-v3.7.0}
CACHE_ROOT=${GATEHOUSE_KUBE_CACHE:-$HOME/.cache/gatehouse-kube}
VDIR=$CACHE_ROOT/$KUBE_VERSION
BIN=${GATEHOUSE_KUBE_BIN:-$VDIR/bin}
TOKEN=admin-token

log() { echo "kube-testenv: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- build

quiet() { # run a command, showing its output only if it fails
  local out; out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

timed() { # run a command, reporting wall time and peak RSS when GNU time is available
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "kube-testenv: [$1] %e s wall, %M KiB max RSS" "${@:2}"
  else
    "${@:2}"
  fi
}

go_env() {
  command -v go >/dev/null || die "go not found in PATH"
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
}

build_etcd() {
  local src=$VDIR/src/etcd
  rm -rf "$src" && mkdir -p "$src" "$BIN"
  cat >"$src/main.go" <<'EOF'
// Same as etcd's server/main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (
    cd "$src"
    go mod init local/gatehouse-etcd >/dev/null 2>&1
    quiet go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    quiet go mod tidy
    timed "build etcd $ETCD_VERSION" go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" .
  )
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_kube_apiserver() {
  local src=$VDIR/src/kube-apiserver k=${KUBE_VERSION#v} gomod m
  local minor; minor=$(echo "$k" | cut -d. -f2)
  rm -rf "$src" && mkdir -p "$src" "$BIN"
  (
    cd "$src"
    go mod init local/gatehouse-kube-apiserver >/dev/null 2>&1
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -n "$gomod" ] || die "cannot download k8s.io/kubernetes@$KUBE_VERSION"
    # Staging modules are published as v0.X.Y for Kubernetes v1.X.Y; replace every one of them
    # (only the `=> ./staging` lines: k8s.io/utils etc. also have v0.0.0-<date> pseudo-versions).
    for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod" | sort -u); do
      go mod edit -replace="$m=$m@v0.${k#1.}"
    done
    # Copy k8s' godebug default (e.g. `godebug default=go1.26`).
    local gd; gd=$(sed -n 's/^godebug \(default=go[0-9.]*\)$/\1/p' "$gomod")
    [ -z "$gd" ] || go mod edit -godebug="$gd"
    quiet go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION"
    timed "build kube-apiserver $KUBE_VERSION" go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean" \
      -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  )
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
}

cmd_build() {
  go_env
  if [ -x "$BIN/etcd" ]; then log "etcd present: $BIN/etcd"; else
    log "building etcd $ETCD_VERSION"; build_etcd; fi
  if [ -x "$BIN/kube-apiserver" ]; then log "kube-apiserver present: $BIN/kube-apiserver"; else
    log "building kube-apiserver $KUBE_VERSION"; build_kube_apiserver; fi
  echo "$BIN"
}

# ---------------------------------------------------------------------------- start/stop

# start kube-apiserver on the ports recorded in DIR/ports; its pid becomes line 2 of DIR/pids
start_apiserver() {
  local dir=$1 ep ap
  ep=$(sed -n 's/.*etcd_client=\([0-9]*\).*/\1/p' "$dir/ports")
  ap=$(sed -n 's/.*apiserver=\([0-9]*\).*/\1/p' "$dir/ports")
  "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ep" \
    --advertise-address=127.0.0.1 --bind-address=127.0.0.1 --secure-port="$ap" \
    --endpoint-reconciler-type=none \
    --cert-dir="$dir/certs" \
    --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/16 \
    --service-account-issuer="https://127.0.0.1:$ap/" \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --disable-admission-plugins=ServiceAccount --allow-privileged=true \
    </dev/null >>"$dir/kube-apiserver.log" 2>&1 &
  local apid=$!
  { head -1 "$dir/pids"; echo "$apid"; } >"$dir/pids.new" && mv "$dir/pids.new" "$dir/pids"
}

wait_apiserver() {
  local dir=$1 ap apid url timeout deadline
  ap=$(sed -n 's/.*apiserver=\([0-9]*\).*/\1/p' "$dir/ports")
  apid=$(sed -n 2p "$dir/pids")
  url="https://127.0.0.1:$ap" timeout=${GATEHOUSE_KUBE_TIMEOUT:-60}
  deadline=$(( $(date +%s) + timeout ))
  until [ "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$url/readyz" 2>/dev/null)" = 200 ]; do
    [ -d "/proc/$apid" ] || die "kube-apiserver exited"
    [ "$(date +%s)" -lt "$deadline" ] || die "kube-apiserver not ready after ${timeout}s"
    sleep 0.2
  done
}

cmd_restart_apiserver() {
  local dir=${1:?usage: restart-apiserver DIR [SECONDS]} pause=${2:-0}
  [ -f "$dir/pids" ] || die "$dir/pids missing"
  kill_ours "$(sed -n 2p "$dir/pids")"
  sleep "$pause"
  start_apiserver "$dir"
  wait_apiserver "$dir"
  log "kube-apiserver restarted"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
# Ports below the kernel's ephemeral range: a port there can be taken by any
# outgoing connection between our check and the server's bind (seen as
# "bind: address already in use" on a busy test run).
free_port() {
  local p i lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$lo" -gt 12000 ] || lo=32768
  for i in $(seq 1 200); do
    p=$((10000 + (RANDOM * 32768 + RANDOM) % (lo - 10000)))
    case $TAKEN in *" $p "*) continue ;; esac
    if ! port_in_use "$p"; then TAKEN="$TAKEN$p "; echo "$p"; return; fi
  done
  die "no free port found"
}

# kill one of our processes (only if its cmdline still names our binary), wait for it to exit
kill_ours() {
  local pid=$1 i
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE '(etcd|kube-apiserver)' || return 0
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
  local dir=${1:?usage: stop DIR} pid data
  if [ -f "$dir/pids" ]; then
    # apiserver first (it is the second line), then etcd
    for pid in $(tac "$dir/pids"); do kill_ours "$pid"; done
  fi
  if [ -f "$dir/etcd-data-dir" ]; then
    data=$(cat "$dir/etcd-data-dir")
    case $data in */gatehouse-etcd.*) rm -rf "$data" ;; esac
  fi
  rm -rf "$dir/certs" "$dir/etcd-data" 2>/dev/null || true
  rm -f "$dir"/{kubeconfig,pids,etcd-data-dir,tokens.csv,sa.key,sa.pub,etcd.log,kube-apiserver.log,ports}
  rmdir "$dir" 2>/dev/null || true
}

cmd_start() {
  local dir=${1:?usage: start DIR}
  [ -x "$BIN/etcd" ] && [ -x "$BIN/kube-apiserver" ] || die "binaries missing in $BIN; run: $0 build"
  command -v openssl >/dev/null || die "openssl not found"
  command -v curl >/dev/null || die "curl not found"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  [ ! -f "$dir/pids" ] || die "$dir/pids exists; run: $0 stop $dir"
  local t0; t0=$(date +%s.%N)
  # on any failure (die, set -e): show the logs, kill what we started, clean up
  trap 'log "start failed; log tails follow"; tail -n 20 "$dir/etcd.log" "$dir/kube-apiserver.log" >&2 2>/dev/null || true; cmd_stop "$dir"' EXIT

  local data
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then data=$(mktemp -d /dev/shm/gatehouse-etcd.XXXXXX)
  else data=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-etcd.XXXXXX"); fi
  echo "$data" >"$dir/etcd-data-dir"

  local ep pp ap
  ep=$(free_port); pp=$(free_port); ap=$(free_port)
  echo "etcd_client=$ep etcd_peer=$pp apiserver=$ap" >"$dir/ports"

  # stdin/stdout/stderr are detached so callers that capture our output (Command::output) don't hang
  "$BIN/etcd" --name=gatehouse --data-dir="$data" \
    --listen-client-urls="http://127.0.0.1:$ep" --advertise-client-urls="http://127.0.0.1:$ep" \
    --listen-peer-urls="http://127.0.0.1:$pp" --initial-advertise-peer-urls="http://127.0.0.1:$pp" \
    --initial-cluster="gatehouse=http://127.0.0.1:$pp" \
    --unsafe-no-fsync=true --log-level=warn \
    </dev/null >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/pids"

  printf '%s,admin,uid1,"system:masters"\n' "$TOKEN" >"$dir/tokens.csv"
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  mkdir -p "$dir/certs"

  local i
  for i in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$ep/health" >/dev/null 2>&1 && break
    [ -d "/proc/$(head -1 "$dir/pids")" ] || die "etcd exited"
    sleep 0.1
  done

  start_apiserver "$dir"
  wait_apiserver "$dir"
  local url="https://127.0.0.1:$ap" deadline
  deadline=$(( $(date +%s) + ${GATEHOUSE_KUBE_TIMEOUT:-60} ))
  local t1; t1=$(date +%s.%N)
  until [ "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$url/api/v1/namespaces/default" 2>/dev/null)" = 200 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "namespace default not created after ${timeout}s"
    sleep 0.2
  done

  # The self-signed serving bundle is "serving cert, then its CA"; trust that CA.
  local ca
  ca=$(awk '/BEGIN CERTIFICATE/{b=""} {b=b $0 "\n"} /END CERTIFICATE/{last=b} END{printf "%s", last}' \
        "$dir/certs/apiserver.crt" | base64 | tr -d '\n')
  [ -n "$ca" ] || die "no CA in $dir/certs/apiserver.crt"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gatehouse-testenv
  cluster:
    server: $url
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: gatehouse-testenv
  context:
    cluster: gatehouse-testenv
    user: admin
current-context: gatehouse-testenv
EOF
  trap - EXIT
  if [ -n "${GATEHOUSE_KUBE_OWNER_PID:-}" ]; then
    # detached watchdog: when the test process is gone, so is the environment
    local owner=$GATEHOUSE_KUBE_OWNER_PID self=$0
    nohup bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3"' _ "$owner" "$self" "$dir" \
      </dev/null >/dev/null 2>&1 &
  fi
  log "ready in $(echo "$t1 - $t0" | bc 2>/dev/null || echo "?") s (apiserver $url, etcd http://127.0.0.1:$ep)"
  echo "$dir/kubeconfig"
}

case ${1:-} in
  build) cmd_build ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
  *) echo "usage: $0 build | start DIR | stop DIR | restart-apiserver DIR [SECONDS]" >&2; exit 2 ;;
esac
