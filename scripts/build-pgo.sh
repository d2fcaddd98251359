#!/usr/bin/env bash
# Profile-guided release build: target/pgo/gatehouse.
#
# A router spends its user-space time in a few hot paths (accept, parse,
# route lookup, forward, write) spread over hyper, h2, tokio, rustls and
# our own code; the generic release build lays that code out without knowing
# which branches and functions are hot, and misses the instruction cache
# more than HAProxy does (benches/load/instructions.sh, cache simulation).
# PGO gives LLVM the branch and call counts of real traffic: measured in
# benches/load/run.sh, same run, PGO build against the plain release build
# of the same commit: 1.10-1.14x the req/s in h1 and h2 keep-alive, 0.88-0.90
# the CPU per request (README, "Performance").
#
# Steps (each a plain cargo/rustup command; nothing here changes semantics):
#   1. cargo build --release with -Cprofile-generate into target/pgo-gen
#      (instrumented: every branch counts itself).
#   2. Training traffic: benches/load/run.sh against that binary only
#      (PROXIES=gatehouse, short rounds), every scenario the benchmark has
#      except idle and rate: HTTP/1.1 keep-alive and one connection per
#      request, a route with sticky cookies on (the OpenShift default) split
#      over two services, 64 KiB and 1 MiB bodies, HTTP/2, TLS keep-alive and full
#      handshakes, passthrough, and requests while the table is swapped;
#      then the egress role: `gatehouse egress` relaying wrk's connections
#      (small and 1 MiB answers) to a local TCP server.
#   3. llvm-profdata merge (rustup's llvm-tools, the same LLVM as rustc; the
#      component is added when missing).
#   4. cargo build --release with -Cprofile-use into target/pgo.
# Both builds use an explicit --target so that RUSTFLAGS reach only the
# gatehouse binary and its dependencies, not build scripts or proc macros.
#
# Usage: bash scripts/build-pgo.sh            (about 2 release builds + 2 min)
# Environment: PGO_SECONDS [3] seconds of traffic per training scenario,
# PGO_PORT [18180] the egress training's server (+1: the gateway).
# Output: target/pgo/gatehouse (a copy of the optimised binary).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# say, die, need, a temp dir and `stop`; what is started here is stopped
# on exit.
# shellcheck source=benches/load/lib.sh
source benches/load/lib.sh

HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$HOST_TRIPLE" ] || die "rustc -vV printed no host triple"
SYSROOT=$(rustc --print sysroot)
PROFDATA=$SYSROOT/lib/rustlib/$HOST_TRIPLE/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
    say "llvm-profdata missing: rustup component add llvm-tools"
    rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
fi
[ -x "$PROFDATA" ] || die "$PROFDATA not found after adding llvm-tools"

# The egress role: a TCP destination (python3's http.server over a 1 MiB
# file and a small one) behind `gatehouse egress`, loaded with wrk: one
# connection per request through the gateway, small and bulk copies.
egress_training() {
    local bin=$1 port=${PGO_PORT:-18180} web gw
    need wrk:wrk curl:curl python3:python3
    head -c 1048576 /dev/zero >"$TMP/1m"
    echo hello >"$TMP/small"
    python3 -m http.server --bind 127.0.0.1 --directory "$TMP" "$port" >/dev/null 2>&1 &
    web=$!
    PIDS+=("$web")
    EGRESS_DESTINATION="$((port + 1)) tcp 127.0.0.1 $port" GATEHOUSE_WORKER_THREADS=1 \
        "$bin" egress --listen 127.0.0.1 --allow 127.0.0.0/8 --admin 127.0.0.1:0 \
        --access-log off >"$TMP/egress.log" 2>&1 &
    gw=$!
    PIDS+=("$gw")
    # Without this, a gateway that never relays would leave the egress
    # role untrained and the build would still succeed.
    wait_http "http://127.0.0.1:$((port + 1))/small" 200 5 "$gw" || die "gatehouse egress did not relay to the training server on :$port; its log: $(tail -n 20 "$TMP/egress.log")"
    wrk -t1 -c4 -d"${SECONDS_EACH}s" "http://127.0.0.1:$((port + 1))/small" >/dev/null 2>&1 || true
    wrk -t1 -c4 -d"${SECONDS_EACH}s" "http://127.0.0.1:$((port + 1))/1m" >/dev/null 2>&1 || true
    # SIGTERM first: a clean exit writes the profile (SIGKILL would lose it).
    stop "$gw" "$web"
}

SECONDS_EACH=${PGO_SECONDS:-3}
GEN=$ROOT/target/pgo-gen
USE=$ROOT/target/pgo
INSTRUMENTED=$GEN/$HOST_TRIPLE/release/gatehouse
DATA=$GEN/profiles
PROFILE=$GEN/merged.profdata

say "1/4 instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$GEN \
    cargo build --release --bin gatehouse --target "$HOST_TRIPLE" >&2 ||
    die "instrumented build failed"
rm -rf "$DATA" "$PROFILE"

say "2/4 training traffic (benches/load/run.sh, gatehouse only)"
PGO=0 SKIP_BUILD=1 GATEHOUSE="$INSTRUMENTED" \
    PROXIES=gatehouse BASELINE=0 ROUNDS=1 WARMUP=1 DURATION="$SECONDS_EACH" \
    SCENARIOS="h1 split h1-close body-64k body-1m h2 tls-keepalive tls-handshake passthrough swap" \
    bash benches/load/run.sh >&2 || die "training run failed"
say "2/4 training traffic: the egress gateway (gatehouse egress, TCP)"
egress_training "$INSTRUMENTED"
compgen -G "$DATA/*.profraw" >/dev/null ||
    die "no profile written to $DATA (did gatehouse exit on SIGTERM?)"

say "3/4 llvm-profdata merge"
"$PROFDATA" merge -o "$PROFILE" "$DATA"/*.profraw || die "llvm-profdata merge failed"

say "4/4 optimised build (target/pgo)"
RUSTFLAGS="-Cprofile-use=$PROFILE" CARGO_TARGET_DIR=$USE \
    cargo build --release --bin gatehouse --target "$HOST_TRIPLE" >&2 ||
    die "profile-use build failed"
cp "$USE/$HOST_TRIPLE/release/gatehouse" "$USE/gatehouse.tmp"
mv "$USE/gatehouse.tmp" "$USE/gatehouse"
say "done: target/pgo/gatehouse"
