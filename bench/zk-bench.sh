#!/usr/bin/env bash
# zk-bench.sh: compare our ZooKeeper client with kazoo on pipelined gets
# and sets of 1 KiB znodes against a fresh standalone server (forceSync=no,
# the harness default). Prints figures; asserts nothing.
#
# usage: bench/zk-bench.sh [N [WINDOW]]   (defaults 10000 and 1000)
# env:   BUILD=build (where zk_bench was built)
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/harness/lib.sh
N=${1:-10000}
WINDOW=${2:-1000}
BUILD=${BUILD:-build}
[ -x "$BUILD/bench/zk_bench" ] || make -s -j2 BUILD="$BUILD" "$BUILD/bench/zk_bench"
DIR=$(mktemp -d /tmp/np-zk-bench.XXXXXX)
cleanup() { zk_stop "$DIR/zk" "${ZK_PORT:-0}"; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM
zk_start "$DIR/zk"
PID=$(cat "$DIR/zk/zk.pid")
HOSTS=127.0.0.1:$ZK_PORT
echo "server pid $PID on $HOSTS; N=$N nodes of 1 KiB, window $WINDOW"
# The first rounds create the nodes and warm up the server's JIT; they
# are not comparable and are only shown for completeness.
echo "-- warm-up (creates the nodes)"
for _ in 1 2; do
	"$BUILD/bench/zk_bench" "$HOSTS" "$PID" "$N" "$WINDOW" 2>/dev/null
done
echo "-- measured, alternating clients"
for _ in 1 2; do
	"$BUILD/bench/zk_bench" "$HOSTS" "$PID" "$N" "$WINDOW" 2>/dev/null
	/usr/bin/python3 bench/kazoo_bench.py "$HOSTS" "$PID" "$N" "$WINDOW"
done
