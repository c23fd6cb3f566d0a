#!/usr/bin/env bash
# launcher-bench.sh: what one node request costs our launcher. Starts a
# standalone ZooKeeper (tests/harness, TLS, forceSync=no) and
# nodepool-launcher -f with one fake provider (no launch delay, no host-key
# scan, max-servers 20000), then runs bench/launcher-bench.c (the load
# generator playing Zuul) over the matrix N x concurrency, prints a table
# and stops everything. Prints figures; asserts nothing.
#
# usage: bench/launcher-bench.sh [N... ]      (default: 1000 10000)
# env:   BUILD=build        build dir (built here if the binaries are missing)
#        CONC="10 100 1000" concurrencies
#        RATE=              offer RATE requests/s in the N x CONC runs
#                           (CONC outstanding at most; latency from when
#                           each request was due): the latency below
#                           saturation; several rates ("200 400") make
#                           one run each
#        HOLD=10000         N of the hold run (HOLD_CONC=1000 at a time; all
#                           fulfilled and in use before any is
#                           consumed: the launcher's memory with N nodes);
#                           0 skips it; HOLD_MODE=fill leaves the nodes
#                           (for profiling the launcher's memory)
#        PERF=0             1: record the launcher with `perf record -g`
#                           (PERF_ARGS replaces -g, e.g. "--call-graph dwarf")
#                           into $PERF_OUT (default /tmp/launcher-bench.perf)
#        WRAP=              a command to run the launcher under, e.g.
#                           "heaptrack -o /tmp/lb" (PERF=1 sets it to perf)
#        CALLGRIND=         a file prefix: run the launcher under callgrind,
#                           zero its counts after the warm-up and dump them
#                           after every run into PREFIX.PID.1, .2, ...
#                           (instruction counts, whatever the machine's load)
#        KEEP=0             1: keep the work dir (launcher log, ZooKeeper)
#        TIMEOUT=900        seconds one run may take before it gives up
#        CLOUD_DIR=0        1: the fake cloud in files (fake: state-dir), not
#                           in the launcher's memory
#
# Columns: req/s (first create to last fulfilment or consumption), latency
# percentiles from create to fulfilled seen, ZooKeeper requests per request
# sent by the launcher (zk/req) and by the generator (gen/req), CPU seconds
# of the launcher and of the ZooKeeper server over the run (to the last node
# deleted), the launcher's CPU as a % of the server's, launcher CPU ms per
# request, the launcher's sleeps (waits for its next event) per request,
# the generator's CPU, the launcher's peak RSS (VmHWM; hold run: with
# N nodes present) and the 1-minute load average when the run started.
set -uo pipefail
cd "$(dirname "$0")/.."
TOP=$(pwd)
. tests/harness/lib.sh
BUILD=${BUILD:-build}
CONC=${CONC:-10 100 1000}
HOLD=${HOLD:-10000}
NS=${*:-1000 10000}
GEN=$BUILD/bench/launcher-bench
LAUNCHER=$BUILD/nodepool-launcher

if [ ! -x "$GEN" ] || [ ! -x "$LAUNCHER" ]; then
	make -s -j2 BUILD="$BUILD" "$GEN" "$LAUNCHER" || exit 1
fi

# Not /tmp/np-launcher-*: test clean-ups of other runs remove those.
WORK=$(mktemp -d /tmp/np-lbench.XXXXXX)
LPID=
WRAP_PID=
cleanup() {
	if [ -n "$LPID" ] && kill -0 "$LPID" 2>/dev/null; then
		kill -INT "$LPID"
		for _ in $(seq 100); do
			kill -0 "$LPID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$LPID" 2>/dev/null
	fi
	# perf and the like write their data once the launcher is gone.
	[ -n "$WRAP_PID" ] && wait "$WRAP_PID" 2>/dev/null
	zk_stop "$WORK/zk" "${ZK_PORT:-0}"
	if [ "${KEEP:-0}" = 1 ]; then
		echo "kept $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT INT TERM

zk_start "$WORK/zk" || { echo "could not start ZooKeeper"; exit 1; }
ZKPID=$(cat "$WORK/zk/zk.pid")
# The simulated cloud lives in the launcher's memory unless CLOUD_DIR=1
# puts it in files (as a real cloud, it is then not the launcher's).
FAKE_OPTS=
if [ "${CLOUD_DIR:-0}" = 1 ]; then
	mkdir -p "$WORK/cloud"
	FAKE_OPTS="    fake:
      state-dir: $WORK/cloud"
fi
{ zk_yaml /bench; cat <<YAML; } >"$WORK/nodepool.yaml"
labels:
  - name: bench
    min-ready: 0
providers:
  - name: fake-bench
    cloud: fake
    launch-retries: 3
$FAKE_OPTS
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 20000
        host-key-checking: false
        labels:
          - name: bench
            cloud-image: fake-image
            min-ram: 1024
YAML

# The chroot must exist before the launcher connects.
"$GEN" -z "127.0.0.1:$ZK_PORT" -E /bench 2>/dev/null

WRAP=${WRAP:-}
CALLGRIND=${CALLGRIND:-}
if [ -n "$CALLGRIND" ]; then
	WRAP="valgrind --tool=callgrind --callgrind-out-file=$CALLGRIND.%p"
elif [ "${PERF:-0}" = 1 ]; then
	WRAP="perf record ${PERF_ARGS:--g} -o ${PERF_OUT:-/tmp/launcher-bench.perf} --"
fi
if [ -n "$WRAP" ]; then
	# shellcheck disable=SC2086 # WRAP is a command line
	$WRAP "$LAUNCHER" -f --no-webapp -c "$WORK/nodepool.yaml" \
		>"$WORK/launcher.log" 2>&1 &
	WRAP_PID=$!
	# valgrind is the launcher (it runs it in its own process).
	[ -n "$CALLGRIND" ] && LPID=$WRAP_PID
	# The launcher itself, wherever the wrapper started it.
	for _ in $(seq 50); do
		[ -n "$LPID" ] && break
		for p in $(pgrep -x nodepool-launch); do
			if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | \
			   grep -q -- "-c $WORK/nodepool.yaml"; then
				LPID=$p
			fi
		done
		[ -n "$LPID" ] && break
		sleep 0.2
	done
	[ -n "$LPID" ] || { echo "launcher did not start"; exit 1; }
else
	"$LAUNCHER" -f --no-webapp -c "$WORK/nodepool.yaml" \
		>"$WORK/launcher.log" 2>&1 &
	LPID=$!
fi

gen() {
	"$GEN" -z "127.0.0.1:$ZK_PORT/bench" -p "$ZK_PORT" -Z "$ZKPID" \
		-L "$LPID" -t "${TIMEOUT:-900}" "$@" 2>>"$WORK/gen.log"
}

# The server's version through its "srvr" word, with bash's own /dev/tcp
# rather than nc, which a fresh machine may lack.
zk_version() {
	exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" || return
	echo srvr >&3
	head -1 <&3 | sed 's/.*version: //; s/-.*//'
	exec 3<&-
}
echo "ZooKeeper $(zk_version) pid $ZKPID, launcher pid $LPID," \
	"$(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
"$GEN" -H
# Warm-up: the server's JIT and the launcher's caches; shown, not compared.
gen -n 2000 -c 100 | sed 's/^consume/warm-up/'
# Callgrind: every run's own counts.
cg() {
	[ -n "$CALLGRIND" ] && callgrind_control "$@" "$LPID" >/dev/null 2>&1
}
cg -z
for n in $NS; do
	for c in $CONC; do
		for r in ${RATE:-0}; do
			gen -n "$n" -c "$c" -r "$r"
			cg -d
		done
	done
done
if [ "$HOLD" -gt 0 ]; then
	gen -n "$HOLD" -c "${HOLD_CONC:-1000}" -m "${HOLD_MODE:-hold}"
	cg -d
fi
echo "launcher VmHWM $(awk '/VmHWM/ {print $2 " " $3}' /proc/"$LPID"/status)," \
	"VmRSS $(awk '/VmRSS/ {print $2 " " $3}' /proc/"$LPID"/status) at the end" \
	"(anonymous $(awk '/RssAnon/ {print $2}' /proc/"$LPID"/status)," \
	"files $(awk '/RssFile/ {print $2}' /proc/"$LPID"/status) kB)"
if grep -q "errors=[1-9]\|failed=[1-9]" "$WORK/gen.log"; then
	echo "some runs had errors or failed requests:"
	grep "errors=[1-9]\|failed=[1-9]" "$WORK/gen.log"
fi
if grep -q "late=[1-9]" "$WORK/gen.log"; then
	echo "some rate runs sent requests over 5 ms late (the window full, or the generator busy; latency counts from when they were due):"
	grep "late=[1-9]" "$WORK/gen.log"
fi
